// SPDX-License-Identifier: GPL-2.0
/* The limit for a program that answers in place: send every frame back as it came. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp.frags")
int sw_bare_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
