/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The maps every stage shares with the root program. Each object declares them; the
 * loader makes every stage reuse the root's instances, so there is one of each per
 * loaded pipeline (sw_counters, a state map, is also kept across reloads).
 */
#ifndef SW_MAPS_H
#define SW_MAPS_H

#include "common.h"
#include "clock.h"

/* The parse result and the decision of the packet being processed on this CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_pkt);
} sw_scratch SEC(".maps");

/* Verdict counters, indexed by action * SW_R_MAX + reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_ACT_MAX * SW_R_MAX);
	__type(key, __u32);
	__type(value, struct sw_counter);
} sw_counters SEC(".maps");

/* What this pipeline was configured with, for status: the data plane reads sw_consts. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_config);
} sw_config SEC(".maps");

/* The stage chain: slot i holds the i-th stage. Each loaded pipeline has its own, so a
 * reload switches the whole chain with its root. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, SW_MAX_STAGES);
	__type(key, __u32);
	__type(value, __u32);
} sw_stages SEC(".maps");

/* Sampled events (lib/events.h): the ring is kept across reloads, so a reader follows
 * one ring whatever runs; the budgets and the clock are each generation's own. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SW_EVENT_RING_BYTES);
} sw_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);	/* SW_EV_DROPS, SW_EV_PASSES */
	__type(key, __u32);
	__type(value, struct sw_event_budget);
} sw_ev_budget SEC(".maps");

SW_CLOCK_MAP(sw_ev_clock);

/* Set by the loader for this program's place in this pipeline (struct sw_consts). */
const volatile struct sw_consts sw_consts SEC(".rodata.sw") = {
	.next_slot = SW_SLOT_END,
	.missed_action = SW_ACT_PASS,
	.end_action = SW_ACT_PASS,
	.limit_slot = SW_SLOT_END,
};

/* A program's table (lib/table.h): one value of u32 entries whose size the loader sets
 * (no value type, so that it can), or a host hash the loader sizes. Tables can be
 * mapped, so that a live set entry flags the one trie entry above its address with a
 * single aligned store, not a copy of the whole table. A host hash has room for live
 * entries beyond the compiled ones, allocated as they come. */
#define SW_TABLE_MAP(name)                                   \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_ARRAY);            \
		__uint(max_entries, 1);                      \
		__uint(map_flags, BPF_F_MMAPABLE);           \
		__uint(key_size, sizeof(__u32));             \
		__uint(value_size, sizeof(__u32));           \
	} name SEC(".maps")

#define SW_HOSTS_MAP(name)                                   \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_HASH);             \
		__uint(max_entries, 1);                      \
		__uint(map_flags, BPF_F_NO_PREALLOC);        \
		__type(key, struct sw_addr_key);             \
		__type(value, struct sw_host);               \
	} name SEC(".maps")

#endif /* SW_MAPS_H */
