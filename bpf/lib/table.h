/* SPDX-License-Identifier: GPL-2.0 */
/* Reading the chunked u32 tables (struct sw_tab_chunk) every classifier is made of. */
#ifndef SW_TABLE_H
#define SW_TABLE_H

#include "common.h"

/* Entry idx of a table map. A table is built whole by the control plane, which never
 * hands out an index past its end; a miss reads 0 rather than failing a packet. */
static __always_inline __u32 sw_tab_read(void *tab, __u32 idx)
{
	__u32 chunk = idx >> SW_TAB_SHIFT;
	struct sw_tab_chunk *c = bpf_map_lookup_elem(tab, &chunk);

	return c ? c->e[idx & (SW_TAB_CHUNK - 1)] : 0;
}

/* The class of an address: a walk down the trie, one byte per level, then the host
 * hash when the leaf says single addresses below it live there. */
static __always_inline __u32 sw_addr_class(void *tab, void *hosts, __u32 root4, __u32 root6,
					   const __u8 *addr, __u8 family)
{
	__u32 e = 0, node;

	if (family == SW_FAMILY_IPV4) {
		node = root4;
#pragma unroll
		for (int i = 12; i < 16; i++) {
			e = sw_tab_read(tab, node * SW_TRIE_FANOUT + addr[i]);
			if (!(e & SW_TRIE_CHILD))
				break;
			node = e & ~SW_TRIE_CHILD;
		}
	} else {
		node = root6;
		for (int i = 0; i < 16; i++) {
			e = sw_tab_read(tab, node * SW_TRIE_FANOUT + addr[i]);
			if (!(e & SW_TRIE_CHILD))
				break;
			node = e & ~SW_TRIE_CHILD;
		}
	}
	/* An IPv6 packet's IPv4-mapped source would find the IPv4 host of that address:
	 * the hash keys both families by the same 16 bytes. */
	if ((e & SW_TRIE_HOSTS) && !sw_v4_mapped_in_v6(family, addr)) {
		__u32 *host = bpf_map_lookup_elem(hosts, addr);

		if (host)
			return *host;
	}
	return e & SW_TRIE_CLASS;
}

#endif /* SW_TABLE_H */
