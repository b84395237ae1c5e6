// SPDX-License-Identifier: GPL-2.0
/* The physical limit every benchmark compares against: drop without looking. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp.frags")
int sw_bare_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
