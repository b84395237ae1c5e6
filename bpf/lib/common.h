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

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8

/* Read-only bytes at an offset from the start of the packet, or NULL when they are not
 * all inside the linear data. The verifier needs the offset bounded before it is added. */
static __always_inline void *sw_bytes(struct xdp_md *ctx, __u32 off, __u32 len)
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
