// SPDX-License-Identifier: GPL-2.0
/*
 * Policy stage: prioritized multi-field rules by Linear Bit Vector Search
 * (docs/classifier.md). A packet costs one lookup per field some rule uses, then a
 * decision-cache lookup; only a miss ANDs the fields' rule bitvectors.
 *
 * A ruleset lives in a generation slot: its maps are inner maps of the outer
 * ARRAY_OF_MAPS below, its sizes in sw_pol_meta. The control plane fills the idle slot
 * and then bumps sw_pol_state.gen, so a packet sees one whole ruleset or the other.
 */
#include "lib/pipeline.h"


struct sw_pol_classes {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);	/* each ruleset sizes its own */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

/* Sizes, not types: clang gives inner map definitions no BTF of their structs. */
struct sw_pol_trie {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(struct sw_lpm_key));
	__uint(value_size, sizeof(__u32));
};

struct sw_pol_vectors {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct sw_pol_block));
};

#define SW_POL_SLOTS(name, inner)                       \
	struct {                                        \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); \
		__uint(max_entries, 2);                 \
		__type(key, __u32);                     \
		__array(values, struct inner);          \
	} name SEC(".maps")

/* Scalar fields' classes, indexed by key_base + value. */
SW_POL_SLOTS(sw_pol_keys, sw_pol_classes);
SW_POL_SLOTS(sw_pol_src, sw_pol_trie);
SW_POL_SLOTS(sw_pol_dst, sw_pol_trie);
SW_POL_SLOTS(sw_pol_vecs, sw_pol_vectors);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct sw_pol_meta);
} sw_pol_meta SEC(".maps");

/* Indexed by rule id; 0 counts the packets no rule decided. Not per generation: a
 * per-CPU array cannot be an inner map of another size, and every ruleset would pay
 * for the largest. With each new ruleset the control plane moves every rule's counters
 * to its new id by name (sw_pol_names), and zeroes those of new rules. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_POL_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct sw_rule_counter);
} sw_pol_hits SEC(".maps");

/* Rule names by id of the active ruleset: for the control plane only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_POL_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct sw_rule_name);
} sw_pol_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_pol_state);
} sw_pol_state SEC(".maps");

/* Keys carry the generation: a new ruleset never meets an old decision. Per CPU: a
 * flood on every CPU shares nothing, and needs no lock. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_POL_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct sw_pol_cache_slot);
} sw_pol_cache SEC(".maps");

/* The inner maps of one generation. */
struct sw_pol_gen {
	struct sw_pol_meta *meta;
	void *keys, *src, *dst, *vecs;
};

#define ND_FIRST 133
#define ND_LAST 137

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

/* The value a scalar field keys its class by; 0 when the field does not apply. */
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
	}
	return 0;
}

/* An address's class by longest prefix. An IPv6 packet may carry an IPv4-mapped
 * address, which the trie would take for the IPv4 one: the compiler gives it a class. */
static __always_inline int sw_pol_addr_class(void *trie, struct sw_pkt *pkt, __u8 *addr,
					     struct sw_pol_field *field, __u32 *cls)
{
	struct sw_lpm_key key = { .prefixlen = 128 };
	__u32 *hit;

	if (sw_v4_mapped_in_v6(pkt->family, addr)) {
		*cls = field->na_class;
		return 0;
	}
	__builtin_memcpy(key.addr, addr, 16);
	hit = bpf_map_lookup_elem(trie, &key);
	if (!hit)
		return -1;
	*cls = *hit;
	return 0;
}

/* The packet's class in every used field: the cache key. */
static __always_inline int sw_pol_classify(struct sw_pol_gen *g, struct sw_pkt *pkt,
					   struct sw_pol_cache_key *ck)
{
#pragma unroll
	for (int f = 0; f < SW_POL_FIELDS; f++) {
		struct sw_pol_field *field = &g->meta->field[f];
		__u32 key, *cls;

		if (!field->used)
			continue;
		if (f == SW_POL_F_SRC || f == SW_POL_F_DST) {
			__u8 *addr = f == SW_POL_F_SRC ? pkt->src : pkt->dst;
			void *trie = f == SW_POL_F_SRC ? g->src : g->dst;

			if (sw_pol_addr_class(trie, pkt, addr, field, &ck->cls[f]))
				return -1;
			continue;
		}
		if (!sw_pol_key(pkt, f, &key)) {
			ck->cls[f] = field->na_class;
			continue;
		}
		key += field->key_base;
		cls = bpf_map_lookup_elem(g->keys, &key);
		if (!cls)
			return -1;
		ck->cls[f] = *cls;
	}
	return 0;
}

static __always_inline __u32 sw_pol_cache_index(const struct sw_pol_cache_key *ck)
{
	__u32 h = ck->gen;

	for (int f = 0; f < SW_POL_FIELDS; f++)
		h = (h ^ ck->cls[f]) * 0x9e3779b1;	/* Fibonacci hashing */
	return (h ^ (h >> 15)) & (SW_POL_CACHE_SLOTS - 1);
}

static __always_inline int sw_pol_same_key(const struct sw_pol_cache_key *a,
					   const struct sw_pol_cache_key *b)
{
	if (a->gen != b->gen)
		return 0;
	for (int f = 0; f < SW_POL_FIELDS; f++)
		if (a->cls[f] != b->cls[f])
			return 0;
	return 1;
}

static __always_inline void sw_pol_count(__u32 rule, __u32 bytes, __u64 now, int would_drop)
{
	struct sw_rule_counter *c = bpf_map_lookup_elem(&sw_pol_hits, &rule);

	if (c) {
		c->packets++;
		c->bytes += bytes;
		c->last_hit_ns = now;
		c->would_drop += !!would_drop;
	}
}

/*
 * The bitvector walk, one bpf_loop whose every step either moves to the next word of the
 * matches or records one hit: a single loop body for the verifier to check, however
 * many words and hits there are.
 */
struct sw_pol_walk {
	struct sw_pol_gen *g;
	struct sw_pol_cache_key *ck;
	struct sw_pol_cache_entry *out;
	struct sw_pol_block *kind[SW_POL_KINDS];	/* the current block's */
	struct sw_pol_block acc;	/* the current block's matching rules */
	__u64 now;
	__u64 pending;	/* the current word's hits not yet recorded, all before any decider */
	__u32 word;	/* the next word */
	__u32 first_id;	/* rule id of the current word's bit 0 */
	__u32 bytes;
	__u8 decided;	/* the current word holds the deciding rule */
	__u8 cacheable;	/* every non-deciding hit fits in out->counted */
	__u8 failed;	/* a vector is missing: the ruleset is broken */
};

static __always_inline struct sw_pol_block *sw_pol_vec(struct sw_pol_gen *g, __u32 base,
						       __u32 cls, __u32 block)
{
	__u32 idx = base + cls * g->meta->nblocks + block;

	return bpf_map_lookup_elem(g->vecs, &idx);
}

/* ANDs the used fields' vectors of one block into s->acc. */
static __always_inline int sw_pol_load(struct sw_pol_walk *s, __u32 block)
{
	struct sw_pol_gen *g = s->g;

	__builtin_memset(&s->acc, 0xff, sizeof(s->acc));
	for (int f = 0; f < SW_POL_FIELDS; f++) {
		struct sw_pol_field *field = &g->meta->field[f];
		struct sw_pol_block *v;

		if (!field->used)
			continue;
		v = sw_pol_vec(g, field->vec_base, s->ck->cls[f], block);
		if (!v)
			return -1;
		for (int w = 0; w < SW_POL_BLOCK_WORDS; w++)
			s->acc.w[w] &= v->w[w];
	}
	for (int k = 0; k < SW_POL_KINDS; k++) {
		/* Never store NULL: the verifier carries s into later steps even after a
		 * step ended the loop. */
		struct sw_pol_block *v = sw_pol_vec(g, g->meta->kinds_base, k, block);

		if (!v)
			return -1;
		s->kind[k] = v;
	}
	return 0;
}

/* Loads the next word; its hits up to the first deciding rule become pending. */
static __always_inline long sw_pol_next_word(struct sw_pol_walk *s)
{
	__u32 w = s->word;
	__u64 hits, decides;

	if (s->decided || w >= s->g->meta->nblocks * SW_POL_BLOCK_WORDS)
		return 1;
	/* Block 0 is loaded before the loop: kind[] always points into the map. */
	if (w && w % SW_POL_BLOCK_WORDS == 0 && sw_pol_load(s, w / SW_POL_BLOCK_WORDS)) {
		s->failed = 1;
		return 1;
	}
	s->word = w + 1;
	s->first_id = 1 + w * 64;
	w %= SW_POL_BLOCK_WORDS;
	hits = s->acc.w[w];
	decides = hits & s->kind[SW_POL_V_DECIDES]->w[w];
	if (decides) {
		__u64 low = decides & -decides;

		s->out->rule = s->first_id + __builtin_ctzll(decides);
		s->out->action = s->kind[SW_POL_V_DROPS]->w[w] & low ? SW_ACT_DROP : SW_ACT_PASS;
		s->decided = 1;
		hits &= low - 1;
	}
	s->pending = hits;
	return 0;
}

static long sw_pol_step(__u32 i, void *ctx)
{
	struct sw_pol_walk *s = ctx;
	__u64 hits = s->pending, low = hits & -hits, would;
	__u8 n = s->out->ncounted;
	__u32 id;

	if (!hits)
		return sw_pol_next_word(s);
	id = s->first_id + __builtin_ctzll(hits);
	s->pending = hits & (hits - 1);
	would = s->kind[SW_POL_V_WOULD_DROP]->w[(s->word - 1) % SW_POL_BLOCK_WORDS] & low;
	sw_pol_count(id, s->bytes, s->now, would);
	if (n >= SW_POL_CACHE_COUNTED) {
		s->cacheable = 0;
		return 0;
	}
	s->out->counted[n & (SW_POL_CACHE_COUNTED - 1)] = id;
	if (would)
		s->out->would_drop |= 1 << n;
	s->out->ncounted = n + 1;
	return 0;
}

static __always_inline int sw_pol_is_nd(struct sw_pkt *pkt)
{
	return pkt->family == SW_FAMILY_IPV6 && sw_pol_has_icmp(pkt) &&
	       pkt->icmp_type >= ND_FIRST && pkt->icmp_type <= ND_LAST;
}

/* Finds the generation's inner maps; 0 when the stage has no ruleset to apply. */
static __always_inline int sw_pol_active(struct sw_pol_gen *g, __u32 *gen)
{
	__u32 zero = 0, slot;
	struct sw_pol_state *st = bpf_map_lookup_elem(&sw_pol_state, &zero);

	if (!st)
		return 0;
	*gen = st->gen;
	slot = *gen & 1;
	g->meta = bpf_map_lookup_elem(&sw_pol_meta, &slot);
	if (!g->meta || !g->meta->enabled)
		return 0;
	/* The walk's step count comes from these: keep it bounded. */
	if (g->meta->nblocks > SW_POL_MAX_BLOCKS || g->meta->nrules > SW_POL_MAX_RULES)
		return -1;
	g->keys = bpf_map_lookup_elem(&sw_pol_keys, &slot);
	g->src = bpf_map_lookup_elem(&sw_pol_src, &slot);
	g->dst = bpf_map_lookup_elem(&sw_pol_dst, &slot);
	g->vecs = NULL;	/* a cache miss looks it up: a hit never needs it */
	return g->keys && g->src && g->dst ? 1 : -1;
}

SEC("xdp.frags")
int sw_stage_policy(struct xdp_md *ctx)
{
	SW_STAGE_PKT(pkt);
	struct sw_pol_cache_key ck = {};
	struct sw_pol_cache_entry dec = {};
	struct sw_pol_cache_slot *slot;
	struct sw_pol_gen g;
	__u32 action, reason = SW_R_RULE, idx;
	__u64 now;
	int ret;

	ret = sw_pol_active(&g, &ck.gen);
	if (!ret)
		return sw_next(ctx, pkt);
	/* Last-hit times need no better than the coarse clock's few milliseconds, and the
	 * precise one costs tens of nanoseconds on a VM. */
	now = bpf_ktime_get_coarse_ns();
	if (ret < 0 || sw_pol_classify(&g, pkt, &ck))
		return sw_missed(pkt);

	idx = sw_pol_cache_index(&ck);
	slot = bpf_map_lookup_elem(&sw_pol_cache, &idx);
	if (!slot)
		return sw_missed(pkt);
	if (sw_pol_same_key(&slot->key, &ck)) {
		dec = slot->entry;
		for (int i = 0; i < SW_POL_CACHE_COUNTED; i++) {
			if (i >= dec.ncounted)
				break;
			sw_pol_count(dec.counted[i], pkt->frame_len, now, dec.would_drop & (1 << i));
		}
	} else {
		struct sw_pol_walk s = { .g = &g, .ck = &ck, .out = &dec, .now = now,
					 .bytes = pkt->frame_len, .cacheable = 1 };
		/* A step per word and per hit, and one to find the end. */
		__u32 steps = g.meta->nblocks * SW_POL_BLOCK_WORDS + g.meta->nrules + 1;
		__u32 gen_slot = ck.gen & 1;

		g.vecs = bpf_map_lookup_elem(&sw_pol_vecs, &gen_slot);
		if (!g.vecs || sw_pol_load(&s, 0))
			return sw_missed(pkt);
		bpf_loop(steps, sw_pol_step, &s, 0);
		if (s.failed)
			return sw_missed(pkt);
		if (s.cacheable) {
			slot->key = ck;
			slot->entry = dec;
		}
	}

	sw_pol_count(dec.rule, pkt->frame_len, now, 0);
	action = dec.action;
	if (!dec.rule) {
		action = g.meta->default_action;
		reason = SW_R_DEFAULT;
		if (action == SW_ACT_DROP && sw_pol_is_nd(pkt)) {
			action = SW_ACT_PASS;
			reason = SW_R_ND_PROTECTED;
		}
	}
	return sw_finish(pkt, action, reason, SW_MOD_POLICY, dec.rule);
}

char LICENSE[] SEC("license") = "GPL";
