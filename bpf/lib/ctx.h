/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one place that knows which hook a program is built for. Every stage is written
 * once against SW_CTX and these helpers; bpf/Makefile builds each object twice, for
 * XDP (the default) and, with -DSW_TC, for TC ingress on an sk_buff, the fallback
 * where XDP cannot run (docs/modes.md). The verdicts stay SW_ACT_*; only the value a
 * program returns to the kernel is the hook's own.
 */
#ifndef SW_CTX_H
#define SW_CTX_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "shieldwall.h"

#ifdef SW_TC

#define SW_CTX struct __sk_buff
#define SW_PROG_SEC "tc"
#define SW_RET_ABORTED TC_ACT_SHOT

/* The whole packet, linear part and pages. */
static __always_inline __u32 sw_ctx_len(SW_CTX *ctx)
{
	return ctx->len;
}

static __always_inline long sw_ctx_load(SW_CTX *ctx, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(ctx, off, to, len);
}

/* Cuts or grows the packet to len bytes. */
static __always_inline long sw_ctx_set_len(SW_CTX *ctx, __u32 len)
{
	return len == ctx->len ? 0 : bpf_skb_change_tail(ctx, len, 0);
}

/* An sk_buff may hold its headers outside the linear part (GRO, a driver's page
 * split); the parse reads them in place, so they are pulled in first, as far as an
 * XDP frame's first buffer would hold them. */
#define SW_CTX_PULL 512
static __always_inline void sw_ctx_linearize(SW_CTX *ctx)
{
	__u32 want = ctx->len < SW_CTX_PULL ? ctx->len : SW_CTX_PULL;

	if (ctx->data_end - ctx->data < want)
		bpf_skb_pull_data(ctx, want);
}

/* The outer VLAN tag, which the core moves out of an sk_buff's data before the TC hook
 * (whatever the device's offload settings): 0 when there is none. */
static __always_inline __u32 sw_ctx_outer_vlan(SW_CTX *ctx, __u16 *tci)
{
	if (!ctx->vlan_present)
		return 0;
	*tci = ctx->vlan_tci;
	return 1;
}

/* The packet, rewritten in place into an answer, leaves through the device it came in
 * on. Its checksums are complete: any state the receive path kept about them is stale. */
static __always_inline void sw_ctx_send_back(SW_CTX *ctx)
{
	bpf_csum_level(ctx, BPF_CSUM_LEVEL_RESET);
	bpf_redirect(ctx->ifindex, 0);
}

static __always_inline int sw_ctx_verdict(__u32 action)
{
	switch (action) {
	case SW_ACT_PASS:
		return TC_ACT_OK;
	case SW_ACT_TX:
		return TC_ACT_REDIRECT;
	default:
		return TC_ACT_SHOT;
	}
}

#else /* XDP */

#define SW_CTX struct xdp_md
#define SW_PROG_SEC "xdp.frags"
#define SW_RET_ABORTED XDP_ABORTED

static __always_inline __u32 sw_ctx_len(SW_CTX *ctx)
{
	return bpf_xdp_get_buff_len(ctx);
}

static __always_inline long sw_ctx_load(SW_CTX *ctx, __u32 off, void *to, __u32 len)
{
	return bpf_xdp_load_bytes(ctx, off, to, len);
}

static __always_inline long sw_ctx_set_len(SW_CTX *ctx, __u32 len)
{
	int delta = (int)len - (int)(ctx->data_end - ctx->data);

	return delta ? bpf_xdp_adjust_tail(ctx, delta) : 0;
}

static __always_inline void sw_ctx_linearize(SW_CTX *ctx)
{
}

/* XDP sees the frame as the wire carried it: every tag is in the data. */
static __always_inline __u32 sw_ctx_outer_vlan(SW_CTX *ctx, __u16 *tci)
{
	return 0;
}

static __always_inline void sw_ctx_send_back(SW_CTX *ctx)
{
}

/* SW_ACT_* are the XDP actions' own values. */
static __always_inline int sw_ctx_verdict(__u32 action)
{
	return action;
}

#endif /* SW_TC */

#endif /* SW_CTX_H */
