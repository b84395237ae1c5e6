// SPDX-License-Identifier: GPL-2.0
/* The root program: parses each packet once, then starts the stage chain. */
#include "lib/parse.h"
#include "lib/pipeline.h"

SEC("xdp.frags")
int sw_root(struct xdp_md *ctx)
{
	SW_STAGE_PKT(pkt);
	__u64 seq = pkt->seq + 1;
	int reason;

	/* The scratch outlives the previous packet on this CPU: start clean. */
	__builtin_memset(pkt, 0, sizeof(*pkt));
	pkt->seq = seq;
	pkt->frame_len = bpf_xdp_get_buff_len(ctx);

	reason = sw_parse(ctx, pkt);
	if (reason == SW_R_NON_IP)
		return sw_finish(pkt, SW_ACT_PASS, reason, SW_MOD_ROOT, SW_RULE_NONE);
	if (reason)
		return sw_finish(pkt, SW_ACT_DROP, reason, SW_MOD_ROOT, SW_RULE_NONE);
	return sw_next(ctx, pkt);
}

char LICENSE[] SEC("license") = "GPL";
