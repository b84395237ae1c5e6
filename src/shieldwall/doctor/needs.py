"""What shieldwall asks of a kernel: the helpers and map types each of its programs
calls or declares (read from bpf/, and checked against it by a unit test), and the
kernel version that brought each feature it uses."""

from __future__ import annotations

# Helpers every program calls (lib/pipeline.h, lib/clock.h, lib/events.h): the chain
# itself, its clock, and the sampled events every verdict may become.
_TIMER = ("bpf_timer_init", "bpf_timer_set_callback", "bpf_timer_start")
_EVENTS = ("bpf_ringbuf_reserve", "bpf_ringbuf_submit", "bpf_ktime_get_ns",
           "bpf_get_smp_processor_id")
_CHAIN = ("bpf_map_lookup_elem", "bpf_tail_call", "bpf_ktime_get_coarse_ns") + _TIMER + _EVENTS
_SOCKETS = ("bpf_skc_lookup_tcp", "bpf_sk_lookup_udp", "bpf_sk_release")
_COOKIES = ("bpf_tcp_raw_gen_syncookie_ipv4", "bpf_tcp_raw_gen_syncookie_ipv6",
            "bpf_tcp_raw_check_syncookie_ipv4", "bpf_tcp_raw_check_syncookie_ipv6")

# Map types every program declares (lib/maps.h).
_MAPS = ("array", "hash", "percpu_array", "prog_array", "ringbuf")

# program -> (helpers, map types); "root" is the parser every packet enters.
PROGRAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "root": (_CHAIN, _MAPS),
    "fastpath": (_CHAIN, _MAPS),
    "protect": (_CHAIN, _MAPS),
    "policy": (_CHAIN + ("bpf_loop",), _MAPS),
    "limit": (_CHAIN + ("bpf_map_update_elem", "bpf_map_delete_elem"),
              _MAPS + ("lru_hash",)),
    "conntrack": (_CHAIN + ("bpf_map_update_elem",),
                  _MAPS + ("lru_hash",)),
    "reflection": (_CHAIN + ("bpf_map_update_elem", "bpf_skb_load_bytes"),
                   _MAPS + ("lru_hash",)),
    "icmp": (_CHAIN + _SOCKETS, _MAPS),
    "syn": (_CHAIN + ("bpf_map_update_elem", "bpf_get_prandom_u32", "bpf_loop")
            + _SOCKETS + _COOKIES,
            _MAPS + ("lru_hash",)),
}

# The context layer (lib/ctx.h): what every program may call through it, by the hook it
# is built for. The TC build of a stage uses the sk_buff counterparts.
CONTEXT_XDP = ("bpf_xdp_get_buff_len", "bpf_xdp_load_bytes", "bpf_xdp_adjust_tail")
CONTEXT_TC = ("bpf_skb_load_bytes", "bpf_skb_change_tail", "bpf_skb_pull_data",
              "bpf_csum_level", "bpf_redirect")

# Programs that cannot run without them: a kernel that lacks one runs no BPF mode.
CORE_PROGRAMS = ("root", "fastpath", "protect", "policy")

# Helpers that belong to one program type: each is probed on its own type only; the TC
# build of a stage uses the sk_buff counterpart.
XDP_ONLY = set(CONTEXT_XDP)
SKB_ONLY = set(CONTEXT_TC)
PROG_TYPES = ("xdp", "sched_cls")
# Types shieldwall never loads; libxdp's multi-program dispatcher needs `ext` (freplace).
OPTIONAL_PROG_TYPES = ("ext", "tracing", "lsm")
MAP_TYPES = ("hash", "array", "prog_array", "percpu_array", "lru_hash", "lpm_trie",
             "array_of_maps", "hash_of_maps", "ringbuf")


def helpers() -> list[str]:
    return sorted({h for hs, _ in PROGRAMS.values() for h in hs} | set(CONTEXT_XDP) | set(CONTEXT_TC))


def map_types() -> list[str]:
    return sorted({m for _, ms in PROGRAMS.values() for m in ms})


def helpers_for(prog_type: str) -> list[str]:
    skip = SKB_ONLY if prog_type == "xdp" else XDP_ONLY
    return [h for h in helpers() if h not in skip]


# helper -> the kernel release that brought it (include/uapi/linux/bpf.h history).
HELPER_SINCE: dict[str, tuple[int, int]] = {
    "bpf_map_lookup_elem": (3, 18), "bpf_map_update_elem": (3, 18), "bpf_map_delete_elem": (3, 18),
    "bpf_get_prandom_u32": (4, 1), "bpf_ktime_get_ns": (4, 1), "bpf_get_smp_processor_id": (4, 1),
    "bpf_ringbuf_reserve": (5, 8), "bpf_ringbuf_submit": (5, 8), "bpf_tail_call": (4, 2), "bpf_skb_load_bytes": (4, 5),
    "bpf_xdp_adjust_tail": (4, 18), "bpf_redirect": (4, 4), "bpf_skb_change_tail": (4, 9),
    "bpf_skb_pull_data": (4, 9), "bpf_csum_level": (5, 8), "bpf_sk_lookup_udp": (4, 20), "bpf_sk_release": (4, 20),
    "bpf_skc_lookup_tcp": (5, 2), "bpf_ktime_get_coarse_ns": (5, 11),
    "bpf_timer_init": (5, 15), "bpf_timer_set_callback": (5, 15), "bpf_timer_start": (5, 15),
    "bpf_loop": (5, 17), "bpf_xdp_get_buff_len": (5, 18), "bpf_xdp_load_bytes": (5, 18),
    "bpf_tcp_raw_gen_syncookie_ipv4": (6, 0), "bpf_tcp_raw_gen_syncookie_ipv6": (6, 0),
    "bpf_tcp_raw_check_syncookie_ipv4": (6, 0), "bpf_tcp_raw_check_syncookie_ipv6": (6, 0),
}


# Kernel features by version: name -> (since, what shieldwall does with it, what is lost
# without it, the modes that cannot run without it).
FEATURES: dict[str, tuple[tuple[int, int], str, str, tuple[str, ...]]] = {
    "xdp_link": ((5, 9), "XDP attached through a pinned bpf_link that outlives the process",
                 "attach falls back to netlink: protection still outlives the process, but "
                 "another tool can replace the program without noticing shieldwall", ()),
    "memcg_accounting": ((5, 11), "BPF memory charged to the cgroup, no RLIMIT_MEMLOCK",
                         "maps count against RLIMIT_MEMLOCK: large sets fail to load unless "
                         "the limit is raised before shieldwall starts", ()),
    "coarse_clock": ((5, 11), "bpf_ktime_get_coarse_ns, the stages' cheap clock",
                     "no stage loads: every program reads the coarse clock", ("native", "generic", "tc")),
    "bpf_timer": ((5, 15), "bpf_timer keeps the stages' clock ticking",
                  "the policy, limit, conntrack, reflection, icmp and syn stages do not load",
                  ("native", "generic", "tc")),
    "bpf_loop": ((5, 17), "bpf_loop walks rule lists and TCP options in bounded steps",
                 "the policy and syn stages do not load", ("native", "generic", "tc")),
    "xdp_frags": ((5, 18), "programs declared xdp.frags (multi-buffer) and bpf_xdp_get_buff_len",
                  "the kernel refuses programs flagged for frags: no XDP program of "
                  "shieldwall loads", ("native", "generic")),
    "xdp_ct_lookup": ((5, 19), "bpf_xdp_ct_lookup, a conntrack lookup from XDP (kfunc)",
                      "nothing today: conntrack keeps its own table; the kfunc would let it "
                      "consult the kernel's", ()),
    "syn_cookies": ((6, 0), "bpf_tcp_raw_gen/check_syncookie_*: SYN cookies answered from XDP",
                    "the syn stage does not load: SYN floods reach the stack's own cookies "
                    "(or nftables synproxy in nft mode)", ()),
    "xdp_features": ((6, 3), "the netdev xdp-features attribute says what the driver supports",
                     "the doctor falls back to its driver table", ()),
    "tcx": ((6, 6), "tcx bpf_links at TC ingress and egress",
            "tc mode cannot attach, and the conntrack and reflection stages lose their egress "
            "side (rules that read `state`)", ("tc",)),
}

# The version that brought XDP to a bond device (attached to every slave).
BOND_XDP_SINCE = (5, 15)
