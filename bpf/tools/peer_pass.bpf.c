// SPDX-License-Identifier: GPL-2.0
/* The lab's far end of a veth pair: an XDP program there is what makes veth deliver the
 * frames its peer sends back with XDP_TX (without one they wait in its ring). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp.frags")
int sw_peer_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
