/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Sampled packet events: a verdict's decision, parse and first bytes, into a ring
 * buffer the daemon or `shieldwall events` reads (docs/operations.md, "Events").
 *
 * An attacker chooses the packet rate, so the cost must not follow it: a verdict that
 * is not a candidate costs one per-CPU increment; a candidate reads the timer clock (one
 * load, no helper call) and is refused, on a plain read, while this CPU's budget is
 * spent. Only the sent ones pay for the ring and the copy, so at most ev_rate a second
 * per CPU, whatever the flood. The budget is a GCRA bucket that each tick of the clock
 * refills by a tenth of a second's events, and within a tick 1 in `spacing` candidates
 * is taken, `spacing` being what the previous tick saw over the tick's share: a burst
 * cannot take a tick's samples and hide what comes after it, and an event stands for
 * every * spacing * (1 + lost) packets of its kind.
 */
#ifndef SW_EVENTS_H
#define SW_EVENTS_H

#include "maps.h"
#include "clock.h"
#include "gcra.h"

/* Rare, and the copy is the largest part of it: one subprogram, not a copy per verdict
 * site of every stage. */
static __noinline int sw_event_send(SW_CTX *ctx, struct sw_pkt *pkt, struct sw_event_budget *b,
				    __u32 every)
{
	struct sw_event *ev;
	__u32 len;

	ev = bpf_ringbuf_reserve(&sw_events, sizeof(*ev), 0);
	if (!ev) {
		/* No reader, or one that lags: the loss is counted, never waited for. */
		b->lost++;
		b->ring_full++;
		return 0;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(ev->src, pkt->src, sizeof(ev->src));
	__builtin_memcpy(ev->dst, pkt->dst, sizeof(ev->dst));
	ev->frame_len = pkt->frame_len;
	ev->rule = pkt->rule;
	ev->cpu = bpf_get_smp_processor_id();
	ev->lost = b->lost;
	ev->every = every;
	ev->sport = pkt->sport;
	ev->dport = pkt->dport;
	ev->reason = pkt->reason;
	ev->module = pkt->module;
	ev->vlan_id = pkt->vlan_id;
	ev->action = pkt->action;
	ev->family = pkt->family;
	ev->l4_proto = pkt->l4_proto;
	ev->tcp_flags = pkt->tcp_flags;
	ev->spacing = b->spacing ? b->spacing : 1;
	len = sw_ctx_len(ctx);
	if (len > SW_EVENT_SNAP)
		len = SW_EVENT_SNAP;
	if (len == 0 || sw_ctx_load(ctx, 0, ev->data, len))
		len = 0;
	ev->cap_len = len;
	bpf_ringbuf_submit(ev, 0);
	b->refused += b->lost;
	b->lost = 0;
	b->sent++;
	return 0;
}

/* One kind's candidate: `every` is a constant of this load, so with 1 (every verdict a
 * candidate) the skip count is gone from the program. */
static __always_inline void sw_event_offer(SW_CTX *ctx, struct sw_pkt *pkt, __u32 kind,
					   __u32 every)
{
	struct sw_event_budget *b = bpf_map_lookup_elem(&sw_ev_budget, &kind);
	__u64 now;

	if (!b)
		return;
	if (every > 1) {
		if (++b->skip < every)
			return;
		b->skip = 0;
	}
	now = sw_clock_now(&sw_ev_clock);
	if (now != b->tick) {
		/* A new tick: space its candidates so that what the last one saw would just
		 * fill its share, spread over all of it. */
		b->spacing = (b->seen + sw_consts.ev_tick_events - 1) / sw_consts.ev_tick_events;
		if (!b->spacing)
			b->spacing = 1;
		b->seen = 0;
		b->gap = 0;
		b->tick = now;
	}
	b->seen++;
	if (b->gap) {
		b->gap--;
		return;
	}
	b->gap = b->spacing - 1;
	if (!sw_gcra_take(&b->tat, now, sw_consts.ev_cost_ns, sw_consts.ev_tol_ns)) {
		b->lost++;
		return;
	}
	sw_event_send(ctx, pkt, b, every);
}

/* The verdict in pkt may become an event. ev_rate and the kinds' sampling are
 * constants: a pipeline without events carries none of this. */
static __always_inline void sw_event_sample(SW_CTX *ctx, struct sw_pkt *pkt)
{
	if (!sw_consts.ev_rate)
		return;
	if (pkt->action == SW_ACT_DROP)
		sw_event_offer(ctx, pkt, SW_EV_DROPS, sw_consts.ev_drop_every);
	else if (pkt->action == SW_ACT_PASS && sw_consts.ev_pass_every)
		sw_event_offer(ctx, pkt, SW_EV_PASSES, sw_consts.ev_pass_every);
}

#endif /* SW_EVENTS_H */
