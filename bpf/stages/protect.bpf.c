// SPDX-License-Identifier: GPL-2.0
/* Protect stage: packets no legitimate peer sends (docs/defenses.md). Each filter is
 * off, counted (monitor) or dropped, by the frozen constants of this load, so the
 * verifier removes every filter that is off. The source's bogon status comes from the
 * root's one source classification, like the fastpath's lists. */
#include "lib/pipeline.h"

/* Per source class: 1 for a bogon source, else 0. */
SW_TABLE_MAP(sw_prot_tab);

/* Per filter (SW_PROT_*): packets it matched, dropped or only counted. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_PROT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sw_prot_seen SEC(".maps");

const volatile struct sw_prot_consts sw_prot SEC(".rodata.prot") = {};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20

/* NULL, XMAS (FIN+PSH+URG), SYN+FIN, SYN+RST, FIN without ACK. */
static __always_inline int sw_bad_tcp_flags(__u8 f)
{
	return f == 0 || (f & (TCP_FIN | TCP_PSH | TCP_URG)) == (TCP_FIN | TCP_PSH | TCP_URG) ||
	       (f & (TCP_SYN | TCP_FIN)) == (TCP_SYN | TCP_FIN) ||
	       (f & (TCP_SYN | TCP_RST)) == (TCP_SYN | TCP_RST) ||
	       (f & (TCP_FIN | TCP_ACK)) == TCP_FIN;
}

static __always_inline int sw_is_tcp_or_udp(const struct sw_pkt *pkt)
{
	return (pkt->flags & SW_PKT_HAS_L4) && (pkt->l4_proto == 6 || pkt->l4_proto == 17);
}

static __always_inline int sw_matched(const struct sw_pkt *pkt, const void *tab, __u32 filter)
{
	switch (filter) {
	case SW_PROT_TCP_FLAGS:
		return (pkt->flags & SW_PKT_HAS_L4) && pkt->l4_proto == 6 && sw_bad_tcp_flags(pkt->tcp_flags);
	case SW_PROT_LAND:
		return !__builtin_memcmp(pkt->src, pkt->dst, 16);
	case SW_PROT_BOGONS:
		return tab && sw_tab_at(tab, pkt->src_class);
	case SW_PROT_FRAGMENTS:
		/* A later fragment at 8 bytes rewrites the first fragment's TCP/UDP header. */
		return (pkt->frag & SW_FRAG_IS) && pkt->frag_off == 1;
	case SW_PROT_IPV4_OPTIONS:
		return pkt->flags & SW_PKT_IPV4_OPTIONS;
	case SW_PROT_IPV6_RH0:
		return pkt->flags & SW_PKT_IPV6_RH0;
	case SW_PROT_ZERO_PORTS:
		return sw_is_tcp_or_udp(pkt) && (!pkt->sport || !pkt->dport);
	}
	return 0;
}

SEC(SW_PROG_SEC)
int sw_stage_protect(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	const __u32 *tab = sw_table(&sw_prot_tab);

	/* In filter order; the first that drops decides, those before it that only
	 * monitor are counted. */
#pragma unroll
	for (__u32 i = 0; i < SW_PROT_MAX; i++) {
		__u64 *seen;
		__u32 key = i;

		if (sw_prot.mode[i] == SW_PROT_OFF || !sw_matched(pkt, tab, i))
			continue;
		seen = bpf_map_lookup_elem(&sw_prot_seen, &key);
		if (seen)
			*seen += 1;
		if (sw_prot.mode[i] == SW_PROT_DROP)
			return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_BAD_TCP_FLAGS + i, SW_MOD_PROTECT,
					 SW_RULE_NONE);
	}
	return sw_next(ctx, pkt);
}

char LICENSE[] SEC("license") = "GPL";
