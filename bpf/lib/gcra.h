/* SPDX-License-Identifier: GPL-2.0 */
/* Token buckets as GCRA: one theoretical arrival time (TAT) per bucket, in nanoseconds of
 * the caller's clock, moved with atomic operations so every CPU shares the bucket. A
 * packet costs `cost` ns of TAT; the burst is `tol` ns of TAT ahead of now. */
#ifndef SW_GCRA_H
#define SW_GCRA_H

#include "common.h"

/* GCRA on one theoretical arrival time: the packet fits when the bucket, after taking
 * `cost`, is no further ahead of now than the burst allows. A take that does not fit
 * is given back, so a source over its limit does not push its own refill away. */
static __always_inline int sw_gcra_take(__u64 *tat, __u64 now, __u64 cost, __u64 tol)
{
	__u64 t = *(volatile __u64 *)tat, old;

	/* A key over its limit, the flood's usual case, is refused on a plain read: no
	 * atomic operation, no cache line taken from the other CPUs. */
	if (t > now + tol)
		return 0;
	if (t < now)	/* an idle bucket is full: catch up (one CPU wins) */
		__sync_val_compare_and_swap(tat, t, now);
	old = __sync_fetch_and_add(tat, cost);
	if (old <= now + tol)
		return 1;
	__sync_fetch_and_sub(tat, cost);
	return 0;
}

#endif /* SW_GCRA_H */
