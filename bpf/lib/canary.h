/* SPDX-License-Identifier: GPL-2.0 */
/* The arm of a canary (docs/updates.md, "A/B canary"): which packets the canary's own
 * pipeline decides, the others going to the root it is tried against. Only a canary's
 * root has canary_mode set; every other root's verifier prunes all of this. */
#ifndef SW_CANARY_H
#define SW_CANARY_H

#include "common.h"
#include "maps.h"

/* Slot 0: the root of the generation the canary is tried against. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sw_arm SEC(".maps");

static __always_inline __u32 sw_mix(__u32 h, __u32 v)
{
	h ^= v;
	h *= 0x9e3779b1;
	return h ^ (h >> 15);
}

/* One hash per flow (addresses, protocol, ports), the same for every packet of it,
 * spread evenly whatever the addresses look like (murmur3's finalizer at the end). */
static __always_inline __u32 sw_flow_hash(const struct sw_pkt *pkt)
{
	const __u32 *src = (const __u32 *)pkt->src, *dst = (const __u32 *)pkt->dst;
	__u32 h = pkt->l4_proto;

#pragma unroll
	for (int i = 0; i < 4; i++)
		h = sw_mix(sw_mix(h, src[i]), dst[i]);
	h = sw_mix(h, (__u32)pkt->sport << 16 | pkt->dport);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	return h ^ (h >> 16);
}

/* Whether a parsed packet is the canary's (always, when this root is no canary). */
static __always_inline int sw_in_canary(const struct sw_pkt *pkt)
{
	if (sw_consts.canary_mode == SW_CANARY_OFF)
		return 1;
	if (sw_consts.canary_mode == SW_CANARY_SHARE)
		return sw_flow_hash(pkt) < sw_consts.canary_share;
	if (pkt->family != sw_consts.canary_family)
		return 0;
#pragma unroll
	for (int i = 0; i < 16; i++)
		if ((pkt->src[i] & sw_consts.canary_mask[i]) != sw_consts.canary_addr[i])
			return 0;
	return 1;
}

/* Hands a packet to the root in force; returns only if that root is missing (then the
 * canary decides the packet: either policy is a whole one) or this root is no canary. */
static __always_inline void sw_canary_hand_off(SW_CTX *ctx)
{
	if (sw_consts.canary_mode != SW_CANARY_OFF)
		bpf_tail_call(ctx, &sw_arm, 0);
}

#endif /* SW_CANARY_H */
