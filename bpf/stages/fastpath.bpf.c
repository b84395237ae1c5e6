// SPDX-License-Identifier: GPL-2.0
/* Fastpath stage: allowlisted and blocklisted sources are decided before any costly
 * stage runs. The root already classified the source; the stage reads what its lists
 * say for that class (longest prefix of either list wins). */
#include "lib/pipeline.h"

/* Per source class: SW_FP_NONE, SW_ACT_PASS (allowlisted) or SW_ACT_DROP (blocklisted). */
SW_TABLE_MAP(sw_fp_tab);

SEC(SW_PROG_SEC)
int sw_stage_fastpath(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	const __u32 *tab = sw_table(&sw_fp_tab);
	__u32 action = tab ? sw_tab_at(tab, pkt->src_class) : SW_FP_NONE;

	if (action == SW_ACT_DROP)
		return sw_finish(ctx, pkt, action, SW_R_BLOCKLISTED, SW_MOD_FASTPATH, SW_RULE_NONE);
	if (action == SW_ACT_PASS)
		return sw_finish(ctx, pkt, action, SW_R_ALLOWLISTED, SW_MOD_FASTPATH, SW_RULE_NONE);
	return sw_next(ctx, pkt);
}

char LICENSE[] SEC("license") = "GPL";
