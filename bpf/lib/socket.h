/* SPDX-License-Identifier: GPL-2.0 */
/* Asking the kernel's own socket table from XDP whether the host has a flow. */
#ifndef SW_SOCKET_H
#define SW_SOCKET_H

#include "common.h"

/* Whether the host holds a socket for the tuple (as an inbound packet of the flow
 * carries it), looked up in the device's network namespace. A TCP listener does not
 * count: no segment of a connection belongs to it (a handshake the kernel answered
 * has a request socket, which the lookup finds, as it finds TIME_WAIT). */
static __always_inline int sw_host_socket(SW_CTX *ctx, struct bpf_sock_tuple *t, __u32 len,
					  __u8 proto)
{
	struct bpf_sock *sk;
	int found = 1;

	if (proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(ctx, t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		found = sk->state != BPF_TCP_LISTEN;
	} else {
		sk = bpf_sk_lookup_udp(ctx, t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
	}
	bpf_sk_release(sk);
	return found;
}

#endif /* SW_SOCKET_H */
