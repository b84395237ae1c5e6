/* SPDX-License-Identifier: GPL-2.0 */
/* Reading a program's table (one map value of u32 entries) and the address tries in it. */
#ifndef SW_TABLE_H
#define SW_TABLE_H

#include "maps.h"

/* The program's table, looked up once per packet; NULL only if the map is broken. */
static __always_inline const __u32 *sw_table(void *map)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(map, &zero);
}

/* Entry idx. The control plane never hands out an index past the table's end; a miss
 * reads 0 rather than failing a packet. table_entries is a constant to the verifier,
 * which is how it knows every read stays inside the value. */
static __always_inline __u32 sw_tab_at(const __u32 *tab, __u32 idx)
{
	if (idx >= sw_consts.table_entries)
		return 0;
	return tab[idx];
}

/* The class of an address: a walk down the trie, one byte per level, then the host
 * hash when the leaf says single addresses below it live there. */
static __always_inline __u32 sw_addr_class(const __u32 *tab, void *hosts, __u32 root4, __u32 root6,
					   const __u8 *addr, __u8 family)
{
	__u32 e = 0, node;

	if (family == SW_FAMILY_IPV4) {
		node = root4;
#pragma unroll
		for (int i = 12; i < 16; i++) {
			e = sw_tab_at(tab, node * SW_TRIE_FANOUT + addr[i]);
			if (!(e & SW_TRIE_CHILD))
				break;
			node = e & ~SW_TRIE_CHILD;
		}
	} else {
		node = root6;
		for (int i = 0; i < 16; i++) {
			e = sw_tab_at(tab, node * SW_TRIE_FANOUT + addr[i]);
			if (!(e & SW_TRIE_CHILD))
				break;
			node = e & ~SW_TRIE_CHILD;
		}
	}
	/* An IPv6 packet's IPv4-mapped source would find the IPv4 host of that address:
	 * the hash keys both families by the same 16 bytes. */
	if ((e & SW_TRIE_HOSTS) && !sw_v4_mapped_in_v6(family, addr)) {
		const struct sw_host *host = bpf_map_lookup_elem(hosts, addr);

		/* Only a live entry with a TTL pays for the clock. */
		if (host)
			return host->expires_ns && bpf_ktime_get_coarse_ns() >= host->expires_ns ?
				host->fallback : host->cls;
	}
	return e & SW_TRIE_CLASS;
}

#endif /* SW_TABLE_H */
