// SPDX-License-Identifier: GPL-2.0
/*
 * SYN flood defense (docs/defenses.md, "SYN floods"): a SYN to a protected port never
 * reaches the host's listen queue while the stage is active; it is answered here, in
 * the driver, by rewriting the frame into a SYN-ACK and sending it back (XDP_TX).
 *
 * cookie mode: the SYN-ACK's sequence number is the kernel's own syncookie
 *   (bpf_tcp_raw_gen_syncookie_*), its timestamp carries the client's window scale,
 *   SACK and ECN the way the kernel's cookie timestamps do. The client's ACK is checked
 *   here (bpf_tcp_raw_check_syncookie_*) and passed on to nf_synproxy, which checks it
 *   again and opens the connection to the real listener. No state per connection.
 * auth mode: the SYN-ACK's ACK number is a keyed hash of the connection's ends and a
 *   time slot, never what the client expects: its TCP answers with a RST carrying that
 *   number as its sequence, which proves the source is real. The source is recorded as
 *   authenticated for auth_ttl; its next SYN (the client retransmits it) goes through.
 *
 * Any other TCP packet to a protected port goes on when the host has a socket for it
 * (established or half-open); otherwise it must be the handshake's last step.
 */
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include "lib/clock.h"
#include "lib/pipeline.h"
#include "lib/socket.h"

const volatile struct sw_syn_consts sw_syn SEC(".rodata.syn") = {};

/* The protected ports, one bit each (config). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_syn_portmap);
} sw_syn_ports SEC(".maps");

/* The secret and the activation state (state: kept across reloads). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_syn_state);
} sw_syn_state SEC(".maps");

/* Authenticated sources (state). Only a source that saw its challenge can get in, so
 * spoofed floods cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_SYN_AUTH_MAX);
	__type(key, struct sw_syn_auth_key);
	__type(value, struct sw_syn_auth);
} sw_syn_auth SEC(".maps");

SW_CLOCK_MAP(sw_syn_clock);

#define OPT_EOL 0
#define OPT_NOP 1
#define OPT_MSS 2
#define OPT_WINDOW 3
#define OPT_SACK_PERM 4
#define OPT_TIMESTAMP 8

/* The kernel's cookie timestamp (net/ipv4/syncookies.c): its low 6 bits carry the
 * client's window scale (0xf: none), SACK and ECN, which a cookie cannot. */
#define TS_WSCALE_NONE 0xf
#define TS_SACK 0x10
#define TS_ECN 0x20
#define TS_BITS_MASK 0x3f
#define TCP_MAX_WSCALE 14

#define SYNACK_TTL 64

/* The IP and TCP headers, copied to the stack: the helpers read them there, the
 * SYN-ACK is built there, then written back in one store. */
struct sw_syn_hdrs {
	__u8 ip[40];
	__u8 tcp[60];
	__u32 ip_len;
	__u32 tcp_len;
};

/* What the client's SYN asked for, from its options. */
struct sw_syn_opts {
	__u32 tsval;
	__u8 has_ts;
	__u8 sack;
	__u8 wscale;
};

static __always_inline int sw_syn_protected(__u16 port)
{
	__u32 zero = 0;
	struct sw_syn_portmap *ports = bpf_map_lookup_elem(&sw_syn_ports, &zero);

	return ports && (ports->word[port >> 5] >> (port & 31)) & 1;
}

/* A TCP header's length, bounded where the verifier must see it bounded (the header
 * is 20 to 60 bytes long: sw_syn_load checked). */
static __always_inline __u32 sw_syn_tcp_len(__u32 len)
{
	len &= 63;
	return len < 20 ? 20 : len;
}

/* Copies the headers; 0 when the stage cannot answer the packet: IPv4 options, IPv6
 * extension headers or a fragment would have to be rebuilt, not swapped. */
static __always_inline int sw_syn_load(SW_CTX *ctx, const struct sw_pkt *pkt,
				       struct sw_syn_hdrs *h)
{
	__u32 l3 = pkt->l3_off, l4 = pkt->l4_off, tcp_len;
	__u8 *th;

	if (pkt->frag || l3 > 0x3fff || l4 > 0x3fff)
		return 0;
	h->ip_len = pkt->family == SW_FAMILY_IPV4 ? 20 : 40;
	if (l4 != l3 + h->ip_len)
		return 0;
	th = sw_bytes(ctx, l4, 20);
	if (!th)
		return 0;
	tcp_len = (th[12] >> 4) * 4;
	if (tcp_len < 20)
		return 0;
	h->tcp_len = tcp_len;
	/* Direct reads where the length is a constant; the TCP header's is not, so a
	 * helper copies it. */
	if (h->ip_len == 20) {
		__u8 *ip = sw_bytes(ctx, l3, 20);

		if (!ip)
			return 0;
		__builtin_memcpy(h->ip, ip, 20);
	} else {
		__u8 *ip = sw_bytes(ctx, l3, 40);

		if (!ip)
			return 0;
		__builtin_memcpy(h->ip, ip, 40);
	}
	return sw_ctx_load(ctx, l4, h->tcp, sw_syn_tcp_len(tcp_len)) == 0;
}

static __always_inline void sw_syn_put32(__u8 *p, __u32 v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static __always_inline __u32 sw_syn_get32(const __u8 *p)
{
	return (__u32)p[0] << 24 | (__u32)p[1] << 16 | (__u32)p[2] << 8 | p[3];
}

/* Walking the SYN's options: one step per option, in a bpf_loop callback so the
 * verifier checks one step, not every path through 40 of them. */
struct sw_syn_optwalk {
	const struct sw_syn_hdrs *h;
	struct sw_syn_opts *o;
	__u32 i;
};

static long sw_syn_opt_step(__u64 index, void *data)
{
	struct sw_syn_optwalk *w = data;
	const struct sw_syn_hdrs *h = w->h;
	struct sw_syn_opts *o = w->o;
	__u32 i = w->i, end = h->tcp_len;
	__u8 kind, len, ws;

	if (i >= end || i >= 59)
		return 1;
	kind = h->tcp[i & 63];
	if (kind == OPT_EOL)
		return 1;
	if (kind == OPT_NOP) {
		w->i = i + 1;
		return 0;
	}
	len = h->tcp[(i + 1) & 63];
	if (len < 2 || i + len > end)
		return 1;
	if (kind == OPT_WINDOW && len == 3) {
		ws = h->tcp[(i + 2) & 63];
		o->wscale = ws > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : ws;
	} else if (kind == OPT_SACK_PERM && len == 2) {
		o->sack = 1;
	} else if (kind == OPT_TIMESTAMP && len == 10) {
		o->has_ts = 1;
		o->tsval = (__u32)h->tcp[(i + 2) & 63] << 24 | (__u32)h->tcp[(i + 3) & 63] << 16 |
			   (__u32)h->tcp[(i + 4) & 63] << 8 | h->tcp[(i + 5) & 63];
	}
	w->i = i + len;
	return 0;
}

/* The options of the client's SYN that the SYN-ACK answers. */
static __always_inline void sw_syn_parse_opts(const struct sw_syn_hdrs *h, struct sw_syn_opts *o)
{
	struct sw_syn_optwalk w = {.h = h, .o = o, .i = 20};
	const __u8 *t = h->tcp;

	/* Linux's own layout (MSS, SACK permitted, timestamps, NOP, window scale), the
	 * most common SYN there is, read in place; any other takes the walk. */
	if (h->tcp_len == 40 && t[20] == OPT_MSS && t[21] == 4 && t[24] == OPT_SACK_PERM &&
	    t[25] == 2 && t[26] == OPT_TIMESTAMP && t[27] == 10 && t[36] == OPT_NOP &&
	    t[37] == OPT_WINDOW && t[38] == 3) {
		o->sack = 1;
		o->has_ts = 1;
		o->tsval = sw_syn_get32(t + 28);
		o->wscale = t[39] > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : t[39];
		return;
	}
	o->wscale = TS_WSCALE_NONE;
	bpf_loop(40, sw_syn_opt_step, &w, 0);
}

/* Ones' complement sum of n 32-bit words as they lie in memory (network order): the
 * sum folds to the checksum in network order too (RFC 1071), stored as it is. */
static __always_inline __u64 sw_syn_sum(const __u8 *p, __u32 words, __u64 sum)
{
	const __u32 *w = (const __u32 *)p;

	for (int i = 0; i < 15; i++) {
		if (i >= words)
			break;
		sum += w[i];
	}
	return sum;
}

static __always_inline __u16 sw_syn_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

/* Rewrites the copied SYN into the SYN-ACK (seq, ack given) with the options a cookie
 * handshake needs, both checksums right; returns its TCP length. */
static __always_inline __u32 sw_syn_make_synack(struct sw_syn_hdrs *h, const struct sw_syn_opts *o,
						__u32 seq, __u32 ack, __u8 flags)
{
	__u8 *ip = h->ip, *th = h->tcp;
	__u8 tmp[16];
	__u32 optlen = 4, tcp_len;
	__u64 sum;
	__u16 mss;

	if (h->ip_len == 20) {
		__builtin_memcpy(tmp, ip + 12, 4);
		__builtin_memcpy(ip + 12, ip + 16, 4);
		__builtin_memcpy(ip + 16, tmp, 4);
		mss = sw_syn.mss4;
	} else {
		__builtin_memcpy(tmp, ip + 8, 16);
		__builtin_memcpy(ip + 8, ip + 24, 16);
		__builtin_memcpy(ip + 24, tmp, 16);
		mss = sw_syn.mss6;
	}
	__builtin_memcpy(tmp, th, 2);
	__builtin_memcpy(th, th + 2, 2);
	__builtin_memcpy(th + 2, tmp, 2);
	sw_syn_put32(th + 4, seq);
	sw_syn_put32(th + 8, ack);
	th[13] = flags;
	th[14] = th[15] = 0;	/* window 0, as nf_synproxy's own SYN-ACK: no data before the
				 * proxied handshake completes */
	th[16] = th[17] = th[18] = th[19] = 0;
	th[20] = OPT_MSS;
	th[21] = 4;
	th[22] = mss >> 8;
	th[23] = mss;
	if (o->has_ts) {
		/* The timestamp encodes what the cookie cannot hold (kernel cookie_init_timestamp):
		 * milliseconds, their low 6 bits replaced by the options. */
		__u32 now = sw_clock_now(&sw_syn_clock) / 1000000, ts;

		ts = (now & ~TS_BITS_MASK) | o->wscale | (o->sack ? TS_SACK : 0) |
		     (flags & SW_TCP_ECE ? TS_ECN : 0);
		if (ts > now)
			ts -= TS_BITS_MASK + 1;
		th[24] = o->sack ? OPT_SACK_PERM : OPT_NOP;
		th[25] = o->sack ? 2 : OPT_NOP;
		th[26] = OPT_TIMESTAMP;
		th[27] = 10;
		sw_syn_put32(th + 28, ts);
		sw_syn_put32(th + 32, o->tsval);
		optlen = 16;
		if (o->wscale != TS_WSCALE_NONE) {
			th[36] = OPT_NOP;
			th[37] = OPT_WINDOW;
			th[38] = 3;
			th[39] = sw_syn.wscale;
			optlen = 20;
		}
	}
	tcp_len = 20 + optlen;
	th[12] = (tcp_len / 4) << 4;

	if (h->ip_len == 20) {
		ip[1] = 0;				/* tos */
		ip[2] = 0;
		ip[3] = 20 + tcp_len;			/* total length */
		ip[4] = ip[5] = 0;			/* id */
		ip[6] = 0x40;				/* don't fragment */
		ip[7] = 0;
		ip[8] = SYNACK_TTL;
		ip[10] = ip[11] = 0;			/* checksum, computed below */
		*(__u16 *)(ip + 10) = sw_syn_fold(sw_syn_sum(ip, 5, 0));
		sum = sw_syn_sum(ip + 12, 2, bpf_htons(IPPROTO_TCP + tcp_len));
	} else {
		sw_syn_put32(ip, 0x60000000);		/* no traffic class, no flow label */
		ip[4] = 0;
		ip[5] = tcp_len;
		ip[7] = SYNACK_TTL;
		sum = sw_syn_sum(ip + 8, 8, bpf_htons(IPPROTO_TCP + tcp_len));
	}
	*(__u16 *)(th + 16) = sw_syn_fold(sw_syn_sum(th, tcp_len / 4, sum));
	return tcp_len;
}

/* Writes len bytes into the frame at off: a constant len (the function is inlined), so
 * the write is checked against the frame's end and made with plain stores. */
static __always_inline int sw_syn_put(SW_CTX *ctx, __u32 off, const __u8 *src, const __u32 len)
{
	__u8 *p = sw_bytes(ctx, off, len);

	if (!p)
		return -1;
	__builtin_memcpy(p, src, len);
	return 0;
}

/* Puts the SYN-ACK in the frame: MACs swapped, VLAN tags as they were, the frame cut
 * (or grown) to its end. Stores go straight into the frame: each length here is one of
 * a few constants. */
static __always_inline int sw_syn_send(SW_CTX *ctx, const struct sw_pkt *pkt,
				       struct sw_syn_hdrs *h, __u32 tcp_len)
{
	__u32 l3 = pkt->l3_off, l4 = pkt->l4_off;
	__u16 mac[3];
	__u8 *eth;

	if (l3 > 0x3fff || l4 > 0x3fff || tcp_len > 40 || tcp_len < 20)
		return -1;
	if (sw_ctx_set_len(ctx, l4 + tcp_len))
		return -1;
	eth = sw_bytes(ctx, 0, 12);
	if (!eth)
		return -1;
	__builtin_memcpy(mac, eth, 6);
	__builtin_memcpy(eth, eth + 6, 6);
	__builtin_memcpy(eth + 6, mac, 6);
	if (h->ip_len == 20 ? sw_syn_put(ctx, l3, h->ip, 20) : sw_syn_put(ctx, l3, h->ip, 40))
		return -1;
	/* The SYN-ACK's own lengths: MSS alone; with timestamps; and window scale. */
	if (tcp_len == 40)
		return sw_syn_put(ctx, l4, h->tcp, 40);
	if (tcp_len == 36)
		return sw_syn_put(ctx, l4, h->tcp, 36);
	return sw_syn_put(ctx, l4, h->tcp, 24);
}

/* -- auth mode: the challenge ------------------------------------------------------ */

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                 \
	do {                                                                     \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);        \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                           \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                           \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);        \
	} while (0)

/* SipHash-1-3 of the connection's ends and a time slot, keyed by the stage's secret
 * (stages/syn.py `challenge` computes the same). Addresses are the 16-byte forms. */
static __always_inline __u64 sw_syn_hash(const struct sw_syn_state *st, const struct sw_pkt *pkt,
					 __u64 slot)
{
	__u64 m[5], v0, v1, v2, v3, b = (__u64)40 << 56;

	__builtin_memcpy(m, pkt->src, 16);
	__builtin_memcpy(m + 2, pkt->dst, 16);
	m[4] = (__u64)pkt->sport | (__u64)pkt->dport << 16 | (slot & 0xffffffff) << 32;
	v0 = st->key0 ^ 0x736f6d6570736575ULL;
	v1 = st->key1 ^ 0x646f72616e646f6dULL;
	v2 = st->key0 ^ 0x6c7967656e657261ULL;
	v3 = st->key1 ^ 0x7465646279746573ULL;
#pragma unroll
	for (int i = 0; i < 5; i++) {
		v3 ^= m[i];
		SIPROUND;
		v0 ^= m[i];
	}
	v3 ^= b;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* The secret, drawn by the first packet that needs it (two CPUs may race: the
 * compare-and-swap lets one win). It lives in a state map: reloads keep it, so
 * challenges in flight stay valid. */
static __always_inline void sw_syn_secret(struct sw_syn_state *st)
{
	if (!st->key0)
		__sync_val_compare_and_swap(&st->key0, 0,
					    ((__u64)bpf_get_prandom_u32() << 32 | bpf_get_prandom_u32()) | 1);
	if (!st->key1)
		__sync_val_compare_and_swap(&st->key1, 0,
					    ((__u64)bpf_get_prandom_u32() << 32 | bpf_get_prandom_u32()) | 1);
}

static __always_inline void sw_syn_auth_key(const struct sw_pkt *pkt, struct sw_syn_auth_key *key)
{
	__builtin_memcpy(key->addr, pkt->src, 16);
	key->family = pkt->family;
}

static __always_inline int sw_syn_authenticated(const struct sw_pkt *pkt)
{
	struct sw_syn_auth_key key = {};
	struct sw_syn_auth *auth;

	sw_syn_auth_key(pkt, &key);
	auth = bpf_map_lookup_elem(&sw_syn_auth, &key);
	return auth && auth->expires_ns > sw_clock_now(&sw_syn_clock);
}

/* A RST answering a challenge of this slot or the one before authenticates its source. */
static __always_inline int sw_syn_check_rst(SW_CTX *ctx, struct sw_pkt *pkt,
					    struct sw_syn_state *st)
{
	__u8 *th = sw_bytes(ctx, pkt->l4_off, 8);
	__u64 now = sw_clock_now(&sw_syn_clock), slot = now >> SW_SYN_SLOT_SHIFT;
	struct sw_syn_auth_key key = {};
	struct sw_syn_auth auth = {};
	__u32 seq;

	if (!th || !st->key0)
		return 0;
	seq = sw_syn_get32(th + 4);
	if (seq != (__u32)sw_syn_hash(st, pkt, slot) && seq != (__u32)sw_syn_hash(st, pkt, slot - 1))
		return 0;
	sw_syn_auth_key(pkt, &key);
	auth.expires_ns = now + sw_syn.auth_ttl_ns;
	bpf_map_update_elem(&sw_syn_auth, &key, &auth, BPF_ANY);
	return 1;
}

/* -- the handshake's other packets ------------------------------------------------- */

/* The host has a socket for this packet other than a listener (lib/socket.h). */
static __always_inline int sw_syn_has_socket(SW_CTX *ctx, const struct sw_pkt *pkt,
					     const struct sw_syn_hdrs *h)
{
	struct bpf_sock_tuple t = {};
	__u32 size;

	if (h->ip_len == 20) {
		__builtin_memcpy(&t.ipv4.saddr, h->ip + 12, 4);
		__builtin_memcpy(&t.ipv4.daddr, h->ip + 16, 4);
		__builtin_memcpy(&t.ipv4.sport, h->tcp, 2);
		__builtin_memcpy(&t.ipv4.dport, h->tcp + 2, 2);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, h->ip + 8, 16);
		__builtin_memcpy(t.ipv6.daddr, h->ip + 24, 16);
		__builtin_memcpy(&t.ipv6.sport, h->tcp, 2);
		__builtin_memcpy(&t.ipv6.dport, h->tcp + 2, 2);
		size = sizeof(t.ipv6);
	}
	return sw_host_socket(ctx, &t, size, IPPROTO_TCP);
}

static __always_inline int sw_syn_cookie_ok(struct sw_syn_hdrs *h)
{
	if (h->ip_len == 20)
		return bpf_tcp_raw_check_syncookie_ipv4((struct iphdr *)h->ip, (struct tcphdr *)h->tcp) == 0;
	return bpf_tcp_raw_check_syncookie_ipv6((struct ipv6hdr *)h->ip, (struct tcphdr *)h->tcp) == 0;
}

/* -- activation ------------------------------------------------------------------- */

/* Counts a SYN to the protected ports and says whether the stage is active: always,
 * or with hysteresis on the SYN rate, measured over windows of a second (the CPUs share
 * one count; a lost increment in a race only blurs the rate). */
static __always_inline int sw_syn_active(struct sw_syn_state *st)
{
	__u64 now, elapsed, rate;

	if (sw_syn.always) {
		if (!st->active) {	/* for status: active, and since when */
			st->active = 1;
			st->since_ns = bpf_ktime_get_coarse_ns();
		}
		return 1;
	}
	now = sw_clock_now(&sw_syn_clock);
	elapsed = now - st->window_ns;
	if (elapsed < SW_SYN_WINDOW_NS) {
		__sync_fetch_and_add(&st->syns, 1);
		return st->active;
	}
	rate = st->window_ns ? st->syns * 1000000000ULL / elapsed : 0;
	st->window_ns = now;
	st->syns = 1;
	st->last_rate = rate;
	if (!st->active && rate > sw_syn.above) {
		st->active = 1;
		st->since_ns = now;
	} else if (st->active && rate < sw_syn.below) {
		st->active = 0;
		st->since_ns = now;
	}
	return st->active;
}

/* -- the stage -------------------------------------------------------------------- */

static __noinline int sw_syn_answer(SW_CTX *ctx, struct sw_pkt *pkt, struct sw_syn_state *st)
{
	struct sw_syn_hdrs h = {};
	struct sw_syn_opts o = {};
	__u32 seq, ack, tcp_len, reason;
	__u8 flags = SW_TCP_SYN | SW_TCP_ACK;

	if (!sw_syn_load(ctx, pkt, &h))
		return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_SYN_UNANSWERABLE, SW_MOD_SYN, SW_RULE_NONE);
	if (sw_syn.mode == SW_SYN_MODE_COOKIE) {
		__s64 cookie;

		if (h.ip_len == 20)
			cookie = bpf_tcp_raw_gen_syncookie_ipv4((struct iphdr *)h.ip, (struct tcphdr *)h.tcp,
								sw_syn_tcp_len(h.tcp_len));
		else
			cookie = bpf_tcp_raw_gen_syncookie_ipv6((struct ipv6hdr *)h.ip, (struct tcphdr *)h.tcp,
								sw_syn_tcp_len(h.tcp_len));
		if (cookie < 0)
			return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_SYN_UNANSWERABLE, SW_MOD_SYN, SW_RULE_NONE);
		sw_syn_parse_opts(&h, &o);
		if ((h.tcp[13] & (SW_TCP_ECE | SW_TCP_CWR)) == (SW_TCP_ECE | SW_TCP_CWR) && o.has_ts)
			flags |= SW_TCP_ECE;
		seq = (__u32)cookie;
		ack = sw_syn_get32(h.tcp + 4) + 1;
		reason = SW_R_SYN_COOKIE;
	} else {
		__u64 hash;

		sw_syn_secret(st);
		hash = sw_syn_hash(st, pkt, sw_clock_now(&sw_syn_clock) >> SW_SYN_SLOT_SHIFT);
		/* An acceptable ACK (isn + 1) by chance, one in 2^32: the client would
		 * complete the handshake with us, its ACK go to the host and be refused, and
		 * it would try again. */
		seq = hash >> 32;
		ack = (__u32)hash;
		reason = SW_R_SYN_CHALLENGE;
	}
	tcp_len = sw_syn_make_synack(&h, &o, seq, ack, flags);
	if (sw_syn_send(ctx, pkt, &h, tcp_len))
		return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_SYN_UNANSWERABLE, SW_MOD_SYN, SW_RULE_NONE);
	sw_ctx_send_back(ctx);
	return sw_finish(ctx, pkt, SW_ACT_TX, reason, SW_MOD_SYN, SW_RULE_NONE);
}

static __noinline int sw_syn_other(SW_CTX *ctx, struct sw_pkt *pkt, struct sw_syn_state *st)
{
	struct sw_syn_hdrs h = {};
	__u8 flags = pkt->tcp_flags;

	/* Auth mode checks RSTs only: anything else costs no socket lookup. */
	if (sw_syn.mode == SW_SYN_MODE_AUTH && !(flags & SW_TCP_RST))
		return sw_next(ctx, pkt);
	if (!sw_syn_load(ctx, pkt, &h))
		return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_BAD_COOKIE, SW_MOD_SYN, SW_RULE_NONE);
	if (sw_syn_has_socket(ctx, pkt, &h))
		return sw_next(ctx, pkt);
	if (sw_syn.mode == SW_SYN_MODE_COOKIE) {
		if ((flags & (SW_TCP_SYN | SW_TCP_RST | SW_TCP_FIN | SW_TCP_ACK)) == SW_TCP_ACK && sw_syn_cookie_ok(&h))
			return sw_next(ctx, pkt);
		return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_BAD_COOKIE, SW_MOD_SYN, SW_RULE_NONE);
	}
	if (sw_syn_check_rst(ctx, pkt, st))
		return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_SYN_AUTHENTICATED, SW_MOD_SYN, SW_RULE_NONE);
	return sw_finish(ctx, pkt, SW_ACT_DROP, SW_R_BAD_COOKIE, SW_MOD_SYN, SW_RULE_NONE);
}

SEC(SW_PROG_SEC)
int sw_stage_syn(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	struct sw_syn_state *st;
	__u32 zero = 0;
	int active;

	if (pkt->l4_proto != IPPROTO_TCP || !(pkt->flags & SW_PKT_HAS_L4) ||
	    !sw_syn_protected(pkt->dport))
		return sw_next(ctx, pkt);
	st = bpf_map_lookup_elem(&sw_syn_state, &zero);
	if (!st)
		return sw_next(ctx, pkt);
	if ((pkt->tcp_flags & (SW_TCP_SYN | SW_TCP_ACK | SW_TCP_RST | SW_TCP_FIN)) == SW_TCP_SYN) {
		active = sw_syn_active(st);
		if (!active || (sw_syn.mode == SW_SYN_MODE_AUTH && sw_syn_authenticated(pkt)))
			return sw_next(ctx, pkt);
		return sw_syn_answer(ctx, pkt, st);
	}
	if (!sw_syn.always && !st->active)
		return sw_next(ctx, pkt);
	return sw_syn_other(ctx, pkt, st);
}

char LICENSE[] SEC("license") = "GPL";
