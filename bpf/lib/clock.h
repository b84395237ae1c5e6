/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A clock for per-packet bookkeeping that costs one load: a BPF timer writes the coarse
 * clock into a map every SW_CLOCK_PERIOD_NS, and packets read it. On hosts where every
 * helper call goes through a return thunk (AMD's SRSO mitigation), reading the clock
 * per packet costs tens of nanoseconds; a "last hit" needs a tenth of a second.
 */
#ifndef SW_CLOCK_H
#define SW_CLOCK_H

#include "common.h"

/* A tenth of a second unless the program's file asks for finer before including this. */
#ifndef SW_CLOCK_PERIOD_NS
#define SW_CLOCK_PERIOD_NS 100000000ULL
#endif
#define SW_CLOCK_MONOTONIC 1

struct sw_clock {
	struct bpf_timer timer;
	__u64 now;	/* bpf_ktime_get_coarse_ns() at the last tick; 0 until the first packet */
};

/* One per program that reads it; pinned with the program's maps, since a timer only
 * runs while its map has a user reference. */
#define SW_CLOCK_MAP(name)                          \
	struct {                                    \
		__uint(type, BPF_MAP_TYPE_ARRAY);   \
		__uint(max_entries, 1);             \
		__type(key, __u32);                 \
		__type(value, struct sw_clock);     \
	} name SEC(".maps")

static int sw_clock_tick(void *map, __u32 *key, struct sw_clock *clock)
{
	clock->now = bpf_ktime_get_coarse_ns();
	bpf_timer_start(&clock->timer, SW_CLOCK_PERIOD_NS, 0);
	return 0;
}

/* Now, to SW_CLOCK_PERIOD_NS. The first packet of a load starts the ticking (two CPUs
 * may both try: the timer's init lets one win). */
static __always_inline __u64 sw_clock_now(void *map)
{
	__u32 zero = 0;
	struct sw_clock *clock = bpf_map_lookup_elem(map, &zero);

	if (!clock)
		return 0;
	if (clock->now)
		return clock->now;
	clock->now = bpf_ktime_get_coarse_ns();
	if (!bpf_timer_init(&clock->timer, map, SW_CLOCK_MONOTONIC)) {
		bpf_timer_set_callback(&clock->timer, sw_clock_tick);
		bpf_timer_start(&clock->timer, SW_CLOCK_PERIOD_NS, 0);
	}
	return clock->now;
}

#endif /* SW_CLOCK_H */
