"""The cffi (API mode) module over libbpf, shieldwall.kernel._libbpf: setup.py builds it.

API mode means a C compiler sees both libbpf's headers and shieldwall.h: every struct
declared here, and every struct of the shared header, is checked against the real
layout when the module is built, so Python never uses a hand-copied offset.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent
_HEADER_DIR = _HERE.parents[2] / "bpf" / "include"

LIBBPF_CDEF = r"""
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct ring_buffer;

struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj, const char *name);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);

int bpf_program__fd(const struct bpf_program *prog);
const char *bpf_program__name(const struct bpf_program *prog);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
int bpf_map__set_value_size(struct bpf_map *map, __u32 size);
__u32 bpf_map__max_entries(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
int bpf_map__set_inner_map_fd(struct bpf_map *map, int fd);
int bpf_map__set_initial_value(struct bpf_map *map, const void *data, size_t size);
const void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);


struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; };
struct bpf_map_create_opts { size_t sz; __u32 map_flags; __u32 inner_map_fd; ...; };
struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    __u32 data_size_in;
    __u32 data_size_out;
    const void *ctx_in;
    void *ctx_out;
    __u32 ctx_size_in;
    __u32 ctx_size_out;
    __u32 retval;
    int repeat;
    __u32 duration;
    __u32 flags;
    __u32 cpu;
    __u32 batch_size;
};
struct bpf_xdp_attach_opts { size_t sz; int old_prog_fd; };
struct bpf_xdp_query_opts {
    size_t sz;
    __u32 prog_id;
    __u32 drv_prog_id;
    __u32 hw_prog_id;
    __u32 skb_prog_id;
    __u8 attach_mode;
};
struct bpf_prog_info { __u32 type; __u32 id; char name[16]; ...; };
struct bpf_map_info { __u32 type; __u32 id; __u32 key_size; __u32 value_size; __u32 max_entries; char name[16]; ...; };
struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; ...; };
struct bpf_link_update_opts { size_t sz; __u32 flags; __u32 old_prog_fd; ...; };

int bpf_map_create(int map_type, const char *map_name, __u32 key_size, __u32 value_size,
                   __u32 max_entries, const struct bpf_map_create_opts *opts);
int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
int bpf_link_detach(int link_fd);
enum bpf_attach_type { BPF_XDP, ... };
struct bpf_link_create_opts { size_t sz; __u32 flags; ...; };
int bpf_link_create(int prog_fd, int target_fd, enum bpf_attach_type attach_type,
                    const struct bpf_link_create_opts *opts);
int bpf_link_update(int link_fd, int new_prog_fd, const struct bpf_link_update_opts *opts);
int bpf_prog_query(int target_fd, enum bpf_attach_type type, __u32 query_flags,
                   __u32 *attach_flags, __u32 *prog_ids, __u32 *prog_cnt);
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);
int bpf_xdp_attach(int ifindex, int prog_fd, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_detach(int ifindex, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_query(int ifindex, int flags, struct bpf_xdp_query_opts *opts);
int libbpf_strerror(int err, char *buf, size_t size);

/* Feature probes: each loads a minimal program or creates a minimal map, so the answer
 * is the running kernel's, whatever its version string claims. The enum values come
 * from the build host's uapi header through the compiler. */
enum bpf_prog_type { BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, BPF_PROG_TYPE_TRACING,
                     BPF_PROG_TYPE_EXT, BPF_PROG_TYPE_LSM, ... };
enum bpf_map_type { BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PROG_ARRAY,
                    BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LPM_TRIE,
                    BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS,
                    BPF_MAP_TYPE_RINGBUF, ... };
enum bpf_func_id {
    BPF_FUNC_map_lookup_elem, BPF_FUNC_map_update_elem, BPF_FUNC_map_delete_elem,
    BPF_FUNC_tail_call, BPF_FUNC_get_prandom_u32, BPF_FUNC_skb_load_bytes,
    BPF_FUNC_xdp_adjust_tail, BPF_FUNC_sk_lookup_udp, BPF_FUNC_sk_release,
    BPF_FUNC_skc_lookup_tcp, BPF_FUNC_ringbuf_output, BPF_FUNC_ktime_get_coarse_ns,
    BPF_FUNC_timer_init, BPF_FUNC_timer_set_callback, BPF_FUNC_timer_start,
    BPF_FUNC_loop, BPF_FUNC_xdp_get_buff_len, BPF_FUNC_xdp_load_bytes,
    BPF_FUNC_xdp_store_bytes, BPF_FUNC_tcp_raw_gen_syncookie_ipv4,
    BPF_FUNC_tcp_raw_gen_syncookie_ipv6, BPF_FUNC_tcp_raw_check_syncookie_ipv4,
    BPF_FUNC_tcp_raw_check_syncookie_ipv6, BPF_FUNC_redirect, BPF_FUNC_skb_change_tail,
    BPF_FUNC_skb_pull_data, BPF_FUNC_csum_level, BPF_FUNC_ringbuf_reserve,
    BPF_FUNC_ringbuf_submit, BPF_FUNC_ktime_get_ns, BPF_FUNC_get_smp_processor_id, ... };
int libbpf_probe_bpf_prog_type(enum bpf_prog_type prog_type, const void *opts);
int libbpf_probe_bpf_map_type(enum bpf_map_type map_type, const void *opts);
int libbpf_probe_bpf_helper(enum bpf_prog_type prog_type, enum bpf_func_id helper_id,
                            const void *opts);
int bpf_prog_get_fd_by_id(__u32 id);
struct bpf_insn { __u8 code; __s32 imm; ...; };
struct bpf_prog_load_opts { size_t sz; __u32 log_level; __u32 log_size; char *log_buf; ...; };
int bpf_prog_load(enum bpf_prog_type prog_type, const char *prog_name, const char *license,
                  const struct bpf_insn *insns, size_t insn_cnt,
                  const struct bpf_prog_load_opts *opts);

typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx,
                                     const void *opts);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
void ring_buffer__free(struct ring_buffer *rb);

extern "Python" int sw_ringbuf_sample(void *ctx, void *data, size_t size);
extern "Python" void sw_libbpf_message(int level, const char *msg);
void sw_capture_libbpf_output(void);

#define BPF_F_TEST_XDP_LIVE_FRAMES 2
#define XDP_FLAGS_UPDATE_IF_NOEXIST 1
#define XDP_FLAGS_SKB_MODE 2
#define XDP_FLAGS_DRV_MODE 4
#define XDP_FLAGS_HW_MODE 8
#define XDP_FLAGS_REPLACE 16
#define XDP_ATTACHED_NONE 0
#define XDP_ATTACHED_DRV 1
#define XDP_ATTACHED_SKB 2
#define XDP_ATTACHED_HW 3
#define XDP_ATTACHED_MULTI 4
#define BPF_ANY 0
#define BPF_F_REPLACE 4
#define BPF_NOEXIST 1
#define BPF_EXIST 2
#define BPF_F_NO_PREALLOC 1
"""

# libbpf hands its messages (the verifier log among them) to a printf-style callback;
# formatting them in C spares Python from va_list.
LIBBPF_SOURCE = r"""
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include "shieldwall.h"

static void sw_libbpf_message(int level, const char *msg);

/* Verifier logs arrive as one message of up to megabytes: the end, where the verifier
 * says why, must not be cut off. */
static int sw_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
    char small[1024], *buf = small;
    va_list again;
    int n;

    va_copy(again, args);
    n = vsnprintf(small, sizeof(small), fmt, args);
    if (n >= (int)sizeof(small)) {
        buf = malloc((size_t)n + 1);
        if (buf)
            vsnprintf(buf, (size_t)n + 1, fmt, again);
        else
            buf = small;
    }
    va_end(again);
    sw_libbpf_message((int)level, buf);
    if (buf != small)
        free(buf);
    return 0;
}

static void sw_capture_libbpf_output(void)
{
    libbpf_set_print(sw_print);
}
"""


def shared_header_cdef() -> str:
    """The shared header's cdef region, as cffi's parser accepts it."""
    text = (_HEADER_DIR / "shieldwall.h").read_text()
    region = text[text.index("/* cdef-begin */"):text.index("/* cdef-end */")]
    return re.sub(r"/\*.*?\*/", "", region, flags=re.S)


ffibuilder = FFI()
ffibuilder.cdef(LIBBPF_CDEF + shared_header_cdef())
ffibuilder.set_source(
    "shieldwall.kernel._libbpf",
    LIBBPF_SOURCE,
    libraries=["bpf"],
    include_dirs=[str(_HEADER_DIR)],
    extra_compile_args=["-Werror=incompatible-pointer-types"],
)
