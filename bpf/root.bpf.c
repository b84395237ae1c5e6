// SPDX-License-Identifier: GPL-2.0
/* The root program: parses each packet once, classifies its source once for every stage
 * that keys on it, then starts the stage chain. */
#include "lib/canary.h"
#include "lib/parse.h"
#include "lib/pipeline.h"

/* The source trie, merged from every stage's source prefixes (docs/architecture.md). */
SW_TABLE_MAP(sw_src_tab);
SW_HOSTS_MAP(sw_src_hosts);

SEC(SW_PROG_SEC)
int sw_root(SW_CTX *ctx)
{
	SW_STAGE_PKT(pkt);
	int reason;

	/* The scratch outlives the previous packet on this CPU: start clean. */
	__builtin_memset(pkt, 0, sizeof(*pkt));
	sw_ctx_linearize(ctx);
	/* The linear part; the parse asks for the whole length when the packet claims more
	 * (lib/parse.h, sw_fits). */
	pkt->frame_len = ctx->data_end - ctx->data;

	reason = sw_parse(ctx, pkt);
	/* A canary tries a policy: what no policy sees stays with the root in force. */
	if (reason)
		sw_canary_hand_off(ctx);
	if (reason == SW_R_NON_IP) {
		pkt->frame_len = sw_ctx_len(ctx);
		return sw_finish(ctx, pkt, SW_ACT_PASS, reason, SW_MOD_ROOT, SW_RULE_NONE);
	}
	if (reason)
		return sw_finish(ctx, pkt, SW_ACT_DROP, reason, SW_MOD_ROOT, SW_RULE_NONE);
	if (!sw_in_canary(pkt))
		sw_canary_hand_off(ctx);
	if (sw_consts.src_classes) {
		const __u32 *tab = sw_table(&sw_src_tab);

		if (tab)
			pkt->src_class = sw_addr_class(tab, &sw_src_hosts, sw_consts.src_root4,
						       sw_consts.src_root6, pkt->src, pkt->family);
	}
	return sw_next(ctx, pkt);
}

char LICENSE[] SEC("license") = "GPL";
