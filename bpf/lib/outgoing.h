/* SPDX-License-Identifier: GPL-2.0 */
/* The host's own outgoing packets, read from an sk_buff by TC egress programs (the
 * conntrack and reflection stages record what the host sends to know its replies). */
#ifndef SW_OUTGOING_H
#define SW_OUTGOING_H

#include <linux/if_ether.h>
#include "common.h"

#define SW_ICMP_ECHO_REQUEST 8
#define SW_ICMPV6_ECHO_REQUEST 128

static __always_inline void *sw_skb_bytes(struct __sk_buff *skb, __u32 off, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (off > 0x3fff || data + off + len > data_end)
		return NULL;
	return data + off;
}

static __always_inline void sw_mapped_v4(__u8 *dst16, const __u8 *addr4)
{
	__builtin_memset(dst16, 0, 10);
	dst16[10] = 0xff;
	dst16[11] = 0xff;
	__builtin_memcpy(dst16 + 12, addr4, 4);
}

/* The key of an outgoing packet (local = its source), its TCP flags, and where its
 * transport header starts (l4_off, when not NULL); 0 when it opens
 * or continues no flow the tables track (not IP, a later fragment, other protocols).
 * VLAN tags in the frame are skipped (the key has no VLAN: a tag the driver inserts
 * is not in the frame at all). IPv6 extension headers are not walked: the host's own
 * TCP, UDP and echo requests carry none but a fragment header, whose later fragments
 * have no ports anyway; a first fragment is recorded as its protocol when the fragment
 * header comes first. */
static __always_inline int sw_outgoing(struct __sk_buff *skb, struct sw_ct_key *key, __u8 *flags,
				       __u32 *l4_off)
{
	struct ethhdr *eth = sw_skb_bytes(skb, 0, sizeof(*eth));
	__u32 off = sizeof(*eth);
	__u16 proto;
	__u8 *l4;

	if (!eth)
		return 0;
	proto = bpf_ntohs(eth->h_proto);
#pragma unroll
	for (int i = 0; i < SW_MAX_VLAN_DEPTH; i++) {
		__be16 *tag;

		if (proto != ETH_P_8021Q_ && proto != ETH_P_8021AD_)
			break;
		tag = sw_skb_bytes(skb, off, 4);
		if (!tag)
			return 0;
		proto = bpf_ntohs(tag[1]);
		off += 4;
	}
	if (proto == ETH_P_IP) {
		__u8 *ip = sw_skb_bytes(skb, off, 20);

		if (!ip || (ip[0] >> 4) != 4 || (ip[0] & 0xf) < 5)
			return 0;
		if (((ip[6] & 0x1f) << 8 | ip[7]) != 0)
			return 0;	/* a later fragment: no transport header */
		key->proto = ip[9];
		key->family = SW_FAMILY_IPV4;
		sw_mapped_v4(key->local, ip + 12);
		sw_mapped_v4(key->remote, ip + 16);
		off += (ip[0] & 0xf) * 4;
	} else if (proto == ETH_P_IPV6) {
		__u8 *ip = sw_skb_bytes(skb, off, 40);

		if (!ip)
			return 0;
		key->proto = ip[6];
		key->family = SW_FAMILY_IPV6;
		__builtin_memcpy(key->local, ip + 8, 16);
		__builtin_memcpy(key->remote, ip + 24, 16);
		off += 40;
		if (key->proto == IPPROTO_FRAGMENT_) {
			__u8 *frag = sw_skb_bytes(skb, off, 8);

			if (!frag || (frag[2] << 8 | (frag[3] & 0xf8)) != 0)
				return 0;
			key->proto = frag[0];
			off += 8;
		}
	} else {
		return 0;
	}
	l4 = sw_skb_bytes(skb, off, 8);
	if (!l4)
		return 0;
	if (l4_off)
		*l4_off = off;
	if (key->proto == IPPROTO_TCP || key->proto == IPPROTO_UDP) {
		key->lport = l4[0] << 8 | l4[1];
		key->rport = l4[2] << 8 | l4[3];
		if (key->proto == IPPROTO_TCP) {
			__u8 *tcp = sw_skb_bytes(skb, off, 14);

			if (!tcp)
				return 0;
			*flags = tcp[13];
		}
		return 1;
	}
	if ((key->proto == IPPROTO_ICMP && proto == ETH_P_IP && l4[0] == SW_ICMP_ECHO_REQUEST) ||
	    (key->proto == IPPROTO_ICMPV6_ && proto == ETH_P_IPV6 && l4[0] == SW_ICMPV6_ECHO_REQUEST)) {
		key->lport = l4[4] << 8 | l4[5];
		return 1;
	}
	return 0;
}

#endif /* SW_OUTGOING_H */
