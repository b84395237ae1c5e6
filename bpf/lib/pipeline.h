/* SPDX-License-Identifier: GPL-2.0 */
/* Ending a packet's journey with a verdict, or handing it to the next stage. */
#ifndef SW_PIPELINE_H
#define SW_PIPELINE_H

#include "maps.h"
#include "table.h"
#include "events.h"

static __always_inline struct sw_pkt *sw_scratch_pkt(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sw_scratch, &zero);
}

static __always_inline void sw_count(__u32 action, __u32 reason, __u32 bytes)
{
	__u32 idx = action * SW_R_MAX + reason;
	struct sw_counter *c;

	c = bpf_map_lookup_elem(&sw_counters, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* Every verdict goes through here: recorded in the scratch (offline verdicts read it
 * back), counted and perhaps sampled, so no decision is ever silent. */
static __always_inline int sw_finish(SW_CTX *ctx, struct sw_pkt *pkt, __u32 action,
				     __u32 reason, __u32 module, __u32 rule)
{
	pkt->action = action;
	pkt->reason = reason;
	pkt->module = module;
	pkt->rule = rule;
	sw_count(action, reason, pkt->frame_len);
	sw_event_sample(ctx, pkt);
	return sw_ctx_verdict(action);
}

/* The configured failure outcome, for a stage that is missing or cannot do its job. */
static __always_inline int sw_missed(SW_CTX *ctx, struct sw_pkt *pkt)
{
	return sw_finish(ctx, pkt, sw_consts.missed_action, SW_R_MISSED_STAGE, SW_MOD_ROOT, SW_RULE_NONE);
}

/* Runs the next stage of the chain. Returns only if there is none: the end of the
 * chain, or a slot that should hold a stage and does not (the configured failure
 * outcome). The slot is a constant to the verifier, so the call is a direct jump. */
static __always_inline int sw_next(SW_CTX *ctx, struct sw_pkt *pkt)
{
	if (sw_consts.next_slot == SW_SLOT_END)
		return sw_finish(ctx, pkt, sw_consts.end_action, SW_R_END_OF_CHAIN, SW_MOD_ROOT, SW_RULE_NONE);
	bpf_tail_call(ctx, &sw_stages, sw_consts.next_slot);
	return sw_missed(ctx, pkt);
}

/* Entry of every stage: the scratch always exists once the root ran, but the verifier
 * cannot know that. */
#define SW_STAGE_PKT(pkt)                                   \
	struct sw_pkt *pkt = sw_scratch_pkt();              \
	if (!pkt)                                           \
		return SW_RET_ABORTED

#endif /* SW_PIPELINE_H */
