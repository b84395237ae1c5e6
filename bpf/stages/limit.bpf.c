// SPDX-License-Identifier: GPL-2.0
/*
 * Limit stage: rate limits and timed blocks (docs/defenses.md, "Rate limits").
 *
 * It runs twice for a packet a limit applies to. Before the rules, it drops sources
 * that a limit has blocked (reason `blocked`): a bit test per block prefix length in
 * use, and a hash lookup only where the bit is set. After the rules, the policy stage
 * hands it the packets a rule passed (sw_pkt.rule set); for a rule whose action is a
 * limit, the packet takes from its key's bucket or is dropped (reason `rate_limited`),
 * and may block its source.
 *
 * Every cost is bounded against an attacker who never repeats a source: a key sending
 * fewer than its limit's gate packets in a sketch window is counted in a count-min
 * sketch (one cache line) and passes without a bucket, so such a flood creates no
 * bucket and evicts no known key's. Buckets are shared by every CPU (atomic adds).
 */
/* Buckets need time to the millisecond; a helper call per packet would cost more than
 * the rest of the stage on hosts where every call pays a return thunk. */
#define SW_CLOCK_PERIOD_NS 1000000ULL
#include "lib/clock.h"
#include "lib/gcra.h"
#include "lib/pipeline.h"

const volatile struct sw_lim_consts sw_lim SEC(".rodata.lim") = {};

/* Per rule id of the running ruleset: its limit's index + 1; 0 for a rule without. */
SW_TABLE_MAP(sw_lim_tab);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_LIM_BUCKETS);
	__type(key, struct sw_lim_key);
	__type(value, struct sw_lim_bucket);
} sw_lim_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_LIM_BLOCKS);
	__type(key, struct sw_block_key);
	__type(value, struct sw_block);
} sw_lim_blocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_lim_bits);
} sw_lim_block_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_LIM_SKETCH_LINES);
	__type(key, __u32);
	__type(value, struct sw_lim_line);
} sw_lim_sketch SEC(".maps");

/* By limit index of this load; sw_lim_base holds what earlier loads counted. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_LIM_MAX);
	__type(key, __u32);
	__type(value, struct sw_lim_stat);
} sw_lim_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_LIM_MAX);
	__type(key, __u32);
	__type(value, struct sw_lim_stat);
} sw_lim_base SEC(".maps");

SW_CLOCK_MAP(sw_lim_clock);

/* Limit names by index of this load: for the control plane only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_LIM_MAX);
	__type(key, __u32);
	__type(value, struct sw_rule_name);
} sw_lim_names SEC(".maps");

#define COUNT_MAX SW_LIM_GATE_MAX
/* Keys are written and hashed a word at a time. */
#define WORDS __attribute__((aligned(8)))

static __always_inline void sw_lim_mask(__u8 *out, const __u8 *addr, const volatile struct sw_lim_mask *m)
{
	const volatile __u64 *mw = (const volatile __u64 *)m->m;
	const __u64 *aw = (const __u64 *)addr;
	__u64 *ow = (__u64 *)out;

	ow[0] = aw[0] & mw[0];
	ow[1] = aw[1] & mw[1];
}

/* -- before the rules: blocked sources --------------------------------------------- */

/* The word of sw_lim_block_bits that holds the key's bit, and the bit in *mask
 * (stages/limit.py, block_bit, computes the same). */
static __always_inline __u32 *sw_lim_block_word(struct sw_lim_bits *bits, const struct sw_block_key *k,
						__u32 *mask)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = (w[0] * 0x9E3779B97F4A7C15ULL) ^ w[1];
	__u32 bit;

	h = (h ^ k->plen) * 0xBF58476D1CE4E5B9ULL;
	bit = h >> 48;
	*mask = 1U << (bit & 31);
	return &bits->word[(bit >> 5) & (SW_LIM_BLOCK_BITS / 32 - 1)];
}

static __always_inline int sw_lim_blocked(struct sw_pkt *pkt)
{
	int v4 = pkt->family == SW_FAMILY_IPV4;
	__u32 n = v4 ? sw_lim.nblock4 : sw_lim.nblock6, zero = 0;
	struct sw_block_key key WORDS = {};
	struct sw_lim_bits *bits = bpf_map_lookup_elem(&sw_lim_block_bits, &zero);

	if (!bits)
		return 0;
#pragma unroll
	for (int i = 0; i < SW_LIM_BLOCK_LENS; i++) {
		struct sw_block *b;
		__u32 mask;

		if (i >= n)
			break;
		sw_lim_mask(key.addr, pkt->src, v4 ? &sw_lim.block_mask4[i] : &sw_lim.block_mask6[i]);
		key.plen = v4 ? sw_lim.block_plen4[i] : sw_lim.block_plen6[i];
		if (!(*sw_lim_block_word(bits, &key, &mask) & mask))
			continue;
		b = bpf_map_lookup_elem(&sw_lim_blocks, &key);
		if (!b)
			continue;
		if (sw_clock_now(&sw_lim_clock) < b->expires_ns)
			return 1;
		bpf_map_delete_elem(&sw_lim_blocks, &key);	/* expired: the slot is free again */
	}
	return 0;
}

/* -- after the rules: the buckets -------------------------------------------------- */

/* Each word multiplied apart and the products summed (multilinear, keyed by the seed):
 * the multiplications run side by side instead of one after another, then one mix. */
static __always_inline __u64 sw_lim_hash(const struct sw_lim_key *k)
{
	static const __u64 mul[6] = { 0x9E3779B97F4A7C15ULL, 0xC2B2AE3D27D4EB4FULL,
				      0x165667B19E3779F9ULL, 0xD6E8FEB86659FD93ULL,
				      0xFF51AFD7ED558CCDULL, 0xC4CEB9FE1A85EC53ULL };
	const __u64 *w = (const __u64 *)k;
	__u64 seed = sw_lim.seed, h = 0;

#pragma unroll
	for (int i = 0; i < sizeof(*k) / 8; i++)
		h += (w[i] ^ seed) * mul[i];
	h ^= h >> 32;
	h *= 0xBF58476D1CE4E5B9ULL;
	return h ^ (h >> 29);
}

/* The key's packets in this window so far, this one included (an over-estimate when
 * keys share cells). Both of a key's cells lie in one cache line (a blocked count-min
 * sketch, small enough to stay in L2): one line per packet, not one per row. Cells stop
 * being written once they reach the gate, so a heavy key costs a read. Two CPUs may
 * lose an increment: an estimate can only run short by the packets counted at the same
 * instant. */
static __always_inline __u32 sw_lim_sketch_count(const struct sw_lim_key *key, __u64 now, __u32 gate)
{
	__u64 h = sw_lim_hash(key);
	__u32 tag = (now >> SW_LIM_WINDOW_SHIFT) & 0xf, est = COUNT_MAX;
	__u32 index = (h >> 32) & (SW_LIM_SKETCH_LINES - 1);
	struct sw_lim_line *line = bpf_map_lookup_elem(&sw_lim_sketch, &index);

	if (!line)
		return gate;
#pragma unroll
	for (int r = 0; r < SW_LIM_SKETCH_ROWS; r++) {
		__u16 *cell = &line->cell[(h >> (r * 5)) & (SW_LIM_SKETCH_LINE - 1)];
		__u32 v = *cell, n;

		n = (v >> 12) == tag ? (v & COUNT_MAX) + 1 : 1;
		if (n <= gate)
			*cell = tag << 12 | n;
		if (n < est)
			est = n;
	}
	return est;
}

static __always_inline void sw_lim_key_of(struct sw_lim_key *key, const struct sw_pkt *pkt,
					  const volatile struct sw_lim_def *d)
{
	int v4 = pkt->family == SW_FAMILY_IPV4;

	key->limit = d->id;
	switch (d->per) {
	case SW_LIM_PER_SOURCE:
		sw_lim_mask(key->a, pkt->src, v4 ? &d->mask4 : &d->mask6);
		break;
	case SW_LIM_PER_DESTINATION:
		sw_lim_mask(key->a, pkt->dst, v4 ? &d->mask4 : &d->mask6);
		break;
	case SW_LIM_PER_RULE:
		key->rule = pkt->rule;
		break;
	default:
		__builtin_memcpy(key->a, pkt->src, 16);
		__builtin_memcpy(key->b, pkt->dst, 16);
		key->sport = pkt->sport;
		key->dport = pkt->dport;
		key->proto = pkt->l4_proto;
	}
}

static __always_inline void sw_lim_block(const struct sw_pkt *pkt, const volatile struct sw_lim_def *d,
					 __u64 now)
{
	int v4 = pkt->family == SW_FAMILY_IPV4;
	struct sw_block_key key WORDS = { .plen = v4 ? d->plen4 : d->plen6 };
	struct sw_block b = { .expires_ns = now + d->block_ns, .limit = d->id };
	__u32 zero = 0, mask;
	struct sw_lim_bits *bits = bpf_map_lookup_elem(&sw_lim_block_bits, &zero);

	sw_lim_mask(key.addr, pkt->src, v4 ? &d->mask4 : &d->mask6);
	bpf_map_update_elem(&sw_lim_blocks, &key, &b, BPF_ANY);
	if (bits)
		__sync_fetch_and_or(sw_lim_block_word(bits, &key, &mask), mask);
}

/* Within the limit (or none): the rule's own pass, as if the policy stage had finished. */
static __always_inline int sw_lim_pass(SW_CTX *ctx, struct sw_pkt *pkt)
{
	return sw_finish(ctx, pkt, SW_ACT_PASS, SW_R_RULE, SW_MOD_POLICY, pkt->rule);
}

static __always_inline int sw_lim_apply(SW_CTX *ctx, struct sw_pkt *pkt, __u32 index)
{
	const volatile struct sw_lim_def *d = &sw_lim.def[index];
	struct sw_lim_stat *stat = bpf_map_lookup_elem(&sw_lim_stats, &index);
	struct sw_lim_key key WORDS = {};
	struct sw_lim_bucket *b;
	__u64 now = sw_clock_now(&sw_lim_clock);
	__u32 gate = d->gate, charge = 1;
	int fits;

	if (!stat)
		return sw_missed(ctx, pkt);
	sw_lim_key_of(&key, pkt, d);
	if (gate > 1) {
		__u32 seen = sw_lim_sketch_count(&key, now, gate);

		if (seen < gate) {
			stat->passed++;
			return sw_lim_pass(ctx, pkt);
		}
		/* The key just reached the gate: it pays for its packets of this window. */
		if (seen == gate)
			charge = gate;
	}
	stat->bucketed++;
	b = bpf_map_lookup_elem(&sw_lim_buckets, &key);
	if (!b) {
		struct sw_lim_bucket fresh = { .tat_pkt = now, .tat_byte = now, .created_ns = now };

		bpf_map_update_elem(&sw_lim_buckets, &key, &fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&sw_lim_buckets, &key);
		if (!b)
			return sw_missed(ctx, pkt);
	}
	fits = !d->pkt_ns || sw_gcra_take(&b->tat_pkt, now, charge * d->pkt_ns, d->pkt_tol);
	if (fits && d->byte_ns16) {
		__u64 cost = ((__u64)charge * pkt->frame_len * d->byte_ns16) >> SW_LIM_NS16_SHIFT;

		if (!sw_gcra_take(&b->tat_byte, now, cost, d->byte_tol)) {
			fits = 0;
			if (d->pkt_ns)
				__sync_fetch_and_sub(&b->tat_pkt, charge * d->pkt_ns);
		}
	}
	if (fits) {
		stat->passed++;
		return sw_lim_pass(ctx, pkt);
	}
	b->dropped++;	/* a diagnostic: two CPUs may lose a count, never worth an atomic */
	stat->limited++;
	if (d->block) {
		sw_lim_block(pkt, d, now);
		stat->blocks++;
	}
	return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_RATE_LIMITED, SW_MOD_LIMIT, pkt->rule);
}

SEC(SW_PROG_SEC)
int sw_stage_limit(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	const __u32 *tab;
	__u32 index;

	if (pkt->rule == SW_RULE_NONE) {
		if ((sw_lim.nblock4 || sw_lim.nblock6) && sw_lim_blocked(pkt))
			return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_BLOCKED, SW_MOD_LIMIT, SW_RULE_NONE);
		return sw_next(ctx, pkt);
	}
	tab = sw_table(&sw_lim_tab);
	index = tab ? sw_tab_at(tab, pkt->rule) : 0;
	if (!index || index > sw_lim.nlimits || index > SW_LIM_MAX)
		return sw_lim_pass(ctx, pkt);
	return sw_lim_apply(ctx, pkt, index - 1);
}

char LICENSE[] SEC("license") = "GPL";
