/* SPDX-License-Identifier: GPL-2.0 */
/* Kernel headers and small helpers every shieldwall program includes. */
#ifndef SW_COMMON_H
#define SW_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "shieldwall.h"
#include "ctx.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8

/* IPv6 next-header values the kernel headers spell as enum members or not at all. */
#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_AH_ 51
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_DSTOPTS_ 60

/* An IPv4-mapped address (::ffff:a.b.c.d) in an IPv6 packet: the tries key IPv4
 * addresses that way, so such a source must never be looked up as the IPv4 one. */
static __always_inline int sw_v4_mapped_in_v6(__u8 family, const __u8 *addr)
{
	__u32 w[3];

	__builtin_memcpy(w, addr, sizeof(w));
	return family == SW_FAMILY_IPV6 && !w[0] && !w[1] && w[2] == bpf_htonl(0xffff);
}

/* Read-only bytes at an offset from the start of the packet, or NULL when they are not
 * all inside the linear data. The verifier needs the offset bounded before it is added. */
static __always_inline void *sw_bytes(SW_CTX *ctx, __u32 off, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (off > 0x3fff)
		return NULL;
	if (data + off + len > data_end)
		return NULL;
	return data + off;
}

#endif /* SW_COMMON_H */
