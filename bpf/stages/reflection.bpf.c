// SPDX-License-Identifier: GPL-2.0
/*
 * Reflection and amplification (docs/defenses.md, "Reflection and amplification"): UDP
 * from a reflector's source port (DNS, NTP, memcached, ...) passes only when it answers
 * a query this host sent.
 *
 * sw_refl_egress runs on the interface's TC egress hook and records the host's own UDP
 * to those ports in sw_refl_queries (for DNS, the query id is in the key: each of several
 * outstanding queries of one socket has its entry). The XDP stage looks an inbound
 * datagram up with its ends swapped. Only egress writes that table: a flood from any
 * number of spoofed reflectors creates, extends and evicts nothing there.
 *
 * Later fragments carry no ports: one passes when the first fragment of its datagram
 * passed. Matched replies record their first fragments in a table of their own, which
 * only the host's queries can fill; every other first UDP fragment the stage passes goes
 * to a second table, so fragmented UDP of other services keeps working, and a flood of
 * spoofed first fragments can only push out entries of that second table.
 *
 * Every packet costs at most a bit test, two hash lookups and one update (a first
 * fragment recorded, or a new bucket with `limit`).
 */
/* Buckets and expiries to the millisecond, for one load per packet. */
#define SW_CLOCK_PERIOD_NS 1000000ULL
#include <linux/pkt_cls.h>
#include "lib/clock.h"
#include "lib/gcra.h"
#include "lib/pipeline.h"
#include "lib/outgoing.h"

const volatile struct sw_refl_consts sw_refl SEC(".rodata.refl") = {};

/* Per source class: 1 for a source `allow` lists. */
SW_TABLE_MAP(sw_refl_tab);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_REFL_QUERIES);
	__type(key, struct sw_refl_key);
	__type(value, __u64);		/* expiry, bpf_ktime_get_coarse_ns() */
} sw_refl_queries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_REFL_FRAG_REPLIES);
	__type(key, struct sw_refl_frag_key);
	__type(value, __u64);
} sw_refl_frag_replies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_REFL_FRAG_OTHER);
	__type(key, struct sw_refl_frag_key);
	__type(value, __u64);
} sw_refl_frag_other SEC(".maps");

/* Per reflector (source address): a GCRA theoretical arrival time. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_REFL_BUCKETS);
	__type(key, struct sw_addr_key);
	__type(value, __u64);
} sw_refl_buckets SEC(".maps");

/* One bucket every reflector without a bucket of its own shares: a flood of
 * never-repeating sources gets buckets at the limit's rate, no faster, so it cannot
 * churn the bucket table and each new address does not bring a fresh burst. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sw_refl_newcomers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_refl_stat);
} sw_refl_stats SEC(".maps");

SW_CLOCK_MAP(sw_refl_clock);

#define DNS_PORT 53

static __always_inline int sw_refl_port(__u16 port)
{
	return (sw_refl.word[(port >> 5) & (SW_REFL_PORT_WORDS - 1)] >> (port & 31)) & 1;
}

static __always_inline struct sw_refl_stat *sw_refl_stat(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sw_refl_stats, &zero);
}

/* -- egress: the host's own queries ------------------------------------------------- */

SEC("tc")
int sw_refl_egress(struct __sk_buff *skb)
{
	struct sw_ct_key flow = {};
	struct sw_refl_key key = {};
	struct sw_refl_stat *stat;
	__u64 expires;
	__u32 l4_off = 0;
	__u8 flags = 0;

	if (!sw_outgoing(skb, &flow, &flags, &l4_off) || flow.proto != IPPROTO_UDP ||
	    !sw_refl_port(flow.rport))
		return TC_ACT_UNSPEC;
	__builtin_memcpy(key.local, flow.local, 16);
	__builtin_memcpy(key.remote, flow.remote, 16);
	key.lport = flow.lport;
	key.rport = flow.rport;
	key.family = flow.family;
	if (flow.rport == DNS_PORT) {
		__u8 id[2];

		/* The payload may lie past the linear part: a copy, not a pointer. */
		if (bpf_skb_load_bytes(skb, (l4_off + 8) & 0xffff, id, 2))
			return TC_ACT_UNSPEC;
		key.qid = id[0] << 8 | id[1];
	}
	expires = bpf_ktime_get_coarse_ns() + sw_refl.ttl_ns;
	bpf_map_update_elem(&sw_refl_queries, &key, &expires, BPF_ANY);
	stat = sw_refl_stat();
	if (stat)
		stat->queries++;
	return TC_ACT_UNSPEC;	/* only watches */
}

/* -- ingress: the XDP stage -------------------------------------------------------- */

/* The datagram a fragment belongs to, by its IP identification. An IPv6 fragment header
 * is found only right after the fixed header (where senders put it); 0 elsewhere. */
static __always_inline int sw_refl_frag_key(SW_CTX *ctx, const struct sw_pkt *pkt,
					    struct sw_refl_frag_key *key)
{
	__u8 *p;

	if (pkt->family == SW_FAMILY_IPV4) {
		p = sw_bytes(ctx, pkt->l3_off + 4, 2);
		if (!p)
			return 0;
		key->id = p[0] << 8 | p[1];
	} else {
		p = sw_bytes(ctx, pkt->l3_off + 6, 1);
		if (!p || *p != IPPROTO_FRAGMENT_)
			return 0;
		p = sw_bytes(ctx, pkt->l3_off + 44, 4);
		if (!p)
			return 0;
		key->id = (__u32)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
	}
	__builtin_memcpy(key->src, pkt->src, 16);
	__builtin_memcpy(key->dst, pkt->dst, 16);
	key->family = pkt->family;
	return 1;
}

/* A first fragment that passes: its later fragments will too. */
static __always_inline void sw_refl_first(SW_CTX *ctx, const struct sw_pkt *pkt,
					  void *table, __u64 now)
{
	struct sw_refl_frag_key key = {};
	__u64 expires = now + sw_refl.frag_ns;

	if (sw_refl.fragments == SW_REFL_FRAG_TRACK && (pkt->frag & SW_FRAG_IS) &&
	    sw_refl_frag_key(ctx, pkt, &key))
		bpf_map_update_elem(table, &key, &expires, BPF_ANY);
}

/* A later fragment: passes when its first did. */
static __always_inline int sw_refl_later(SW_CTX *ctx, const struct sw_pkt *pkt, __u64 now)
{
	struct sw_refl_frag_key key = {};
	__u64 *expires;

	if (!sw_refl_frag_key(ctx, pkt, &key))
		return 0;
	expires = bpf_map_lookup_elem(&sw_refl_frag_replies, &key);
	if (expires && *expires > now)
		return 1;
	expires = bpf_map_lookup_elem(&sw_refl_frag_other, &key);
	return expires && *expires > now;
}

/* Whether a reply answers a pending query: looked up with its ends swapped, by the DNS
 * id for port 53 (a reply too short to hold one answers nothing). */
static __always_inline int sw_refl_answers(SW_CTX *ctx, const struct sw_pkt *pkt, __u64 now)
{
	struct sw_refl_key key = {};
	__u64 *expires;

	__builtin_memcpy(key.local, pkt->dst, 16);
	__builtin_memcpy(key.remote, pkt->src, 16);
	key.lport = pkt->dport;
	key.rport = pkt->sport;
	key.family = pkt->family;
	if (pkt->sport == DNS_PORT) {
		__u8 *id = sw_bytes(ctx, pkt->l4_off + 8, 2);

		if (!id)
			return 0;
		key.qid = id[0] << 8 | id[1];
	}
	expires = bpf_map_lookup_elem(&sw_refl_queries, &key);
	return expires && *expires > now;
}

/* The per-reflector limit: the source's own bucket, or a new one when the newcomers'
 * bucket has room. */
static __always_inline int sw_refl_within_limit(const struct sw_pkt *pkt, __u64 now)
{
	struct sw_addr_key key = {};
	__u64 *tat, fresh;
	__u32 zero = 0;

	__builtin_memcpy(key.addr, pkt->src, 16);
	tat = bpf_map_lookup_elem(&sw_refl_buckets, &key);
	if (tat)
		return sw_gcra_take(tat, now, sw_refl.pkt_ns, sw_refl.pkt_tol);
	tat = bpf_map_lookup_elem(&sw_refl_newcomers, &zero);
	if (!tat || !sw_gcra_take(tat, now, sw_refl.pkt_ns, sw_refl.pkt_tol))
		return 0;
	fresh = now + sw_refl.pkt_ns;
	bpf_map_update_elem(&sw_refl_buckets, &key, &fresh, BPF_NOEXIST);
	return 1;
}

SEC(SW_PROG_SEC)
int sw_stage_reflection(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	struct sw_refl_stat *stat;
	__u64 now;

	if (pkt->family == SW_FAMILY_NONE || pkt->l4_proto != IPPROTO_UDP)
		return sw_next(ctx, pkt);
	if (!pkt->frag_off && !(pkt->flags & SW_PKT_HAS_L4))
		return sw_next(ctx, pkt);
	/* Other services' UDP: the bit test, and for a first fragment its record. */
	if (!pkt->frag_off && !sw_refl_port(pkt->sport)) {
		if (pkt->frag & SW_FRAG_IS)
			sw_refl_first(ctx, pkt, &sw_refl_frag_other, sw_clock_now(&sw_refl_clock));
		return sw_next(ctx, pkt);
	}
	if (pkt->frag_off && sw_refl.fragments != SW_REFL_FRAG_TRACK)
		return sw_next(ctx, pkt);
	stat = sw_refl_stat();
	if (!stat)
		return sw_next(ctx, pkt);
	now = sw_clock_now(&sw_refl_clock);
	if (pkt->frag_off) {
		if (sw_refl_later(ctx, pkt, now)) {
			stat->frags_passed++;
			return sw_next(ctx, pkt);
		}
		stat->frags_dropped++;
		return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_REFLECTION_FRAGMENT, SW_MOD_REFLECTION,
				 SW_RULE_NONE);
	}
	if (sw_refl_answers(ctx, pkt, now)) {
		stat->matched++;
		sw_refl_first(ctx, pkt, &sw_refl_frag_replies, now);
		return sw_next(ctx, pkt);
	}
	if (sw_refl.allow) {
		const __u32 *tab = sw_table(&sw_refl_tab);

		if (tab && sw_tab_at(tab, pkt->src_class)) {
			stat->allowed++;
			sw_refl_first(ctx, pkt, &sw_refl_frag_other, now);
			return sw_next(ctx, pkt);
		}
	}
	if (!sw_refl.pkt_ns) {
		stat->dropped++;
		return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_REFLECTION, SW_MOD_REFLECTION, SW_RULE_NONE);
	}
	if (sw_refl_within_limit(pkt, now)) {
		stat->passed_limit++;
		sw_refl_first(ctx, pkt, &sw_refl_frag_other, now);
		return sw_next(ctx, pkt);
	}
	stat->limited++;
	return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_REFLECTOR_LIMITED, SW_MOD_REFLECTION, SW_RULE_NONE);
}

char LICENSE[] SEC("license") = "GPL";
