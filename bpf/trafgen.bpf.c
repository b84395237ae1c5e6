// SPDX-License-Identifier: GPL-2.0
/*
 * Kernel-speed traffic generator for the lab: run with BPF_PROG_TEST_RUN in live-frames
 * mode, it sends the packet template out of a veth end. The source address can be
 * spread over a range so a flood looks like many spoofed hosts.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "shieldwall.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_gen_config);
} sw_gen_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sw_gen_sent SEC(".maps");

SEC("xdp")
int sw_trafgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct sw_gen_config *cfg = bpf_map_lookup_elem(&sw_gen_config, &zero);
	__u64 *sent = bpf_map_lookup_elem(&sw_gen_sent, &zero);

	if (!cfg || !sent)
		return XDP_ABORTED;
	if (cfg->src_spread && cfg->src_offset < 256) {
		__u8 *p = data + cfg->src_offset;
		__u16 host;

		if ((void *)(p + 4) > data_end)
			return XDP_ABORTED;
		/* Only the low 16 bits change: the receiver's parser never verifies
		 * checksums, and a spoofed flood does not bother either. */
		host = (__u16)(cfg->src_base + *sent % cfg->src_spread);
		p[2] = host >> 8;
		p[3] = host & 0xff;
	}
	*sent += 1;
	return bpf_redirect(cfg->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
