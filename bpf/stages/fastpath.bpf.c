// SPDX-License-Identifier: GPL-2.0
/* Fastpath stage: allowlisted and blocklisted sources are decided before any costly
 * stage runs. */
#include "lib/pipeline.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SW_FASTPATH_MAX);	/* no prealloc: memory only for entries used */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sw_lpm_key);
	__type(value, struct sw_fastpath_entry);
} sw_fastpath SEC(".maps");

SEC("xdp.frags")
int sw_stage_fastpath(struct xdp_md *ctx)
{
	SW_STAGE_PKT(pkt);
	struct sw_lpm_key key = { .prefixlen = 128 };
	struct sw_fastpath_entry *hit;

	if (sw_v4_mapped_in_v6(pkt->family, pkt->src))
		return sw_next(ctx, pkt);
	__builtin_memcpy(key.addr, pkt->src, 16);
	hit = bpf_map_lookup_elem(&sw_fastpath, &key);
	if (hit) {
		__u32 reason = hit->action == SW_ACT_DROP ? SW_R_BLOCKLISTED : SW_R_ALLOWLISTED;

		return sw_finish(pkt, hit->action, reason, SW_MOD_FASTPATH, SW_RULE_NONE);
	}
	return sw_next(ctx, pkt);
}

char LICENSE[] SEC("license") = "GPL";
