// SPDX-License-Identifier: GPL-2.0
/*
 * Kernel-speed traffic generator for the lab and the benchmark: run with
 * BPF_PROG_TEST_RUN in live-frames mode, it rewrites the frame and then either sends it
 * out of a veth end (sw_trafgen) or hands it to the program under test in the same run
 * (sw_trafgen_chain, through a tail call), so both paths see exactly the same traffic.
 *
 * Random mode is the attacker: every frame gets a fresh source, ports, TTL, protocol,
 * TCP flags and length, so no cache keyed on packet contents ever hits twice.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "shieldwall.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_gen_config);
} sw_gen_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_GEN_TEMPLATES);
	__type(key, __u32);
	__type(value, struct sw_gen_template);
} sw_gen_templates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct sw_gen_frame);
} sw_gen_frames SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sw_gen_sent SEC(".maps");

/* xorshift64 state per CPU: one helper call per frame seeds it, the rest is arithmetic
 * (a helper call per field would cost the generator more than the filter under test). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sw_gen_rng SEC(".maps");

static __always_inline __u32 next_random(__u64 *state)
{
	__u64 x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x >> 32;
}

/* Slot 0: the program the chained generator hands every frame to. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sw_gen_target SEC(".maps");

/* x & mask, kept: clang drops a mask it can prove redundant, and the verifier then loses
 * the bound it needs for a variable packet offset. */
#define BOUNDED(x, mask) ({ __u32 __v = (x); asm volatile("" : "+r"(__v)); __v & (mask); })

static __always_inline void spread_source(struct xdp_md *ctx, struct sw_gen_config *cfg, __u64 n)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p;
	__u16 host;

	if (!cfg->src_spread || cfg->src_offset >= 256)
		return;
	p = data + cfg->src_offset;
	if ((void *)(p + 4) > data_end)
		return;
	host = (__u16)(cfg->src_base + n % cfg->src_spread);
	p[2] = host >> 8;
	p[3] = host & 0xff;
}

static __always_inline __u16 random_port(struct sw_gen_config *cfg, __u32 r)
{
	__u32 n = cfg->nports;

	if (n && n <= SW_GEN_PORTS && (r & 1))
		return cfg->ports[BOUNDED((r >> 1) % n, SW_GEN_PORTS - 1)];
	return r >> 16;
}

static __always_inline __u16 fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s;
}

/* The one's complement sum of what an attack draws and a transport checksum covers:
 * the source address and (when drawn) the ports. Bounds: ip + 40 and l4h + 20 are
 * checked by the caller. */
static __always_inline __u32 drawn_sum(__u8 *ip, __u8 *l4h, __u8 family, __u32 rw)
{
	__u32 s = 0;

	if (rw & (SW_GEN_RW_SPORT | SW_GEN_RW_DPORT))
		s = *(__u16 *)l4h + *(__u16 *)(l4h + 2);
	if (family == SW_FAMILY_IPV4)
		return s + *(__u16 *)(ip + 12) + *(__u16 *)(ip + 14);
#pragma unroll
	for (int i = 0; i < 8; i++)
		s += *(__u16 *)(ip + 8 + 2 * i);
	return s;
}

/* RFC 1624: the checksum after words summing to `before` became words summing to
 * `after`. UDP's "no checksum" (0) stays so; a computed 0 is sent as 0xffff. */
static __always_inline void csum_update(__u8 *l4h, void *data_end, __u16 off, __u32 before,
					__u32 after, int udp)
{
	__u16 *c = (__u16 *)(l4h + BOUNDED(off, 31));
	__u16 v;

	if ((void *)(c + 1) > data_end || (udp && !*c))
		return;
	v = ~fold((__u16)~*c + (__u16)~fold(before) + fold(after));
	*c = udp && !v ? 0xffff : v;
}

static __always_inline void ipv4_csum(__u8 *ip)
{
	__u32 s = 0;

	*(__u16 *)(ip + 10) = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		s += *(__u16 *)(ip + 2 * i);
	*(__u16 *)(ip + 10) = ~fold(s);
}

/* Writes template bytes and draws afresh the fields the template's `rewrite` names (all
 * a classifier may key on, for the adversarial benchmark; fewer for an attack of one
 * shape). Checksums are left alone unless the template asks (SW_GEN_RW_CSUM): a filter
 * never verifies them, a receiving stack does. */
static __always_inline int randomize(struct xdp_md *ctx, struct sw_gen_config *cfg)
{
	__u32 zero = 0;
	__u64 *rng = bpf_map_lookup_elem(&sw_gen_rng, &zero);

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 r, idx, rw, before = 0;
	struct sw_gen_template *t;
	__u32 l3, l4, min_l3, len, span;
	__u8 proto, *ip;

	if (!rng || !cfg->ntemplates || cfg->ntemplates > SW_GEN_TEMPLATES)
		return -1;
	*rng ^= (__u64)bpf_get_prandom_u32() << 32;	/* never zero for long: xorshift's one fixed point */
	*rng |= 1;
	r = next_random(rng);
	idx = ((__u64)r * cfg->ntemplates) >> 32;	/* no division on the hot path */
	t = bpf_map_lookup_elem(&sw_gen_templates, &idx);
	if (!t)
		return -1;
	/* A frame the receiver shortened (a SYN-ACK answered in place, XDP_TX) comes back
	 * to the live-frames page pool with its new length, which the kernel does not reset
	 * when only the tail moved: grow it back to the template's. */
	if (data_end - data != t->frame_len && t->frame_len >= SW_GEN_HDR_MAX &&
	    t->frame_len <= SW_GEN_FRAME_MAX) {
		if (bpf_xdp_adjust_tail(ctx, (int)t->frame_len - (int)(data_end - data)))
			return -1;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
	}
	if (data + SW_GEN_HDR_MAX > data_end)
		return -1;
	/* Word by word: with the packet's alignment unknown, memcpy would go byte by byte
	 * and the copy alone would cost more than most filters under test. */
#pragma unroll
	for (int w = 0; w < SW_GEN_HDR_MAX / 8; w++)
		((__u64 *)data)[w] = ((__u64 *)t->data)[w];
	if (t->l3_off > 64 || t->l4_off > 100 || t->l4_off < t->l3_off)
		return -1;
	rw = t->rewrite;
	l3 = BOUNDED(t->l3_off, 127);
	l4 = BOUNDED(t->l4_off, 127);
	ip = data + l3;
	if ((void *)(ip + 40) > data_end || data + l4 + 20 > data_end)
		return -1;
	if (rw & SW_GEN_RW_CSUM)
		before = drawn_sum(ip, data + l4, t->family, rw);

	r = next_random(rng);
	proto = (r & 15) < 9 ? 6 : (r & 15) < 13 ? 17 : (r & 15) < 15 ?
		(t->family == SW_FAMILY_IPV4 ? 1 : 58) : (__u8)(r >> 24);
	/* Lengths from the smallest a TCP packet can have to the whole frame. */
	min_l3 = l4 - l3 + 20;
	span = t->frame_len > l3 + min_l3 ? t->frame_len - l3 - min_l3 : 0;
	len = min_l3 + (((__u64)next_random(rng) * (span + 1)) >> 32);

	if (t->family == SW_FAMILY_IPV4) {
		__u32 host = next_random(rng), mask;

		if (rw & SW_GEN_RW_TTL)
			ip[8] = r >> 8;
		if (rw & SW_GEN_RW_PROTO)
			ip[9] = proto;
		if (rw & SW_GEN_RW_LEN)
			*(__u16 *)(ip + 2) = bpf_htons(len);
		if (rw & SW_GEN_RW_IPID)
			*(__u16 *)(ip + 4) = host >> 16;
		mask = t->src_bits >= 32 ? 0xffffffff : (1u << (t->src_bits & 31)) - 1;
		*(__u32 *)(ip + 12) = (*(__u32 *)(ip + 12) & ~bpf_htonl(mask)) | bpf_htonl(host & mask);
	} else {
		__u32 bits = t->src_bits;

		if (rw & SW_GEN_RW_TTL)
			ip[7] = r >> 8;
		if (rw & SW_GEN_RW_PROTO)
			ip[6] = proto;
		if (rw & SW_GEN_RW_LEN)
			*(__u16 *)(ip + 4) = bpf_htons(len - 40);
		/* The low src_bits of the 128-bit source, a 32-bit word at a time. */
		for (int w = 3; w >= 0; w--) {
			__u32 take = bits > 32 ? 32 : bits, mask;
			__u32 *word = (__u32 *)(ip + 8 + 4 * w);

			if (!take)
				break;
			mask = take == 32 ? 0xffffffff : (1u << take) - 1;
			*word = (*word & ~bpf_htonl(mask)) | bpf_htonl(next_random(rng) & mask);
			bits -= take;
		}
	}
	if ((rw & SW_GEN_RW_VLAN) && t->vlan_off && t->vlan_off < 60) {
		__u8 *tci = data + BOUNDED(t->vlan_off, 63);

		if ((void *)(tci + 2) <= data_end)
			*(__u16 *)tci = bpf_htons(next_random(rng) & 0x0fff);
	}
	{
		__u8 *l4h = data + l4;
		__u32 ports = next_random(rng), r2 = next_random(rng);

		if ((void *)(l4h + 20) > data_end)
			return -1;
		if (rw & SW_GEN_RW_SPORT)
			*(__u16 *)l4h = bpf_htons(random_port(cfg, ports));
		if (rw & SW_GEN_RW_DPORT)
			*(__u16 *)(l4h + 2) = bpf_htons(random_port(cfg, r2));
		if (rw & SW_GEN_RW_TCP_FLAGS) {
			l4h[12] = 0x50;		/* data offset: 20 bytes */
			l4h[13] = r2 >> 8;
		}
		if (rw & SW_GEN_RW_CSUM) {
			if (t->l4_csum)
				csum_update(l4h, data_end, t->l4_csum, before,
					    drawn_sum(ip, l4h, t->family, rw), t->l4_csum == 6);
			if (t->family == SW_FAMILY_IPV4)
				ipv4_csum(ip);
		}
	}
	return 0;
}

static __always_inline int replay(struct xdp_md *ctx, struct sw_gen_config *cfg, __u64 n)
{
	__u32 idx, want, have;
	struct sw_gen_frame *f;

	if (!cfg->nframes)
		return -1;
	idx = n % cfg->nframes;
	f = bpf_map_lookup_elem(&sw_gen_frames, &idx);
	if (!f)
		return -1;
	want = f->len;
	if (want < 14 || want > SW_GEN_FRAME_MAX)
		return -1;
	have = ctx->data_end - ctx->data;
	if (want != have && bpf_xdp_adjust_tail(ctx, (int)want - (int)have))
		return -1;
	return bpf_xdp_store_bytes(ctx, 0, f->data, want) ? -1 : 0;
}

static __always_inline int generate(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sw_gen_config *cfg = bpf_map_lookup_elem(&sw_gen_config, &zero);
	__u64 *sent = bpf_map_lookup_elem(&sw_gen_sent, &zero);
	int ret = 0;

	if (!cfg || !sent)
		return -1;
	if (cfg->mode == SW_GEN_RANDOM)
		ret = randomize(ctx, cfg);
	else if (cfg->mode == SW_GEN_REPLAY)
		ret = replay(ctx, cfg, *sent);
	else
		spread_source(ctx, cfg, *sent);
	*sent += 1;
	return ret;
}

SEC("xdp.frags")
int sw_trafgen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sw_gen_config *cfg;

	if (generate(ctx))
		return XDP_ABORTED;
	cfg = bpf_map_lookup_elem(&sw_gen_config, &zero);
	return cfg ? bpf_redirect(cfg->ifindex, 0) : XDP_ABORTED;
}

/* Same frames, handed to the program under test: its cost plus the generator's, which the
 * bare comparison run pays too. */
SEC("xdp.frags")
int sw_trafgen_chain(struct xdp_md *ctx)
{
	if (generate(ctx))
		return XDP_ABORTED;
	bpf_tail_call(ctx, &sw_gen_target, 0);
	return XDP_ABORTED;
}

char LICENSE[] SEC("license") = "GPL";
