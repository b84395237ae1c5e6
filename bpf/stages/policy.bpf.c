// SPDX-License-Identifier: GPL-2.0
/*
 * Policy stage: prioritized multi-field rules by decision chains (docs/classifier.md).
 * A packet costs one or two table reads per field the rules use, one for the combined
 * small fields, and a few per chain step: never a walk over the rules, never a helper
 * call, never a cache an attacker can miss on purpose.
 *
 * The ruleset's shape (which fields, which steps, where each table starts) is this
 * program's .rodata.pol, frozen at load: the verifier prunes every field and step the
 * ruleset does not use, so the program that runs is specialized to it. A new ruleset
 * is a new program with new tables, swapped in whole with the pipeline's root.
 */
#include "lib/clock.h"
#include "lib/pipeline.h"

const volatile struct sw_pol_consts sw_pol SEC(".rodata.pol") = {};

SW_TABLE_MAP(sw_pol_tab);
SW_CLOCK_MAP(sw_pol_clock);	/* last-hit times */
SW_HOSTS_MAP(sw_pol_hosts);	/* single destination addresses of the dst trie */

/* Indexed by rule id; 0 counts the packets no rule decided. Each generation counts in
 * its own: ids name other rules in the next ruleset. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_POL_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct sw_rule_counter);
} sw_pol_hits SEC(".maps");

/* What each rule had counted in the generations before this one, by the same ids: the
 * control plane writes it once the previous generation has stopped counting (a reload
 * loses no count), and only the control plane reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_POL_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct sw_rule_counter);
} sw_pol_base SEC(".maps");

/* Rule names by id of this ruleset: for the control plane only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_POL_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct sw_rule_name);
} sw_pol_names SEC(".maps");

#define ND_FIRST 133
#define ND_LAST 137
#define NO_RULE 0xffffffff

static __always_inline int sw_pol_has_l4(struct sw_pkt *pkt)
{
	return pkt->flags & SW_PKT_HAS_L4;
}

static __always_inline int sw_pol_has_icmp(struct sw_pkt *pkt)
{
	__u8 want = pkt->family == SW_FAMILY_IPV4 ? IPPROTO_ICMP : IPPROTO_ICMPV6_;

	return sw_pol_has_l4(pkt) && pkt->l4_proto == want;
}

static __always_inline int sw_pol_has_ports(struct sw_pkt *pkt)
{
	return sw_pol_has_l4(pkt) && (pkt->l4_proto == IPPROTO_TCP || pkt->l4_proto == IPPROTO_UDP);
}

/* The value a scalar field keys its class by; 0 when the field does not apply. The
 * field is a constant wherever this is inlined: no switch survives compilation. */
static __always_inline int sw_pol_key(struct sw_pkt *pkt, int f, __u32 *key)
{
	switch (f) {
	case SW_POL_F_PROTO:
		*key = pkt->l4_proto;
		return 1;
	case SW_POL_F_SPORT:
		*key = pkt->sport;
		return sw_pol_has_ports(pkt);
	case SW_POL_F_DPORT:
		*key = pkt->dport;
		return sw_pol_has_ports(pkt);
	case SW_POL_F_TCP_FLAGS:
		*key = pkt->tcp_flags;
		return sw_pol_has_l4(pkt) && pkt->l4_proto == IPPROTO_TCP;
	case SW_POL_F_ICMP_TYPE:
		*key = pkt->icmp_type;
		return sw_pol_has_icmp(pkt);
	case SW_POL_F_ICMP_CODE:
		*key = pkt->icmp_code;
		return sw_pol_has_icmp(pkt);
	case SW_POL_F_LENGTH:
		*key = pkt->l3_len;
		return 1;
	case SW_POL_F_TTL:
		*key = pkt->ttl;
		return 1;
	case SW_POL_F_VLAN:
		*key = pkt->vlan_id;
		return pkt->vlan_depth > 0;
	case SW_POL_F_FRAGMENT:
		if (!(pkt->frag & SW_FRAG_IS))
			*key = SW_POL_FRAG_NONE;
		else if (pkt->frag_off)
			*key = SW_POL_FRAG_LATER;
		else
			*key = pkt->frag & SW_FRAG_MORE ? SW_POL_FRAG_FIRST : SW_POL_FRAG_OTHER;
		return 1;
	case SW_POL_F_FAMILY:
		*key = pkt->family == SW_FAMILY_IPV6;
		return 1;
	case SW_POL_F_STATE:
		/* Set by the conntrack stage, which a chain holds whenever a rule uses state. */
		*key = (pkt->flags & SW_PKT_ESTABLISHED) != 0;
		return 1;
	}
	return 0;
}

/* Fields whose values do not fit a byte take a two-level table. */
static __always_inline int sw_pol_wide(int f)
{
	return f == SW_POL_F_SPORT || f == SW_POL_F_DPORT || f == SW_POL_F_LENGTH || f == SW_POL_F_VLAN;
}

/* The packet's class in field f. The source was classified by the root; this
 * ruleset's class is its column entry for that class. */
static __always_inline __u32 sw_pol_class(const __u32 *tab, struct sw_pkt *pkt, int f)
{
	__u32 key, e;

	if (f == SW_POL_F_SRC)
		return sw_tab_at(tab, sw_pol.field_base[f] + pkt->src_class);
	if (f == SW_POL_F_DST)
		return sw_addr_class(tab, &sw_pol_hosts, sw_pol.dst_root4, sw_pol.dst_root6,
				     pkt->dst, pkt->family);
	if (!sw_pol_key(pkt, f, &key))
		return sw_pol.field_na[f];
	if (!sw_pol_wide(f))
		return sw_tab_at(tab, sw_pol.field_base[f] + key);
	e = sw_tab_at(tab, sw_pol.field_base[f] + (key >> 8));
	if (e & SW_TRIE_CHILD)
		e = sw_tab_at(tab, (e & ~SW_TRIE_CHILD) * SW_TRIE_FANOUT + (key & 0xff));
	return e;
}

/* A sparse step: the state's short list of exceptions, or its dense row. */
static __always_inline __u32 sw_pol_sparse_next(const __u32 *tab, __u32 table_base, __u32 state,
						 __u32 cls)
{
	__u32 rec = table_base + 2 * state;
	__u32 next = sw_tab_at(tab, rec);
	__u32 ref = sw_tab_at(tab, rec + 1);
	__u32 pairs = ref >> 4, n = ref & 15;

	if (ref & SW_POL_ROW)
		return sw_tab_at(tab, (ref & ~SW_POL_ROW) + cls);
#pragma unroll
	for (int i = 0; i < SW_POL_SCAN; i++) {
		if (i >= n)
			break;
		if (sw_tab_at(tab, pairs + 2 * i) == cls)
			return sw_tab_at(tab, pairs + 2 * i + 1);
	}
	return next;
}

static __always_inline void sw_pol_hit(__u32 rule, __u32 bytes, __u64 now, int would_drop)
{
	struct sw_rule_counter *c = bpf_map_lookup_elem(&sw_pol_hits, &rule);

	if (c) {
		c->packets++;
		c->bytes += bytes;
		c->last_hit_ns = now;
		c->would_drop += !!would_drop;
	}
}

/* Counting rules of one bucket's decision, up to the packet's deciding rule. */
struct sw_pol_counting {
	const __u32 *tab;
	__u32 list;	/* table index of the list's length */
	__u32 limit;	/* the deciding rule: counting rules after it were not evaluated */
	__u32 bytes;
	__u64 now;
};

static long sw_pol_count_one(__u32 i, void *data)
{
	struct sw_pol_counting *c = data;
	__u32 e = sw_tab_at(c->tab, c->list + 1 + i);
	__u32 rule = e & ~SW_POL_WOULD_DROP;

	if (rule >= c->limit)
		return 1;	/* the list is sorted: the rest come after the decider too */
	sw_pol_hit(rule, c->bytes, c->now, e & SW_POL_WOULD_DROP);
	return 0;
}

/* Direct mode: whether a field holds (Items.holds), from the bits of its items that
 * hold: some plain item holds, or every item is negated, and no negated one holds. */
static __always_inline int sw_pol_items_hold(__u32 held, __u32 negated, __u32 plain)
{
	return ((held & ~negated) || !plain) && !(held & negated);
}

/* The items are a loop, not unrolled: with every rule and field unrolled, the program
 * would outgrow the reach of a BPF jump. The first item, which most fields need alone,
 * is tested before it. */
static __always_inline int sw_pol_values_hold(const volatile struct sw_pol_values *v, __u32 key)
{
	__u32 held = key >= v->item[0].lo && key <= v->item[0].hi;

#pragma clang loop unroll(disable)
	for (int i = 1; i < SW_POL_SMALL_ITEMS; i++) {
		if (i >= v->n)
			break;
		held |= (__u32)(key >= v->item[i].lo && key <= v->item[i].hi) << i;
	}
	return sw_pol_items_hold(held, v->negated, v->plain);
}

static __always_inline int sw_pol_prefix_holds(const volatile struct sw_pol_prefix *p,
					       struct sw_pkt *pkt, const __u64 *a)
{
	return pkt->family == p->family && (a[0] & p->mask0) == p->addr0 &&
	       (a[1] & p->mask1) == p->addr1;
}

static __always_inline int sw_pol_prefixes_hold(const volatile struct sw_pol_prefixes *p,
						struct sw_pkt *pkt, const __u8 *addr)
{
	/* sw_pkt's addresses sit at 8-byte offsets of a map value: word loads. */
	const __u64 *a = (const __u64 *)addr;
	__u32 held = sw_pol_prefix_holds(&p->item[0], pkt, a);

#pragma clang loop unroll(disable)
	for (int i = 1; i < SW_POL_SMALL_ITEMS; i++) {
		if (i >= p->n)
			break;
		held |= (__u32)sw_pol_prefix_holds(&p->item[i], pkt, a) << i;
	}
	return sw_pol_items_hold(held, p->negated, p->plain);
}

/* The order a rule's fields are tested in: the cheap, selective ones first (most rules
 * fail on the protocol), the 16-byte addresses last. */
static const int sw_pol_test_order[SW_POL_FIELDS] = {
	SW_POL_F_PROTO, SW_POL_F_STATE, SW_POL_F_FAMILY, SW_POL_F_FRAGMENT, SW_POL_F_TCP_FLAGS, SW_POL_F_TTL,
	SW_POL_F_ICMP_TYPE, SW_POL_F_ICMP_CODE, SW_POL_F_VLAN, SW_POL_F_DPORT, SW_POL_F_SPORT,
	SW_POL_F_LENGTH, SW_POL_F_DST, SW_POL_F_SRC,
};

static __always_inline int sw_pol_rule_holds(struct sw_pkt *pkt, int r)
{
	const volatile struct sw_pol_rule *rule = &sw_pol.rule[r];
	__u32 key;

#pragma clang loop unroll(full)
	for (int i = 0; i < SW_POL_FIELDS; i++) {
		int f = sw_pol_test_order[i];

		if (!(rule->used & (1 << f)))
			continue;
		if (f == SW_POL_F_SRC || f == SW_POL_F_DST) {
			if (!sw_pol_prefixes_hold(&rule->prefix[f], pkt, f == SW_POL_F_SRC ? pkt->src : pkt->dst))
				return 0;
			continue;
		}
		if (!sw_pol_key(pkt, f, &key))
			return 0;	/* a field that cannot apply never matches */
		if (f == SW_POL_F_TCP_FLAGS) {
			if ((key & rule->value[f].item[0].lo) != rule->value[f].item[0].hi)
				return 0;
			continue;
		}
		if (!sw_pol_values_hold(&rule->value[f], key))
			return 0;
	}
	return 1;
}

static __always_inline int sw_pol_is_nd(struct sw_pkt *pkt)
{
	return pkt->family == SW_FAMILY_IPV6 && sw_pol_has_icmp(pkt) &&
	       pkt->icmp_type >= ND_FIRST && pkt->icmp_type <= ND_LAST;
}

/* The verdict for the deciding rule, or the default action (which never drops IPv6
 * neighbor discovery). A rule that passes may be a limit's: with a limit stage in the
 * chain, it has the last word on what a rule passed. */
static __always_inline int sw_pol_decided(SW_CTX *ctx, struct sw_pkt *pkt, __u32 best,
					  __u32 drops, __u64 now)
{
	__u32 action;

	if (best == NO_RULE) {
		sw_pol_hit(0, pkt->frame_len, now, 0);
		action = sw_pol.default_action;
		if (action == SW_ACT_DROP && sw_pol_is_nd(pkt))
			return sw_finish(ctx, pkt, SW_ACT_PASS, SW_R_ND_PROTECTED, SW_MOD_POLICY, SW_RULE_NONE);
		return sw_finish(ctx, pkt, action, SW_R_DEFAULT, SW_MOD_POLICY, SW_RULE_NONE);
	}
	sw_pol_hit(best, pkt->frame_len, now, 0);
	if (!drops && sw_consts.limit_slot != SW_SLOT_END) {
		pkt->rule = best;
		bpf_tail_call(ctx, &sw_stages, sw_consts.limit_slot);
		return sw_missed(ctx, pkt);
	}
	return sw_finish(ctx, pkt, drops ? SW_ACT_DROP : SW_ACT_PASS, SW_R_RULE, SW_MOD_POLICY, best);
}

static __always_inline int sw_pol_chains(SW_CTX *ctx, struct sw_pkt *pkt, const __u32 *tab);

SEC(SW_PROG_SEC)
int sw_stage_policy(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	__u32 best = NO_RULE, drops = 0;
	const __u32 *tab;
	__u64 now;

	if (!sw_pol.enabled)
		return sw_next(ctx, pkt);

	if (sw_pol.direct) {
		now = sw_clock_now(&sw_pol_clock);
		/* Unrolled: each rule's tests read constants the verifier knows, so what runs
		 * is this ruleset's tests alone. */
#pragma clang loop unroll(full)
		for (int r = 0; r < SW_POL_SMALL_RULES; r++) {
			if (r >= sw_pol.nrules)
				break;
			if (!sw_pol_rule_holds(pkt, r))
				continue;
			/* In order: a counting rule here came before any decider. */
			if (sw_pol.rule[r].counts)
				sw_pol_hit(r + 1, pkt->frame_len, now, sw_pol.rule[r].would_drop);
			if (sw_pol.rule[r].verdict) {
				best = r + 1;
				drops = sw_pol.rule[r].verdict == SW_ACT_DROP;
				break;
			}
		}
		return sw_pol_decided(ctx, pkt, best, drops, now);
	}
	tab = sw_table(&sw_pol_tab);
	if (!tab)
		return sw_missed(ctx, pkt);
	return sw_pol_chains(ctx, pkt, tab);
}

/* Chain mode: classes per field, then each bucket's chain (docs/classifier.md). */
static __always_inline int sw_pol_chains(SW_CTX *ctx, struct sw_pkt *pkt, const __u32 *tab)
{
	__u32 cls[16] = {};
	__u32 lists[SW_POL_MAX_BUCKETS] = {};
	__u32 best = NO_RULE, drops = 0;
	__u64 now;

#pragma unroll
	for (int f = 0; f < SW_POL_FIELDS; f++)
		if (sw_pol.field_used[f])
			cls[f] = sw_pol_class(tab, pkt, f);
	if (sw_pol.misc_used) {
		__u32 idx = sw_pol.misc_base;

#pragma unroll
		for (int f = 0; f < SW_POL_FIELDS; f++)
			if (sw_pol.misc_stride[f])
				idx += cls[f] * sw_pol.misc_stride[f];
		cls[SW_POL_DIM_MISC] = sw_tab_at(tab, idx);
	}

#pragma unroll
	for (int b = 0; b < SW_POL_MAX_BUCKETS; b++) {
		__u32 state = 0, dec, rule;

		if (b >= sw_pol.nbuckets)
			break;
#pragma unroll
		for (int k = 0; k < SW_POL_MAX_STEPS; k++) {
			const volatile struct sw_pol_step *st = &sw_pol.bucket[b].step[k];
			__u32 c;

			if (k >= sw_pol.bucket[b].nsteps)
				break;
			c = cls[st->dim & 15];
			if (st->remap_base)	/* 0: the step reads the dimension's own class */
				c = sw_tab_at(tab, st->remap_base + c);
			if (!st->sparse)
				state = sw_tab_at(tab, st->table_base + state * st->width + c);
			else
				state = sw_pol_sparse_next(tab, st->table_base, state, c);
		}
		dec = sw_tab_at(tab, sw_pol.bucket[b].decision_base + 2 * state);
		rule = dec & ~SW_POL_DROPS;
		if (rule && rule < best) {
			best = rule;
			drops = dec & SW_POL_DROPS;
		}
		if (sw_pol.counting)
			lists[b] = sw_tab_at(tab, sw_pol.bucket[b].decision_base + 2 * state + 1);
	}

	now = sw_clock_now(&sw_pol_clock);
	if (sw_pol.counting) {
#pragma unroll
		for (int b = 0; b < SW_POL_MAX_BUCKETS; b++) {
			struct sw_pol_counting c = { .tab = tab, .list = lists[b], .limit = best,
						     .bytes = pkt->frame_len, .now = now };

			if (b >= sw_pol.nbuckets)
				break;
			if (lists[b])	/* 0: this bucket's decision counts nothing */
				bpf_loop(sw_tab_at(tab, lists[b]), sw_pol_count_one, &c, 0);
		}
	}

	return sw_pol_decided(ctx, pkt, best, drops, now);
}

char LICENSE[] SEC("license") = "GPL";
