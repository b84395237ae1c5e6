// SPDX-License-Identifier: GPL-2.0
/*
 * Connection state (docs/defenses.md, "Connection state"): which inbound packets reply
 * to flows this host opened.
 *
 * sw_ct_egress runs on the interface's TC egress hook and records the host's own flows
 * (TCP from its SYN, UDP, ICMP and ICMPv6 echo requests) in sw_ct_flows, keyed from the
 * host's side, with an expiry refreshed by the host's own packets. The XDP stage looks
 * an inbound packet up with its ends swapped and sets SW_PKT_ESTABLISHED when a live
 * entry holds it; the policy stage reads that as the `state` field.
 *
 * Only egress writes the table, so no inbound packet, spoofed or not, creates an entry
 * or keeps one alive; the LRU bounds its memory, and a flood of the host's own new
 * flows can only push out its own oldest ones.
 */
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include "lib/clock.h"
#include "lib/pipeline.h"
#include "lib/outgoing.h"

const volatile struct sw_ct_consts sw_ct SEC(".rodata.ct") = {};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_CT_MAX_FLOWS);
	__type(key, struct sw_ct_key);
	__type(value, struct sw_ct_flow);
} sw_ct_flows SEC(".maps");

/* The stage's time, to a tenth of a second without a helper call per packet: a reply
 * may pass up to that long after its flow's expiry. Egress writes exact times. */
SW_CLOCK_MAP(sw_ct_clock);

#define ICMP_ECHO_REPLY 0
#define ICMPV6_ECHO_REPLY 129
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* An entry is written again only when its expiry would move by more than this: a busy
 * flow costs a lookup per packet, not a write. */
#define REFRESH_NS 1000000000ULL

/* -- egress: the host's own packets ------------------------------------------------ */

/* Records or refreshes the flow of an outgoing packet. A TCP flow is opened by a SYN
 * alone: the host's answers to connections others opened create nothing. */
static __always_inline void sw_ct_record(struct sw_ct_key *key, __u8 tcp_flags)
{
	struct sw_ct_flow *old = bpf_map_lookup_elem(&sw_ct_flows, key);
	struct sw_ct_flow flow = {};
	__u64 now = bpf_ktime_get_coarse_ns(), life = sw_ct.udp_ns;

	if (key->proto == IPPROTO_TCP) {
		int opens = (tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;

		if (!old && !opens)
			return;
		if (old && !opens)
			flow.flags = old->flags;
		if (tcp_flags & (TCP_FIN | TCP_RST))
			flow.flags |= SW_CT_CLOSING;
		life = flow.flags & SW_CT_CLOSING ? sw_ct.closing_ns : sw_ct.tcp_ns;
	} else if (key->proto != IPPROTO_UDP) {
		life = sw_ct.icmp_ns;
	}
	flow.expires_ns = now + life;
	/* Writes only what changes: a new flow, a closing one, or an expiry that moved. */
	if (old && old->flags == flow.flags && old->expires_ns + REFRESH_NS > flow.expires_ns)
		return;
	bpf_map_update_elem(&sw_ct_flows, key, &flow, BPF_ANY);
}

SEC("tc")
int sw_ct_egress(struct __sk_buff *skb)
{
	struct sw_ct_key key = {};
	__u8 tcp_flags = 0;

	if (sw_outgoing(skb, &key, &tcp_flags, NULL))
		sw_ct_record(&key, tcp_flags);
	return TC_ACT_UNSPEC;	/* only watches: the next program, or the packet goes */
}

/* -- ingress: the XDP stage -------------------------------------------------------- */

/* The key an inbound packet replies to (its ends swapped); 0 when it can reply to no
 * recorded flow. */
static __always_inline int sw_ct_reply_key(SW_CTX *ctx, const struct sw_pkt *pkt,
					   struct sw_ct_key *key)
{
	if (!(pkt->flags & SW_PKT_HAS_L4))
		return 0;
	key->proto = pkt->l4_proto;
	key->family = pkt->family;
	if (pkt->l4_proto == IPPROTO_TCP || pkt->l4_proto == IPPROTO_UDP) {
		key->lport = pkt->dport;
		key->rport = pkt->sport;
	} else if ((pkt->l4_proto == IPPROTO_ICMP && pkt->icmp_type == ICMP_ECHO_REPLY) ||
		   (pkt->l4_proto == IPPROTO_ICMPV6_ && pkt->icmp_type == ICMPV6_ECHO_REPLY)) {
		/* The parser read 4 bytes of the ICMP header; the identifier follows. */
		__u8 *id = sw_bytes(ctx, pkt->l4_off + 4, 2);

		if (!id)
			return 0;
		key->lport = id[0] << 8 | id[1];
	} else {
		return 0;
	}
	__builtin_memcpy(key->local, pkt->dst, 16);
	__builtin_memcpy(key->remote, pkt->src, 16);
	return 1;
}

SEC(SW_PROG_SEC)
int sw_stage_conntrack(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	struct sw_ct_key key = {};
	struct sw_ct_flow *flow;

	if (sw_ct_reply_key(ctx, pkt, &key)) {
		flow = bpf_map_lookup_elem(&sw_ct_flows, &key);
		if (flow && flow->expires_ns > sw_clock_now(&sw_ct_clock))
			pkt->flags |= SW_PKT_ESTABLISHED;
	}
	return sw_next(ctx, pkt);
}

char LICENSE[] SEC("license") = "GPL";
