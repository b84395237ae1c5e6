/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The single parse of a packet, as specified in docs/parsing.md (shieldwall.model.parse
 * is its Python reference). Each function returns SW_R_NONE to go on, or the reason
 * the root decides on its own.
 */
#ifndef SW_PARSE_H
#define SW_PARSE_H

#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "common.h"


/* Whether the IP packet's end lies inside the frame. frame_len starts as the linear
 * part: only a multi-buffer frame is longer, and only then does the packet claim more,
 * so the helper that counts the fragments runs for such frames alone. */
static __always_inline int sw_fits(SW_CTX *ctx, struct sw_pkt *pkt, __u32 end)
{
	if (end <= pkt->frame_len)
		return 1;
	pkt->frame_len = sw_ctx_len(ctx);
	return end <= pkt->frame_len;
}

static __always_inline int sw_parse_l2(SW_CTX *ctx, struct sw_pkt *pkt, __u32 *off)
{
	struct ethhdr *eth = sw_bytes(ctx, 0, sizeof(*eth));
	__u16 proto, tci;
	__u32 outer;

	if (!eth)
		return SW_R_TRUNCATED_ETH;
	proto = bpf_ntohs(eth->h_proto);
	*off = sizeof(*eth);
	/* A tag taken out of the data before the hook counts as the outermost one. */
	outer = sw_ctx_outer_vlan(ctx, &tci);
	if (outer) {
		pkt->vlan_id = tci & 0x0fff;
		pkt->vlan_depth = 1;
	}

#pragma unroll
	for (int i = 0; i < SW_MAX_VLAN_DEPTH + 1; i++) {
		__be16 *tag;

		if (proto != ETH_P_8021Q_ && proto != ETH_P_8021AD_)
			break;
		if (i + outer >= SW_MAX_VLAN_DEPTH)
			return SW_R_VLAN_TOO_DEEP;
		/* TCI then the inner EtherType */
		tag = sw_bytes(ctx, *off, 4);
		if (!tag)
			return SW_R_TRUNCATED_VLAN;
		pkt->vlan_id = bpf_ntohs(tag[0]) & 0x0fff;
		pkt->vlan_depth = i + 1 + outer;
		proto = bpf_ntohs(tag[1]);
		*off += 4;
	}
	pkt->eth_proto = proto;
	return SW_R_NONE;
}

/* The root zeroed the scratch: only the ::ffff: marker and the address need writing. */
static __always_inline void sw_store_v4(__u8 *dst16, __be32 addr)
{
	*(__u16 *)(dst16 + 10) = 0xffff;
	*(__be32 *)(dst16 + 12) = addr;
}

/* SW_FRAG_* of a packet with this offset and more-fragments flag: one with neither is no
 * fragment (an IPv6 atomic fragment included). */
static __always_inline __u8 sw_frag_bits(__u16 offset, int more)
{
	if (more)
		return SW_FRAG_IS | SW_FRAG_MORE;
	return offset ? SW_FRAG_IS : 0;
}

static __always_inline int sw_parse_ipv4(SW_CTX *ctx, struct sw_pkt *pkt, __u32 off)
{
	struct iphdr *ip = sw_bytes(ctx, off, sizeof(*ip));
	__u32 hlen, tot;
	__u16 frag;

	if (!ip)
		return SW_R_TRUNCATED_IPV4;
	if (ip->version != 4 || ip->ihl < 5)
		return SW_R_BAD_IPV4_HEADER;
	hlen = ip->ihl * 4;
	if (hlen > sizeof(*ip) && !sw_bytes(ctx, off, hlen))
		return SW_R_TRUNCATED_IPV4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || !sw_fits(ctx, pkt, off + tot))
		return SW_R_BAD_IPV4_LENGTH;

	pkt->family = SW_FAMILY_IPV4;
	pkt->l3_len = tot;
	if (hlen > sizeof(*ip))
		pkt->flags |= SW_PKT_IPV4_OPTIONS;
	pkt->ttl = ip->ttl;
	pkt->l4_proto = ip->protocol;
	sw_store_v4(pkt->src, ip->saddr);
	sw_store_v4(pkt->dst, ip->daddr);

	frag = bpf_ntohs(ip->frag_off);
	pkt->frag_off = frag & 0x1fff;
	pkt->frag = sw_frag_bits(frag & 0x1fff, frag & 0x2000);
	if (!(frag & 0x1fff))
		pkt->l4_off = off + hlen;
	return SW_R_NONE;
}

/* Walks one extension header: its length into *len and the next header's type into
 * *nexthdr, or the reason it is malformed. */
static __always_inline int sw_ipv6_ext(SW_CTX *ctx, struct sw_pkt *pkt, __u32 off,
				       __u32 l3_end, __u8 *nexthdr, __u32 *len)
{
	__u8 *ext = sw_bytes(ctx, off, 8);
	__u32 hdr = *nexthdr;

	if (!ext || off + 8 > l3_end)
		return SW_R_TRUNCATED_IPV6_EXT;
	if (hdr == IPPROTO_FRAGMENT_) {
		__u16 word = bpf_ntohs(*(__be16 *)(ext + 2));

		/* A later fragment header replaces what an earlier one said. */
		pkt->frag_off = word >> 3;
		pkt->frag = sw_frag_bits(word >> 3, word & 1);
		*len = 8;
	} else if (hdr == IPPROTO_AH_) {
		*len = (ext[1] + 2) * 4;
	} else {
		if (hdr == IPPROTO_ROUTING_ && ext[2] == 0)
			pkt->flags |= SW_PKT_IPV6_RH0;
		*len = (ext[1] + 1) * 8;
	}
	if (off + *len > l3_end || !sw_bytes(ctx, off, *len))
		return SW_R_TRUNCATED_IPV6_EXT;
	*nexthdr = ext[0];
	return SW_R_NONE;
}

static __always_inline int sw_is_ipv6_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS_ || nexthdr == IPPROTO_ROUTING_ ||
	       nexthdr == IPPROTO_DSTOPTS_ || nexthdr == IPPROTO_AH_ ||
	       nexthdr == IPPROTO_FRAGMENT_;
}

static __always_inline int sw_parse_ipv6(SW_CTX *ctx, struct sw_pkt *pkt, __u32 off)
{
	struct ipv6hdr *ip6 = sw_bytes(ctx, off, sizeof(*ip6));
	__u32 l3_len, l3_end, len = 0;
	__u8 nexthdr;
	int ret;

	if (!ip6)
		return SW_R_TRUNCATED_IPV6;
	if (ip6->version != 6)
		return SW_R_BAD_IPV6_HEADER;
	/* Computed wide: payload length + 40 may not fit l3_len, and then no frame holds it. */
	l3_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	l3_end = off + l3_len;
	if (l3_len > 0xffff || !sw_fits(ctx, pkt, l3_end))
		return SW_R_BAD_IPV6_LENGTH;
	pkt->l3_len = l3_len;

	pkt->family = SW_FAMILY_IPV6;
	pkt->ttl = ip6->hop_limit;
	__builtin_memcpy(pkt->src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->dst, &ip6->daddr, 16);

	nexthdr = ip6->nexthdr;
	off += sizeof(*ip6);
	for (int i = 0; i < SW_MAX_IPV6_EXT + 1; i++) {
		if (!sw_is_ipv6_ext(nexthdr))
			break;
		if (i == SW_MAX_IPV6_EXT)
			return SW_R_IPV6_EXT_TOO_DEEP;
		ret = sw_ipv6_ext(ctx, pkt, off, l3_end, &nexthdr, &len);
		if (ret)
			return ret;
		off += len;
		if (pkt->frag_off)
			break;
	}
	pkt->l4_proto = nexthdr;
	if (!pkt->frag_off)
		pkt->l4_off = off;
	return SW_R_NONE;
}

static __always_inline int sw_parse_l4(SW_CTX *ctx, struct sw_pkt *pkt)
{
	__u32 off = pkt->l4_off, l3_end = pkt->l3_off + pkt->l3_len;
	__u8 proto = pkt->l4_proto;

	if (!off)
		return SW_R_NONE;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = sw_bytes(ctx, off, sizeof(*tcp));

		if (!tcp || off + sizeof(*tcp) > l3_end)
			return SW_R_TRUNCATED_L4;
		if (tcp->doff < 5)
			return SW_R_BAD_TCP_HEADER;
		if (off + tcp->doff * 4 > l3_end || !sw_bytes(ctx, off, tcp->doff * 4))
			return SW_R_TRUNCATED_L4;
		pkt->sport = bpf_ntohs(tcp->source);
		pkt->dport = bpf_ntohs(tcp->dest);
		pkt->tcp_flags = ((__u8 *)tcp)[13];
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *udp = sw_bytes(ctx, off, sizeof(*udp));

		if (!udp || off + sizeof(*udp) > l3_end)
			return SW_R_TRUNCATED_L4;
		pkt->sport = bpf_ntohs(udp->source);
		pkt->dport = bpf_ntohs(udp->dest);
	} else if ((proto == IPPROTO_ICMP && pkt->family == SW_FAMILY_IPV4) ||
		   (proto == IPPROTO_ICMPV6_ && pkt->family == SW_FAMILY_IPV6)) {
		__u8 *icmp = sw_bytes(ctx, off, 4);

		if (!icmp || off + 4 > l3_end)
			return SW_R_TRUNCATED_L4;
		pkt->icmp_type = icmp[0];
		pkt->icmp_code = icmp[1];
	} else {
		return SW_R_NONE;
	}
	pkt->flags |= SW_PKT_HAS_L4;
	return SW_R_NONE;
}

/* Fills pkt from the packet; returns the reason when the root decides on its own. */
static __always_inline int sw_parse(SW_CTX *ctx, struct sw_pkt *pkt)
{
	__u32 off = 0;
	int ret;

	ret = sw_parse_l2(ctx, pkt, &off);
	if (ret)
		return ret;
	pkt->l3_off = off;
	if (pkt->eth_proto == ETH_P_IP)
		ret = sw_parse_ipv4(ctx, pkt, off);
	else if (pkt->eth_proto == ETH_P_IPV6)
		ret = sw_parse_ipv6(ctx, pkt, off);
	else
		return SW_R_NON_IP;
	if (ret)
		return ret;
	return sw_parse_l4(ctx, pkt);
}

#endif /* SW_PARSE_H */
