// SPDX-License-Identifier: GPL-2.0
/*
 * ICMP stage (docs/defenses.md, "ICMP"): per-type rate limits, and errors about no flow
 * of this host dropped.
 *
 * Neighbor discovery (ICMPv6 133-137) is handed on untouched: without it IPv6 stops
 * working on the link. An error (IPv4 types 3, 4, 5, 11, 12; ICMPv6 1-4) embeds the
 * start of a packet this host is said to have sent; unless the policy turns the check
 * off, it is dropped (reason `icmp_unrelated`) when that packet is not one: its source
 * is not the error's destination, it is cut short, or, for TCP and UDP, the kernel's
 * own socket table holds no such flow. Then a type the policy limits takes from its
 * bucket, one per (family, type) shared by every CPU, or is dropped (`icmp_limited`).
 *
 * Costs are bounded: the embedded headers are read at fixed offsets (at most two IPv6
 * extension headers), and a socket lookup is made only for an error whose embedded
 * source is this host's address, a hash lookup in the kernel's tables.
 */
/* Buckets need time to the millisecond (as the limit stage's). */
#define SW_CLOCK_PERIOD_NS 1000000ULL
#include "lib/clock.h"
#include "lib/gcra.h"
#include "lib/pipeline.h"
#include "lib/socket.h"

const volatile struct sw_icmp_consts sw_icmp SEC(".rodata.icmp") = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_ICMP_SLOTS);
	__type(key, __u32);
	__type(value, struct sw_icmp_bucket);
} sw_icmp_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_ICMP_SLOTS);
	__type(key, __u32);
	__type(value, struct sw_icmp_stat);
} sw_icmp_stats SEC(".maps");

SW_CLOCK_MAP(sw_icmp_clock);

/* What an error quotes of the packet it is about beyond its IP header (RFC 792): the
 * ports of TCP and UDP, an echo's identifier. */
#define INNER_L4_MIN 8

static __always_inline int sw_icmp_is_error(const struct sw_pkt *pkt)
{
	__u8 t = pkt->icmp_type;

	if (pkt->family == SW_FAMILY_IPV4)
		return t == 3 || t == 4 || t == 5 || t == 11 || t == 12;
	return t >= 1 && t <= 4;
}

/* The embedded IPv4 header: its source must be the error's destination; fills the
 * lookup tuple reversed and says where its payload starts, or 0. */
static __always_inline int sw_icmp_inner4(SW_CTX *ctx, const struct sw_pkt *pkt, __u32 *off,
					  __u32 end, struct bpf_sock_tuple *t, __u8 *proto)
{
	__u8 *ip = sw_bytes(ctx, *off, 20);
	__u32 src, dst, hl;

	if (!ip || *off + 20 > end || (ip[0] >> 4) != 4)
		return 0;
	hl = (ip[0] & 0xf) * 4;
	if (hl < 20)
		return 0;
	__builtin_memcpy(&src, ip + 12, 4);
	__builtin_memcpy(&dst, ip + 16, 4);
	if (__builtin_memcmp(&src, pkt->dst + 12, 4))
		return 0;
	if (((ip[6] & 0x1f) << 8 | ip[7]) != 0)
		return 0;	/* a later fragment: nothing to tell its flow by */
	*proto = ip[9];
	t->ipv4.saddr = dst;
	t->ipv4.daddr = src;
	*off += hl;
	return 1;
}

static __always_inline int sw_icmp_inner6(SW_CTX *ctx, const struct sw_pkt *pkt, __u32 *off,
					  __u32 end, struct bpf_sock_tuple *t, __u8 *proto)
{
	__u8 *ip = sw_bytes(ctx, *off, 40);
	__u8 next;

	if (!ip || *off + 40 > end || (ip[0] >> 4) != 6)
		return 0;
	if (__builtin_memcmp(ip + 8, pkt->dst, 16))
		return 0;
	__builtin_memcpy(t->ipv6.saddr, ip + 24, 16);
	__builtin_memcpy(t->ipv6.daddr, ip + 8, 16);
	next = ip[6];
	*off += 40;
#pragma unroll
	for (int i = 0; i < SW_ICMP_INNER_EXT; i++) {
		__u8 *h;

		if (next == IPPROTO_FRAGMENT_) {
			h = sw_bytes(ctx, *off, 8);
			if (!h || (h[2] << 8 | (h[3] & 0xf8)) != 0)
				return 0;
			next = h[0];
			*off += 8;
		} else if (next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ || next == IPPROTO_DSTOPTS_) {
			h = sw_bytes(ctx, *off, 2);
			if (!h)
				return 0;
			next = h[0];
			*off += (h[1] + 1) * 8;
		} else {
			break;
		}
	}
	if (next == IPPROTO_FRAGMENT_ || next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ ||
	    next == IPPROTO_DSTOPTS_ || next == IPPROTO_AH_)
		return 0;
	*proto = next;
	return 1;
}

/* Whether an error is about a packet this host sent. An embedded ICMP echo (or any
 * other protocol without sockets to ask) is judged by its source alone. */
static __always_inline int sw_icmp_related(SW_CTX *ctx, const struct sw_pkt *pkt)
{
	__u32 off = pkt->l4_off + 8, end = pkt->l3_off + pkt->l3_len;
	struct bpf_sock_tuple t = {};
	__u32 len;
	__u8 proto = 0, *l4;
	__be16 sport, dport;

	if (pkt->family == SW_FAMILY_IPV4) {
		if (!sw_icmp_inner4(ctx, pkt, &off, end, &t, &proto))
			return 0;
		len = sizeof(t.ipv4);
	} else {
		if (!sw_icmp_inner6(ctx, pkt, &off, end, &t, &proto))
			return 0;
		len = sizeof(t.ipv6);
	}
	/* The packet's pointers read afresh: kept in a register from the header's read,
	 * the compiler moves them as 32-bit numbers, which the verifier refuses. */
	asm volatile("" ::: "memory");
	l4 = sw_bytes(ctx, off, INNER_L4_MIN);
	if (!l4 || off + INNER_L4_MIN > end)
		return 0;
	__builtin_memcpy(&sport, l4, 2);
	__builtin_memcpy(&dport, l4 + 2, 2);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	/* Reversed: as if the remote end sent to this host. */
	if (pkt->family == SW_FAMILY_IPV4) {
		t.ipv4.sport = dport;
		t.ipv4.dport = sport;
	} else {
		t.ipv6.sport = dport;
		t.ipv6.dport = sport;
	}
	return sw_host_socket(ctx, &t, len, proto);
}

SEC(SW_PROG_SEC)
int sw_stage_icmp(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	int v6 = pkt->family == SW_FAMILY_IPV6;
	struct sw_icmp_stat *stat;
	__u32 slot, index;

	if (!(pkt->flags & SW_PKT_HAS_L4) || pkt->l4_proto != (v6 ? IPPROTO_ICMPV6_ : IPPROTO_ICMP))
		return sw_next(ctx, pkt);
	if (v6 && pkt->icmp_type >= 133 && pkt->icmp_type <= 137)
		return sw_next(ctx, pkt);	/* neighbor discovery: never this stage's to drop */
	slot = ((v6 ? 256 : 0) + pkt->icmp_type) & (SW_ICMP_SLOTS - 1);
	stat = bpf_map_lookup_elem(&sw_icmp_stats, &slot);
	if (!stat)
		return sw_missed(ctx, pkt);
	if (sw_icmp.unrelated != SW_PROT_OFF && sw_icmp_is_error(pkt) && !sw_icmp_related(ctx, pkt)) {
		stat->unrelated++;
		if (sw_icmp.unrelated == SW_PROT_DROP)
			return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_ICMP_UNRELATED, SW_MOD_ICMP, SW_RULE_NONE);
	}
	index = sw_icmp.slot[slot & (SW_ICMP_SLOTS - 1)];	/* bounded again after a spill */
	if (index && index <= SW_ICMP_LIMITS) {
		const volatile struct sw_icmp_def *d = &sw_icmp.def[(index - 1) & (SW_ICMP_LIMITS - 1)];
		__u64 cost = d->pkt_ns, tol = d->pkt_tol;
		struct sw_icmp_bucket *b = bpf_map_lookup_elem(&sw_icmp_buckets, &slot);

		if (!b)
			return sw_missed(ctx, pkt);
		if (!sw_gcra_take(&b->tat, sw_clock_now(&sw_icmp_clock), cost, tol)) {
			stat->limited++;
			return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_ICMP_LIMITED, SW_MOD_ICMP, SW_RULE_NONE);
		}
	}
	stat->passed++;
	return sw_next(ctx, pkt);
}

char LICENSE[] SEC("license") = "GPL";
