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
#define SW_R_BAD_TCP_FLAGS 22
#define SW_R_LAND 23
#define SW_R_BOGON_SOURCE 24
#define SW_R_FRAGMENT_OVERLAP 25
#define SW_R_IPV4_OPTIONS 26
#define SW_R_IPV6_RH0 27
#define SW_R_ZERO_PORT 28
#define SW_R_RATE_LIMITED 29
#define SW_R_BLOCKED 30
#define SW_R_BAD_COOKIE 31
#define SW_R_SYN_COOKIE 32
#define SW_R_SYN_CHALLENGE 33
#define SW_R_SYN_AUTHENTICATED 34
#define SW_R_SYN_UNANSWERABLE 35
#define SW_R_REFLECTION 36
#define SW_R_REFLECTOR_LIMITED 37
#define SW_R_REFLECTION_FRAGMENT 38
/* 31-35: the syn stage; 36-39: the reflection stage; 40-43: the icmp stage. */
#define SW_R_MAX 64

/* Which stage decided. Stage ids are fixed; their order in the chain is configuration. */
#define SW_MOD_ROOT 0
#define SW_MOD_FASTPATH 1
#define SW_MOD_POLICY 2
#define SW_MOD_PROTECT 3
#define SW_MOD_LIMIT 4
#define SW_MOD_CONNTRACK 5
#define SW_MOD_SYN 6
#define SW_MOD_REFLECTION 7
#define SW_MOD_ICMP 8
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
#define SW_PKT_IPV4_OPTIONS 2	/* an IPv4 header longer than 20 bytes */
#define SW_PKT_IPV6_RH0 4	/* an IPv6 routing header of type 0 (deprecated, RFC 5095) */
#define SW_PKT_ESTABLISHED 8	/* a reply to a flow this host opened (conntrack stage) */

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
 * is stored IPv4-mapped (::ffff:a.b.c.d). Multi-byte numbers are host order.
 */
struct sw_pkt {
	__u8 src[16];
	__u8 dst[16];
	__u32 frame_len;	/* bytes in the frame as received */
	__u32 rule;		/* deciding rule id, SW_RULE_NONE if none */
	__u32 src_class;	/* the source's class (root: one lookup for every stage) */
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
	__u8 action;		/* SW_ACT_* of the decision */
	__u8 pad0[6];		/* a multiple of 8 bytes: per-CPU values are laid out so */
};

/* Per-CPU counter cell, one per (action, reason) pair. */
struct sw_counter {
	__u64 packets;
	__u64 bytes;
};

/* A chain slot that ends the chain: the stage after the last one. */
#define SW_SLOT_END 255

/*
 * What every program of one loaded pipeline knows before the verifier sees it (its
 * .rodata.sw section, frozen at load): the verifier then treats these as constants, so
 * the tail call to the next stage becomes a direct jump and unused code is pruned.
 */
struct sw_consts {
	__u32 next_slot;	/* the next stage's slot, SW_SLOT_END at the chain's end */
	__u32 missed_action;	/* verdict when that slot is empty: SW_ACT_PASS or SW_ACT_DROP */
	__u32 end_action;	/* verdict when the chain ends without a decision */
	__u32 src_classes;	/* root: classify sources (some stage reads sw_pkt.src_class) */
	__u32 src_root4;	/* root: the source trie's IPv4 and IPv6 root nodes */
	__u32 src_root6;
	__u32 table_entries;	/* entries of this program's table (lib/table.h) */
	__u32 canary_mode;	/* root of a canary: SW_CANARY_* (lib/canary.h) */
	__u32 canary_share;	/* SW_CANARY_SHARE: flows whose hash is below this run here */
	__u32 canary_family;	/* SW_CANARY_SOURCE: sources in this prefix run here */
	__u8 canary_addr[16];
	__u8 canary_mask[16];
	__u32 limit_slot;	/* the limit stage's slot: the rules hand it what a rule passed */
	__u32 ev_rate;		/* events a second per CPU, each of drops and passes; 0: none */
	__u32 ev_drop_every;	/* 1 in this many dropped packets may become an event */
	__u32 ev_pass_every;	/* 1 in this many passed packets may; 0: none */
	__u32 ev_cost_ns;	/* the budget as GCRA: an event costs 1 s / ev_rate ... */
	__u32 ev_tol_ns;	/* ... and the burst is what one tick of the clock refills */
	__u32 ev_tick_events;	/* a tick's share of ev_rate (at least 1) */
};

/*
 * Sampled packet events (lib/events.h, docs/operations.md "Events"): 1 in ev_*_every
 * verdicts is a candidate, and at most ev_rate candidates a second on each CPU, for
 * drops and passes each, go into the ring: a flood cannot flood the reader. The budget
 * refills with every tick of the clock (SW_EVENT_TICK_NS), so the events of a second
 * are spread over it; within a tick, candidates are spaced by what the previous tick
 * saw, so they are spread over its traffic, not all taken by its first burst. Each
 * event carries the decision, the parse and the frame's first bytes.
 */
#define SW_EVENT_SNAP 128
#define SW_EVENT_RING_BYTES 1048576
#define SW_EVENT_TICK_NS 100000000

struct sw_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() */
	__u8 src[16];
	__u8 dst[16];
	__u32 frame_len;
	__u32 rule;
	__u32 cpu;
	__u32 lost;		/* candidates of this kind this CPU's budget refused since its last event */
	__u32 every;		/* the 1-in-N of its kind it was a candidate of ... */
	__u16 sport;
	__u16 dport;
	__u16 reason;
	__u16 module;
	__u16 cap_len;		/* bytes of the frame in data */
	__u16 vlan_id;
	__u8 action;
	__u8 family;
	__u8 l4_proto;
	__u8 tcp_flags;
	__u32 spacing;		/* ... and the 1 in N of the candidates of its tick it was */
	__u8 data[SW_EVENT_SNAP];
};

/* One CPU's sampling state for one kind (drops or passes). */
struct sw_event_budget {
	__u64 tat;		/* GCRA's theoretical arrival time of the next event (lib/gcra.h) */
	__u64 tick;		/* the clock of the tick being counted */
	__u32 skip;		/* verdicts since the last candidate */
	__u32 seen;		/* candidates in this tick */
	__u32 spacing;		/* this tick takes 1 in this many candidates (0: 1) */
	__u32 gap;		/* candidates left before the next one taken */
	__u32 lost;		/* candidates refused since the last event */
	__u32 ring_full;	/* of those and earlier ones: refused because the ring was full */
	__u64 sent;		/* events in the ring, all time */
	__u64 refused;		/* candidates refused before the last event, all time */
};
#define SW_EV_DROPS 0
#define SW_EV_PASSES 1

/* A canary's root runs its own policy for part of the traffic and hands the rest to the
 * root it is tried against (docs/updates.md). */
#define SW_CANARY_OFF 0
#define SW_CANARY_SHARE 1
#define SW_CANARY_SOURCE 2

/* The pipeline's record of its own configuration, for status (not read per packet). */
struct sw_config {
	__u32 chain_len;
	__u32 missed_action;
	__u32 end_action;
	__u32 ev_rate;
	__u32 ev_drop_every;
	__u32 ev_pass_every;
};

/*
 * Tables: each program's table is one map value of u32 entries, sized for what it holds
 * (lib/table.h). The program looks it up once per packet; a read is then a bounds check
 * against sw_consts.table_entries, a constant to the verifier, and one load.
 */
/*
 * Address tries in a table: a node is 256 entries indexed by one address byte. An
 * entry is a child node, or a class (with SW_TRIE_HOSTS when single addresses below
 * it live in the owner's host hash). IPv4 walks bytes 12-15 of the mapped address from
 * its own root, IPv6 all 16 from another: the families never answer for each other.
 */
#define SW_TRIE_CHILD 2147483648
#define SW_TRIE_HOSTS 1073741824
#define SW_TRIE_CLASS 1073741823
#define SW_TRIE_FANOUT 256

struct sw_addr_key {
	__u8 addr[16];
};

/*
 * A single address's class in a host hash. Addresses of the compiled sets have
 * cls == fallback == origin and no expiry. A live set entry (docs/updates.md) overlays
 * an address: cls holds its live sets, fallback what it is once the earliest of their
 * TTLs has passed (expires_ns, bpf_ktime_get_coarse_ns(); 0: never), and origin what it
 * was before any live entry, for the control plane. SW_HOST_COMPILED: the compiled sets
 * hold this address, so taking every live entry off restores origin instead of
 * deleting the key.
 */
#define SW_HOST_COMPILED 1

struct sw_host {
	__u32 cls;
	__u32 fallback;
	__u32 origin;
	__u32 flags;
	__u64 expires_ns;
};

/* The protect stage's filters (docs/defenses.md), in the order it tests them. Filter i
 * drops with reason SW_R_BAD_TCP_FLAGS + i. */
#define SW_PROT_TCP_FLAGS 0
#define SW_PROT_LAND 1
#define SW_PROT_BOGONS 2
#define SW_PROT_FRAGMENTS 3
#define SW_PROT_IPV4_OPTIONS 4
#define SW_PROT_IPV6_RH0 5
#define SW_PROT_ZERO_PORTS 6
#define SW_PROT_MAX 7

#define SW_PROT_OFF 0
#define SW_PROT_MONITOR 1
#define SW_PROT_DROP 2

struct sw_prot_consts {
	__u32 mode[SW_PROT_MAX];	/* SW_PROT_OFF, _MONITOR or _DROP, per filter */
	__u32 pad0;
};

/*
 * Connection state (bpf/stages/conntrack.bpf.c, docs/defenses.md "Connection state").
 * A TC egress program records the flows this host opens, keyed from the host's side;
 * the conntrack stage looks a packet up with its ends swapped and marks a reply with
 * SW_PKT_ESTABLISHED. Only egress writes: no inbound packet creates or extends an entry.
 * The table is an LRU hash of SW_CT_MAX_FLOWS entries, a state map kept across reloads.
 */
#define SW_CT_MAX_FLOWS 65536
#define SW_CT_CLOSING 1		/* sw_ct_flow.flags: this host sent FIN or RST */

struct sw_ct_key {
	__u8 local[16];		/* this host's address, IPv4 mapped */
	__u8 remote[16];
	__u16 lport;		/* TCP/UDP ports; ICMP echo: the identifier, and rport 0 */
	__u16 rport;
	__u8 proto;		/* IPPROTO_* (ICMP and ICMPv6 echo included) */
	__u8 family;		/* SW_FAMILY_*: an IPv6 packet between IPv4-mapped
				 * addresses never answers an IPv4 flow */
	__u8 pad0[2];
};

struct sw_ct_flow {
	__u64 expires_ns;	/* bpf_ktime_get_coarse_ns() after which replies are new */
	__u32 flags;		/* SW_CT_* */
	__u32 pad0;
};

/* Each load's timeouts (.rodata.ct), in nanoseconds from the host's last packet. */
struct sw_ct_consts {
	__u64 tcp_ns;		/* after a SYN or any later packet */
	__u64 closing_ns;	/* after this host's FIN or RST */
	__u64 udp_ns;
	__u64 icmp_ns;		/* after an echo request */
};

/*
 * Rate limits (docs/defenses.md, "Rate limits"). A limit is a GCRA token bucket per key
 * (the key is what `per` says); its state is two theoretical arrival times (in
 * bpf_ktime_get_coarse_ns() time), moved with
 * atomic adds, so every CPU shares one bucket. A count-min sketch keeps keys that send
 * fewer than `gate` packets in a sketch window out of the bucket table: a flood of
 * never-repeating sources creates no bucket and evicts none.
 */
#define SW_LIM_MAX 16
#define SW_LIM_BLOCK_LENS 4	/* distinct block prefix lengths, per family */
#define SW_LIM_PER_SOURCE 0
#define SW_LIM_PER_DESTINATION 1
#define SW_LIM_PER_RULE 2
#define SW_LIM_PER_FLOW 3
#define SW_LIM_BUCKETS 262144
#define SW_LIM_BLOCKS 65536
#define SW_LIM_SKETCH_ROWS 2		/* cells a key counts in, both in one cache line */
#define SW_LIM_SKETCH_LINES 8192	/* 512 KiB: a power of two, small enough for L2 */
#define SW_LIM_SKETCH_LINE 32		/* cells in a line */
#define SW_LIM_GATE_MAX 4095		/* a cell counts to 4095 (12 bits; 4 bits of window) */
#define SW_LIM_WINDOW_SHIFT 25		/* a sketch window is 2^25 ns, about 33.6 ms */
#define SW_LIM_NS16_SHIFT 16		/* byte costs are ns per byte << 16 */

struct sw_lim_key {
	__u32 limit;		/* the limit's id: a hash of its name, stable across reloads */
	__u32 rule;		/* per rule: the rule's id */
	__u8 a[16];		/* per source or destination: the masked address; per flow: the source */
	__u8 b[16];		/* per flow: the destination */
	__u16 sport;		/* per flow */
	__u16 dport;
	__u8 proto;
	__u8 pad0[3];
};

struct sw_lim_bucket {
	__u64 tat_pkt;		/* ns: when the bucket is full again, for packets */
	__u64 tat_byte;		/* the same for bytes */
	__u64 dropped;		/* packets over the limit */
	__u64 created_ns;
};

struct sw_block_key {
	__u8 addr[16];		/* the blocked prefix's address, masked, IPv4 mapped */
	__u32 plen;		/* its length over the 16 bytes (IPv4: 96 + prefix) */
	__u32 pad0;
};

struct sw_block {
	__u64 expires_ns;	/* bpf_ktime_get_coarse_ns() */
	__u32 limit;		/* the id of the limit that set it */
	__u32 pad0;
};

/* One cache line of the sketch: a cell is the window it counts in (top 4 bits) and
 * its count. */
struct sw_lim_line {
	__u16 cell[32];
};

/* Which block keys may be in the blocks table, by a hash of the key: a packet looks a
 * block up only when its bit is set, so sources never blocked cost no table miss. Bits
 * are set by the data plane with each block and rebuilt by the control plane. */
#define SW_LIM_BLOCK_BITS 65536
struct sw_lim_bits {
	__u32 word[2048];
};

struct sw_lim_mask {
	__u8 m[16];
};

struct sw_lim_def {
	__u32 id;		/* sw_lim_key.limit */
	__u32 per;		/* SW_LIM_PER_* */
	__u32 gate;		/* packets a key sends in a sketch window before it gets a bucket */
	__u32 block;		/* 1: over the limit blocks the source prefix for block_ns */
	__u64 pkt_ns;		/* ns per packet; 0: no packet rate */
	__u64 pkt_tol;		/* ns of burst: (burst - 1) packets */
	__u64 byte_ns16;	/* ns per byte << SW_LIM_NS16_SHIFT; 0: no bit rate */
	__u64 byte_tol;
	__u64 block_ns;
	__u32 plen4;		/* the block key's length for IPv4 and IPv6 sources */
	__u32 plen6;
	struct sw_lim_mask mask4;	/* prefix aggregation, over the 16-byte address */
	struct sw_lim_mask mask6;
};

struct sw_lim_consts {
	__u32 nlimits;
	__u32 nblock4;		/* distinct block prefix lengths in use, per family */
	__u32 nblock6;
	__u32 pad0;
	__u64 seed;		/* the sketch's hash seed, drawn per load */
	__u32 block_plen4[4];
	__u32 block_plen6[4];
	struct sw_lim_mask block_mask4[4];
	struct sw_lim_mask block_mask6[4];
	struct sw_lim_def def[16];
};

/* Per limit, per CPU. */
struct sw_lim_stat {
	__u64 passed;		/* within the limit */
	__u64 limited;		/* dropped over it */
	__u64 bucketed;		/* packets that reached the bucket table (the rest: under the gate) */
	__u64 blocks;		/* blocks it set */
};

/* -- the syn stage (bpf/stages/syn.bpf.c) ------------------------------------------ */

/*
 * SYN flood defense (docs/defenses.md, "SYN floods"). A SYN to a protected port is
 * answered from XDP with a SYN-ACK: in cookie mode its sequence number is the kernel's
 * syncookie (nf_synproxy completes the handshake), in auth mode its ACK number is a
 * keyed hash the client's TCP echoes back in a RST, which authenticates the source.
 */
#define SW_SYN_MODE_COOKIE 0
#define SW_SYN_MODE_AUTH 1
#define SW_SYN_PORTS 65536
#define SW_SYN_AUTH_MAX 65536
#define SW_SYN_SLOT_SHIFT 36		/* a challenge's time slot: 2^36 ns, about 69 s */
#define SW_SYN_WINDOW_NS 1000000000	/* the SYN rate is measured over one second */

struct sw_syn_consts {
	__u32 mode;		/* SW_SYN_MODE_* */
	__u32 always;		/* 1: always active; 0: by the SYN rate (above/below) */
	__u64 above;		/* SYNs a second to the protected ports that switch it on */
	__u64 below;		/* and off again */
	__u64 auth_ttl_ns;	/* auth mode: how long an authenticated source stays so */
	__u32 mss4;		/* the MSS the SYN-ACK advertises, per family */
	__u32 mss6;
	__u32 wscale;		/* the window scale it advertises */
	__u32 pad0;
};

/* The protected ports: one bit per port (sw_syn_ports, a config map). */
struct sw_syn_portmap {
	__u32 word[2048];
};

/* The stage's state (sw_syn_state, kept across reloads): the auth mode's secret, and
 * whether it is active, since when, and the SYN count of the current window. */
struct sw_syn_state {
	__u64 key0;		/* the keyed hash's secret, drawn by the data plane once */
	__u64 key1;
	__u64 window_ns;	/* bpf_ktime_get_coarse_ns() the current window began */
	__u64 syns;		/* SYNs to the protected ports in it */
	__u64 since_ns;		/* when active last changed (0: never) */
	__u64 last_rate;	/* SYNs a second in the last full window */
	__u32 active;
	__u32 pad0;
};

/* An authenticated source (sw_syn_auth, an LRU hash kept across reloads). */
struct sw_syn_auth_key {
	__u8 addr[16];		/* IPv4 mapped */
	__u32 family;
	__u32 pad0;
};

struct sw_syn_auth {
	__u64 expires_ns;	/* bpf_ktime_get_coarse_ns() */
};

/* -- the reflection stage (bpf/stages/reflection.bpf.c) ------------------------------ */
/*
 * Amplification and reflection (docs/defenses.md, "Reflection and amplification"). UDP
 * from a reflector source port (a bit in sw_refl_consts.word) passes only when it
 * answers a query this host sent: the TC egress program records the host's own UDP to
 * those ports in sw_refl_queries (for DNS one entry per query id); only egress writes it,
 * so no inbound packet creates, extends or evicts a pending query. Fragments of an
 * allowed datagram are let through by (source, destination, IP id): the first fragment
 * is recorded, later ones pass only when their first was.
 */
#define SW_REFL_QUERIES 65536		/* pending queries of this host */
#define SW_REFL_FRAG_REPLIES 4096	/* first fragments of matched replies */
#define SW_REFL_FRAG_OTHER 16384	/* first fragments of any other UDP the stage passed */
#define SW_REFL_BUCKETS 65536		/* per-reflector buckets (with `limit`) */
#define SW_REFL_PORT_WORDS 2048		/* 65536 bits: one per source port */
#define SW_REFL_FRAG_OFF 0		/* later fragments are not looked at */
#define SW_REFL_FRAG_TRACK 1		/* later UDP fragments need their first fragment */

struct sw_refl_key {
	__u8 local[16];		/* this host's address, IPv4 mapped */
	__u8 remote[16];
	__u16 lport;
	__u16 rport;		/* the reflector port the query went to */
	__u16 qid;		/* DNS (rport 53): the query id; else 0 */
	__u8 family;		/* SW_FAMILY_* */
	__u8 pad0;
};

struct sw_refl_frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;		/* IPv4 identification or IPv6 fragment identification */
	__u8 family;
	__u8 pad0[3];
};

/* Per CPU. */
struct sw_refl_stat {
	__u64 queries;		/* the host's own queries recorded (egress) */
	__u64 matched;		/* replies that answered one */
	__u64 allowed;		/* from an `allow` source */
	__u64 dropped;		/* unsolicited, reason reflection */
	__u64 passed_limit;	/* unsolicited but within the per-reflector limit */
	__u64 limited;		/* over it, reason reflector_limited */
	__u64 frags_passed;	/* later fragments whose first fragment passed */
	__u64 frags_dropped;	/* later fragments without, reason reflection_fragment */
};

struct sw_refl_consts {
	__u64 ttl_ns;		/* a query waits this long for its reply */
	__u64 frag_ns;		/* a first fragment waits this long for the rest */
	__u64 pkt_ns;		/* `limit`: ns per packet; 0: unsolicited replies are dropped */
	__u64 pkt_tol;		/* `limit`: ns of burst */
	__u32 fragments;	/* SW_REFL_FRAG_* */
	__u32 allow;		/* 1: the table says which source classes are allowed */
	__u32 word[2048];	/* reflector source ports, a bit each */
};

/* -- the icmp stage (bpf/stages/icmp.bpf.c) ------------------------------------------ */

/*
 * ICMP and ICMPv6 (docs/defenses.md, "ICMP"): a shared GCRA bucket per (family, type)
 * for the types the policy limits, and errors whose embedded packet is no flow of this
 * host dropped. Neighbor discovery (ICMPv6 133-137) is handed on untouched. A slot is
 * the ICMP type for IPv4 and 256 + the type for IPv6.
 */
#define SW_R_ICMP_UNRELATED 40
#define SW_R_ICMP_LIMITED 41
#define SW_ICMP_SLOTS 512
#define SW_ICMP_LIMITS 16
#define SW_ICMP_INNER_EXT 2	/* IPv6 extension headers walked in an error's embedded packet */

struct sw_icmp_def {
	__u64 pkt_ns;		/* ns per packet */
	__u64 pkt_tol;		/* ns of burst: (burst - 1) packets */
};

struct sw_icmp_consts {
	__u32 unrelated;	/* SW_PROT_OFF, _MONITOR or _DROP */
	__u32 nlimits;
	__u8 slot[512];		/* per slot: its limit's index + 1; 0: not limited */
	struct sw_icmp_def def[16];
};

/* Per slot, shared by every CPU (a state map: kept across reloads). */
struct sw_icmp_bucket {
	__u64 tat;		/* ns of the stage's clock: when the bucket is full again */
};

/* Per slot, per CPU. */
struct sw_icmp_stat {
	__u64 passed;		/* handed on by this stage */
	__u64 limited;		/* dropped over the type's limit */
	__u64 unrelated;	/* errors about no flow of this host (dropped, or counted in monitor mode) */
	__u64 pad0;
};

/* Values of the fastpath's table, per source class: 0 for neither list. */
#define SW_FP_NONE 0

/* Traffic generator (bpf/tools/trafgen.bpf.c): measurement, not product. */
#define SW_GEN_FIXED 0		/* the template as is, sources optionally spread */
#define SW_GEN_RANDOM 1		/* a random template, its fields rewritten per frame */
#define SW_GEN_REPLAY 2		/* captured frames, round-robin */
#define SW_GEN_TEMPLATES 8
#define SW_GEN_HDR_MAX 128	/* header bytes a random-mode template writes */
#define SW_GEN_FRAME_MAX 1600	/* the longest frame replay mode carries */
#define SW_GEN_PORTS 32		/* ports the random mode favors: the policy's own */
/* What random mode rewrites in a template, per template (sw_gen_template.rewrite); the
 * source's low src_bits are always drawn. A field left out keeps the template's value. */
#define SW_GEN_RW_TTL 1
#define SW_GEN_RW_PROTO 2
#define SW_GEN_RW_LEN 4
#define SW_GEN_RW_SPORT 8
#define SW_GEN_RW_DPORT 16
#define SW_GEN_RW_TCP_FLAGS 32
#define SW_GEN_RW_VLAN 64
#define SW_GEN_RW_IPID 128	/* IPv4 identification: every fragment its own datagram */
#define SW_GEN_RW_ALL 127	/* everything but the IPv4 identification */
/* Checksums made right again after the rewrite (a receiving stack verifies them): the
 * IPv4 header's, and the one at l4_csum over the source and the ports (the fields an
 * attack draws); the others are left as they are. */
#define SW_GEN_RW_CSUM 256

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
	__u16 rewrite;		/* SW_GEN_RW_*: the fields drawn afresh per frame */
	__u16 l4_csum;		/* the L4 checksum's offset from l4_off, 0 for none; 8-byte
				 * aligned data follows: it is copied a word at a time */
	__u8 data[128];
};

struct sw_gen_frame {
	__u32 len;
	__u8 data[1600];
};

/*
 * The policy stage's classifier (docs/classifier.md). Every match field maps a packet to
 * a class: values that admit the same rules share one. Decision chains then map the
 * packet's classes to its first deciding rule.
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
#define SW_POL_F_STATE 13
#define SW_POL_FIELDS 14

/* The classifier's decision chains (docs/classifier.md): the combined small fields are
 * one more dimension after the fields; buckets and steps are bounded so every packet
 * costs a bounded number of table reads. */
#define SW_POL_DIM_MISC 14
#define SW_POL_DIMS 15
#define SW_POL_MAX_BUCKETS 6
#define SW_POL_MAX_STEPS 12

/* Keys of the fragment field: what kind of fragment a packet is. */
#define SW_POL_FRAG_NONE 0
#define SW_POL_FRAG_FIRST 1
#define SW_POL_FRAG_LATER 2
#define SW_POL_FRAG_OTHER 3
#define SW_POL_FRAG_KEYS 4

/* The policy stage's shape for one ruleset, in its .rodata.pol (see sw_consts for why).
 *
 * A scalar field's class: a table indexed by the value; for fields wider than a byte,
 * two levels (value >> 8, then value & 255), a level skipped where a whole block of 256
 * values shares one class (SW_TRIE_CHILD marks a second-level node).
 *
 * A step maps (state, class) to the next state. Dense: table[table_base + state * width
 * + class]. Sparse: two entries per state at table_base + 2 * state, the next state
 * for classes not listed, then either SW_POL_ROW | the offset of a dense row of that
 * state, or offset << 4 | n for n (at most SW_POL_SCAN) pairs of (class, next state).
 *
 * A bucket's final state indexes its decisions: two entries, the deciding rule id (0:
 * none) | SW_POL_DROPS when it drops, then where its counted list starts (0: none): a
 * length, then rule id | SW_POL_WOULD_DROP per counting rule. */
#define SW_POL_DROPS 2147483648
#define SW_POL_WOULD_DROP 2147483648
#define SW_POL_ROW 2147483648
#define SW_POL_SCAN 8
#define SW_POL_MAX_RULES 10240

struct sw_pol_step {
	__u32 dim;		/* SW_POL_F_* or SW_POL_DIM_MISC */
	__u32 sparse;
	__u32 remap_base;	/* the dimension's class -> this bucket's class; 0: read as is */
	__u32 width;
	__u32 table_base;
	__u32 pad0;
};

struct sw_pol_bucket {
	__u32 nsteps;
	__u32 decision_base;
	struct sw_pol_step step[12];
};

/* Direct mode, for small rulesets: each rule's fields tested against the packet in
 * order, the rules being constants of the program (no table read at all). A field holds
 * as Items.holds says: some plain item holds (or every item is negated) and no negated
 * one does. tcp_flags is one item: flags & lo == hi. */
#define SW_POL_SMALL_RULES 16
#define SW_POL_SMALL_ITEMS 8

struct sw_pol_range {
	__u32 lo;
	__u32 hi;
};

struct sw_pol_values {		/* a scalar field of a rule */
	__u32 n;
	__u32 negated;		/* bit i: item i is negated */
	__u32 plain;		/* some item is not negated */
	struct sw_pol_range item[8];
};

struct sw_pol_prefix {		/* 16-byte address and mask, IPv4 mapped; the family too */
	__u64 addr0;		/* bytes 0-7 and 8-15 as loaded from memory */
	__u64 addr1;
	__u64 mask0;
	__u64 mask1;
	__u32 family;
	__u32 pad0;
};

struct sw_pol_prefixes {	/* an address field of a rule */
	__u32 n;
	__u32 negated;
	__u32 plain;
	__u32 pad0;
	struct sw_pol_prefix item[8];
};

struct sw_pol_rule {
	__u32 used;		/* bit f: the rule tests field f */
	__u32 verdict;		/* SW_ACT_PASS or SW_ACT_DROP; 0: it does not decide */
	__u32 counts;
	__u32 would_drop;
	struct sw_pol_values value[14];		/* by field id (src and dst unused) */
	struct sw_pol_prefixes prefix[2];	/* src, dst */
};

struct sw_pol_consts {
	__u32 enabled;		/* 0: no policy, the stage hands packets on */
	__u32 direct;		/* the rules themselves, not the chains */
	__u32 nrules;		/* direct mode */
	__u32 pad0;
	__u32 default_action;
	__u32 nbuckets;
	__u32 counting;		/* some rule counts without deciding (count, monitor) */
	__u32 field_used[14];
	__u32 field_base[14];	/* scalar: key table; src: column by source class */
	__u32 field_na[14];	/* class when the field does not apply to the packet */
	__u32 dst_root4;
	__u32 dst_root6;
	__u32 misc_used;
	__u32 misc_base;
	__u32 misc_stride[14];	/* 0 for fields outside the product */
	struct sw_pol_bucket bucket[6];
	struct sw_pol_rule rule[16];
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

/* cdef-end */

#endif /* SHIELDWALL_H */
