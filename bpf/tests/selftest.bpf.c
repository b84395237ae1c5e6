// SPDX-License-Identifier: GPL-2.0
/* Exercises the binding's map-of-maps swap and ring buffer on the real kernel; loaded
 * only by the tests. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

/* Slot 0 holds the map whose value 0 is the verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct inner);
} st_outer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} st_events SEC(".maps");

SEC("xdp")
int st_verdict_from_inner(struct xdp_md *ctx)
{
	__u32 zero = 0, *verdict;
	void *inner = bpf_map_lookup_elem(&st_outer, &zero);

	if (!inner)
		return XDP_ABORTED;
	verdict = bpf_map_lookup_elem(inner, &zero);
	return verdict ? *verdict : XDP_ABORTED;
}

SEC("xdp")
int st_report_length(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;

	bpf_ringbuf_output(&st_events, &len, sizeof(len), 0);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
