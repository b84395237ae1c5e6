/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one header whose layouts the BPF programs and the Python control plane share.
 *
 * Python reads the region between the cdef markers with cffi and compiles a check
 * module against this same file, so a layout that drifts is a build error, never a
 * silently wrong offset. Keep that region in the C subset cffi understands: fixed-width
 * types, plain structs, integer #defines. No expressions in #defines.
 */
#ifndef SHIELDWALL_H
#define SHIELDWALL_H

/* cdef-begin */

/* Verdicts use the kernel's XDP action numbers so a program can return them as is. */
#define SW_ACT_ABORTED 0
#define SW_ACT_DROP 1
#define SW_ACT_PASS 2
#define SW_ACT_TX 3
#define SW_ACT_REDIRECT 4
#define SW_ACT_MAX 5

/* Why a packet got its verdict. The names are stable API (abi.py derives them). */
#define SW_R_NONE 0
#define SW_R_END_OF_CHAIN 1
#define SW_R_NON_IP 2
#define SW_R_TRUNCATED_ETH 3
#define SW_R_TRUNCATED_VLAN 4
#define SW_R_VLAN_TOO_DEEP 5
#define SW_R_TRUNCATED_IPV4 6
#define SW_R_BAD_IPV4_HEADER 7
#define SW_R_BAD_IPV4_LENGTH 8
#define SW_R_TRUNCATED_IPV6 9
#define SW_R_BAD_IPV6_LENGTH 10
#define SW_R_BAD_IPV6_HEADER 21
#define SW_R_TRUNCATED_IPV6_EXT 11
#define SW_R_IPV6_EXT_TOO_DEEP 12
#define SW_R_TRUNCATED_L4 13
#define SW_R_BAD_TCP_HEADER 14
#define SW_R_MISSED_STAGE 15
#define SW_R_ALLOWLISTED 16
#define SW_R_BLOCKLISTED 17
#define SW_R_RULE 18
#define SW_R_DEFAULT 19
#define SW_R_ND_PROTECTED 20
#define SW_R_MAX 32

/* Which stage decided. Stage ids are fixed; their order in the chain is configuration. */
#define SW_MOD_ROOT 0
#define SW_MOD_FASTPATH 1
#define SW_MOD_POLICY 2
#define SW_MOD_MAX 16

/* Prefixes the fastpath lists hold, allow and deny together. */
#define SW_FASTPATH_MAX 1000000

/* Slots in the stage PROG_ARRAY: the chain is the first chain_len of them, in order. */
#define SW_MAX_STAGES 8

/* How far the parser walks before it calls a packet malformed. */
#define SW_MAX_VLAN_DEPTH 2
#define SW_MAX_IPV6_EXT 6

/* sw_pkt.family */
#define SW_FAMILY_NONE 0
#define SW_FAMILY_IPV4 4
#define SW_FAMILY_IPV6 6

/* sw_pkt.frag bits */
#define SW_FRAG_IS 1
#define SW_FRAG_MORE 2

/* sw_pkt.flags bits */
#define SW_PKT_HAS_L4 1

/* TCP flag bits as on the wire (byte 13 of the TCP header). */
#define SW_TCP_FIN 1
#define SW_TCP_SYN 2
#define SW_TCP_RST 4
#define SW_TCP_PSH 8
#define SW_TCP_ACK 16
#define SW_TCP_URG 32
#define SW_TCP_ECE 64
#define SW_TCP_CWR 128

/* No rule decided (rule ids start at 1). */
#define SW_RULE_NONE 0

/*
 * The parse result: the root program fills it once per packet and every stage reads it
 * from the per-CPU scratch map instead of parsing again. Addresses are 16 bytes; IPv4
 * is stored IPv4-mapped (::ffff:a.b.c.d) so one LPM trie serves both families.
 * Multi-byte numbers are host order.
 */
struct sw_pkt {
	__u64 seq;		/* per-CPU packet count: userspace finds the newest decision */
	__u8 src[16];
	__u8 dst[16];
	__u32 frame_len;	/* bytes in the frame as received */
	__u32 rule;		/* deciding rule id, SW_RULE_NONE if none */
	__u16 l3_off;
	__u16 l4_off;
	__u16 eth_proto;	/* innermost EtherType */
	__u16 vlan_id;		/* innermost tag's id (valid when vlan_depth > 0) */
	__u16 l3_len;		/* IPv4 total length, or IPv6 payload length + 40 */
	__u16 frag_off;		/* fragment offset in 8-byte units */
	__u16 sport;
	__u16 dport;
	__u16 reason;		/* SW_R_* of the decision */
	__u16 module;		/* SW_MOD_* of the stage that decided */
	__u8 vlan_depth;
	__u8 family;		/* SW_FAMILY_* */
	__u8 l4_proto;		/* upper-layer protocol, after any IPv6 extension headers */
	__u8 ttl;		/* TTL or hop limit */
	__u8 frag;		/* SW_FRAG_* bits */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 flags;		/* SW_PKT_* bits */
	__u8 next_slot;		/* chain position of the next stage to run */
	__u8 action;		/* SW_ACT_* of the decision */
	__u8 pad0;
};

/* Per-CPU counter cell, one per (action, reason) pair. */
struct sw_counter {
	__u64 packets;
	__u64 bytes;
};

/* The pipeline's own configuration (array map, one entry). */
struct sw_config {
	__u32 chain_len;	/* stages in the chain; slot chain_len ends it */
	__u32 missed_action;	/* verdict when a chain slot is empty: SW_ACT_PASS or SW_ACT_DROP */
	__u32 end_action;	/* verdict when the chain runs out without a decision */
	__u32 pad0;
};

/* Key of every address LPM trie: IPv4 prefixes are stored IPv4-mapped (prefixlen + 96). */
struct sw_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Value of the fastpath trie. */
struct sw_fastpath_entry {
	__u32 action;		/* SW_ACT_PASS (allowlisted) or SW_ACT_DROP (blocklisted) */
};

/* Traffic generator (bpf/tools/trafgen.bpf.c): measurement, not product. */
#define SW_GEN_FIXED 0		/* the template as is, sources optionally spread */
#define SW_GEN_RANDOM 1		/* a random template, its fields rewritten per frame */
#define SW_GEN_REPLAY 2		/* captured frames, round-robin */
#define SW_GEN_TEMPLATES 8
#define SW_GEN_HDR_MAX 128	/* header bytes a random-mode template writes */
#define SW_GEN_FRAME_MAX 1600	/* the longest frame replay mode carries */
#define SW_GEN_PORTS 32		/* ports the random mode favors: the policy's own */

struct sw_gen_config {
	__u32 ifindex;		/* where frames go out (redirect program) */
	__u32 mode;		/* SW_GEN_* */
	__u32 src_spread;	/* fixed mode: distinct sources to cycle through; 0 keeps the template's */
	__u32 src_offset;	/* fixed mode: frame offset of the source address' last 4 bytes */
	__u32 src_base;		/* fixed mode: the template's low 16 source bits */
	__u32 ntemplates;	/* random mode: templates in use */
	__u32 nframes;		/* replay mode: frames in use */
	__u32 nports;		/* random mode: entries of ports[] in use */
	__u16 ports[32];
};

/* One random-mode template: its header bytes and where the fields it rewrites live. */
struct sw_gen_template {
	__u16 hdr_len;		/* bytes of data[] that make the headers */
	__u16 frame_len;	/* the frame's length: l3 lengths are drawn up to it */
	__u16 l3_off;
	__u16 l4_off;
	__u16 vlan_off;		/* offset of the innermost tag's TCI, 0 when untagged */
	__u8 family;		/* SW_FAMILY_IPV4 or SW_FAMILY_IPV6 */
	__u8 src_bits;		/* low bits of the source address drawn at random */
	__u8 data[128];
};

struct sw_gen_frame {
	__u32 len;
	__u8 data[1600];
};

/*
 * The policy stage's classifier (docs/classifier.md). Every match field maps a packet to
 * a class; a class has a bitvector of the rules the field admits; the AND of the
 * packet's vectors holds the rules that match it, in policy order.
 */
#define SW_POL_F_SRC 0
#define SW_POL_F_DST 1
#define SW_POL_F_PROTO 2
#define SW_POL_F_SPORT 3
#define SW_POL_F_DPORT 4
#define SW_POL_F_TCP_FLAGS 5
#define SW_POL_F_ICMP_TYPE 6
#define SW_POL_F_ICMP_CODE 7
#define SW_POL_F_LENGTH 8
#define SW_POL_F_TTL 9
#define SW_POL_F_VLAN 10
#define SW_POL_F_FRAGMENT 11
#define SW_POL_F_FAMILY 12
#define SW_POL_FIELDS 13

/* Keys of the fragment field: what kind of fragment a packet is. */
#define SW_POL_FRAG_NONE 0
#define SW_POL_FRAG_FIRST 1
#define SW_POL_FRAG_LATER 2
#define SW_POL_FRAG_OTHER 3
#define SW_POL_FRAG_KEYS 4

/* Vectors that are no field's: which rules decide, drop, or would drop (monitor). */
#define SW_POL_V_DECIDES 0
#define SW_POL_V_DROPS 1
#define SW_POL_V_WOULD_DROP 2
#define SW_POL_KINDS 3

/* Vectors are read in blocks of 8 words (512 rules); the most rules take 20 blocks. A
 * cached decision replays at most 8 non-deciding hits. */
#define SW_POL_MAX_RULES 10240
#define SW_POL_BLOCK_WORDS 8
#define SW_POL_MAX_BLOCKS 20
#define SW_POL_CACHE_COUNTED 8

/* One field of the active ruleset. */
struct sw_pol_field {
	__u32 used;		/* some rule matches on it; otherwise it is not looked up */
	__u32 key_base;		/* index of value 0 in the key map (scalar fields) */
	__u32 na_class;		/* class of a value no lookup can key: the field does not apply
				 * (no ports without TCP/UDP...), or for src/dst an IPv4-mapped
				 * address in an IPv6 packet */
	__u32 vec_base;		/* block index of class 0's vector */
};

/* A ruleset (array map: one per generation slot). */
struct sw_pol_meta {
	__u32 enabled;		/* 0: no policy, the stage hands packets on */
	__u32 nrules;
	__u32 nblocks;		/* vector length in blocks */
	__u32 default_action;	/* SW_ACT_PASS or SW_ACT_DROP */
	__u32 kinds_base;	/* block index of the SW_POL_V_* vectors */
	__u32 pad0;
	struct sw_pol_field field[SW_POL_FIELDS];
};

/* Which ruleset is active: slot gen % 2. Bumping gen is the one write that switches. */
struct sw_pol_state {
	__u32 gen;
	__u32 pad0;
};

/* Per-CPU, per rule id of the active ruleset. */
struct sw_rule_counter {
	__u64 packets;		/* matched and evaluated (rules after the deciding one are not) */
	__u64 bytes;
	__u64 last_hit_ns;	/* bpf_ktime_get_coarse_ns() of the last hit */
	__u64 would_drop;	/* hits of a monitor rule: packets it would have dropped */
};

/* The name of the rule with that id in the active ruleset. Only the control plane reads
 * it: counters follow a rule's name from one ruleset to the next. Not NUL-terminated
 * when a name takes all 64 bytes. */
#define SW_RULE_NAME_LEN 64
struct sw_rule_name {
	char name[64];
};

/* Decision cache: the classes of a packet decide everything but ND protection. */
struct sw_pol_cache_key {
	__u32 gen;
	__u32 cls[SW_POL_FIELDS];	/* 0 for fields no rule uses */
};

struct sw_pol_cache_entry {
	__u16 rule;		/* deciding rule id, SW_RULE_NONE for the default */
	__u8 action;		/* its verdict */
	__u8 ncounted;
	__u16 counted[SW_POL_CACHE_COUNTED];	/* non-deciding rules that matched, by id */
	__u8 would_drop;	/* bit i: counted[i] would have dropped */
	__u8 pad0;
};

/* The cache is direct-mapped, per CPU: a slot is picked by a hash of the key, and a
 * miss overwrites it. Lookups are an inlined array access and a compare. */
#define SW_POL_CACHE_SLOTS 8192
struct sw_pol_cache_slot {
	struct sw_pol_cache_key key;
	struct sw_pol_cache_entry entry;
};

/* cdef-end */

/* A vector block: bit i of word j is rule 64 * j + i of the block. Outside the cdef
 * region because cffi's __u64 is not the kernel's type, which an array makes an error;
 * Python handles blocks as __u64[SW_POL_BLOCK_WORDS]. */
struct sw_pol_block {
	__u64 w[SW_POL_BLOCK_WORDS];
};

#endif /* SHIELDWALL_H */
