"""Objects, programs, maps and links over libbpf, with typed keys and values.

Key and value types are cffi type names ("struct sw_pkt", "__u32") from the shared header,
so their layouts are the compiler's, not ours.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ._libbpf import ffi, lib
from .errors import BpfError, VerifierError

MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PROG_ARRAY = 3
MAP_TYPE_PERCPU_HASH = 5
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LPM_TRIE = 11
MAP_TYPE_ARRAY_OF_MAPS = 12
MAP_TYPE_HASH_OF_MAPS = 13
MAP_TYPE_RINGBUF = 27
MAP_F_NO_PREALLOC = 1
MAP_F_INNER_MAP = 1 << 12  # an inner array map of any size
MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_TYPES = {MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH}
_FD_VALUE_TYPES = {MAP_TYPE_PROG_ARRAY, MAP_TYPE_ARRAY_OF_MAPS, MAP_TYPE_HASH_OF_MAPS}


# libbpf prints through one process-wide callback; collect per thread while a call that
# may fail (open, load) runs, so its error carries the log.
_capture = threading.local()


@ffi.def_extern()
def sw_libbpf_message(level: int, msg: Any) -> None:
    buf = getattr(_capture, "lines", None)
    if buf is not None:
        buf.append(ffi.string(msg).decode(errors="replace"))


lib.sw_capture_libbpf_output()


class _CapturedLog:
    def __enter__(self) -> "_CapturedLog":
        _capture.lines = []
        return self

    def __exit__(self, *exc: object) -> None:
        self.text = "".join(_capture.lines)
        _capture.lines = None


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise BpfError(-ret, what)
    return ret


def _check_ptr(ptr: Any, what: str) -> Any:
    if ptr == ffi.NULL:
        raise BpfError(ffi.errno, what)
    return ptr


def possible_cpus() -> int:
    """How many per-CPU slots the kernel uses: the possible CPUs, not the online ones."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class Map:
    """A kernel map with typed keys and values (cffi type names)."""

    def __init__(self, fd: int, name: str, key_type: str, value_type: str, map_type: int,
                 max_entries: int, owned: bool = False):
        self.fd = fd
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.map_type = map_type
        self.max_entries = max_entries
        self._owned = owned
        # Per-CPU maps hold a list of values, one per CPU, even on a single CPU; the
        # kernel lays them out 8 bytes apart at least, whatever the value's own size.
        self.percpu = map_type in PERCPU_TYPES
        self.ncpus = possible_cpus() if self.percpu else 1
        size = ffi.sizeof(value_type) if map_type not in _FD_VALUE_TYPES else 4
        self.stride = (size + 7) & ~7 if self.percpu else size

    # -- construction -----------------------------------------------------------------
    @classmethod
    def create(cls, map_type: int, name: str, key_type: str, value_type: str,
               max_entries: int, flags: int = 0, inner_fd: int = 0) -> "Map":
        opts = ffi.new("struct bpf_map_create_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_create_opts")
        opts.map_flags = flags
        opts.inner_map_fd = inner_fd
        value_size = 4 if map_type in (MAP_TYPE_ARRAY_OF_MAPS, MAP_TYPE_HASH_OF_MAPS) \
            else ffi.sizeof(value_type)
        fd = _check(lib.bpf_map_create(map_type, name.encode()[:15], ffi.sizeof(key_type),
                                       value_size, max_entries, opts), f"creating map {name}")
        return cls(fd, name, key_type, value_type, map_type, max_entries, owned=True)

    @classmethod
    def open_pinned(cls, path: str | Path, key_type: str, value_type: str) -> "Map":
        fd = _check(lib.bpf_obj_get(str(path).encode()), f"opening pinned map {path}")
        return cls._from_fd(fd, key_type, value_type)

    @classmethod
    def _from_fd(cls, fd: int, key_type: str, value_type: str) -> "Map":
        info = map_info(fd)
        return cls(fd, info.name, key_type, value_type, info.type, info.max_entries, owned=True)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- pins -------------------------------------------------------------------------
    def pin(self, path: str | Path) -> None:
        _check(lib.bpf_obj_pin(self.fd, str(path).encode()), f"pinning map {self.name} at {path}")

    # -- single elements -------------------------------------------------------------
    def _key(self, key: Any) -> Any:
        if isinstance(key, bytes):  # laid out as the key type already
            if len(key) != ffi.sizeof(self.key_type):
                raise ValueError(f"a key of map {self.name} is {ffi.sizeof(self.key_type)} bytes")
            return ffi.from_buffer(f"{self.key_type} *", key)
        if isinstance(key, ffi.CData) and ffi.typeof(key) is ffi.typeof(f"{self.key_type} *"):
            return key  # as lookup_batch and keys() hand them out
        return ffi.new(f"{self.key_type} *", key)

    def _value_buf(self, count: int = 1) -> Any:
        return ffi.new("char[]", count * self.ncpus * self.stride)

    def _cells(self, buf: Any, element: int = 0) -> list[Any]:
        """The values of one element (one per CPU) from a buffer of the kernel's layout."""
        base = element * self.ncpus * self.stride
        return [self._own(self.value_type, ffi.cast(f"{self.value_type} *", buf + base + i * self.stride)[0])
                for i in range(self.ncpus)]

    def _value_in(self, value: Any) -> Any:
        if self.percpu:
            values = list(value) if isinstance(value, (list, tuple)) else [value] * self.ncpus
            buf = self._value_buf()
            for i, v in enumerate(values):
                cell = ffi.new(f"{self.value_type} *", v)
                ffi.memmove(buf + i * self.stride, cell, ffi.sizeof(self.value_type))
            return buf
        return ffi.new(f"{self.value_type} *", value)

    @staticmethod
    def _own(ctype: str, cell: Any) -> Any:
        """A copy that owns its memory: cffi's items and slices of an array do not keep
        the array alive, so a struct read into a temporary buffer must be copied out."""
        if isinstance(cell, (int, float)):
            return cell
        return ffi.new(f"{ctype} *", cell)

    def lookup(self, key: Any) -> Any:
        """The value (a cffi object), a list per CPU for per-CPU maps, or None."""
        buf = self._value_buf()
        ret = lib.bpf_map_lookup_elem(self.fd, self._key(key), buf)
        if ret < 0:
            if -ret == 2:  # ENOENT: not there is an answer, not an error
                return None
            raise BpfError(-ret, f"looking up in map {self.name}")
        cells = self._cells(buf)
        return cells if self.percpu else cells[0]

    def update(self, key: Any, value: Any, flags: int = 0) -> None:
        _check(lib.bpf_map_update_elem(self.fd, self._key(key), self._value_in(value), flags),
               f"updating map {self.name}")

    def update_raw(self, key: int, value: bytes) -> None:
        """One u32-keyed element from raw bytes of the map's whole value size (tables)."""
        _check(lib.bpf_map_update_elem(self.fd, ffi.new("__u32 *", key), ffi.from_buffer(value), 0),
               f"updating map {self.name}")

    def lookup_raw(self, key: int) -> bytes | None:
        """The raw bytes of a u32-keyed element (value_size from the kernel)."""
        size = map_info(self.fd).value_size
        buf = ffi.new("char[]", size)
        ret = lib.bpf_map_lookup_elem(self.fd, ffi.new("__u32 *", key), buf)
        if ret < 0:
            if -ret == 2:
                return None
            raise BpfError(-ret, f"looking up in map {self.name}")
        return bytes(ffi.buffer(buf, size))

    def set_fd(self, key: int, fd: int) -> None:
        """Stores a program or map fd (prog arrays, map-of-maps): the swap is atomic."""
        _check(lib.bpf_map_update_elem(self.fd, ffi.new("__u32 *", key),
                                       ffi.new("__u32 *", fd), 0),
               f"setting slot {key} of map {self.name}")

    def delete(self, key: Any, missing_ok: bool = True) -> None:
        ret = lib.bpf_map_delete_elem(self.fd, self._key(key))
        if ret < 0 and not (missing_ok and -ret == 2):
            raise BpfError(-ret, f"deleting from map {self.name}")

    def keys(self) -> Iterator[Any]:
        cur = ffi.NULL
        nxt = ffi.new(f"{self.key_type} *")
        while lib.bpf_map_get_next_key(self.fd, cur, nxt) == 0:
            yield self._own(self.key_type, nxt[0])
            cur = ffi.new(f"{self.key_type} *", nxt[0])

    def items(self) -> Iterator[tuple[Any, Any]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    # -- batches ------------------------------------------------------------------------
    def update_batch(self, keys: list[Any] | bytes, values: list[Any] | bytes, flags: int = 0) -> int:
        """Writes many elements in one syscall; returns how many were written.

        keys and values are lists of elements, or bytes laid out as C arrays of the key
        and value types (for a million elements, building cdata one by one is the slow
        part). Only bytes can fill a per-CPU map: one value per CPU, element after element,
        each `stride` bytes apart.
        """
        if not keys:
            return 0
        if isinstance(keys, (bytes, bytearray, memoryview)):
            n = len(keys) // ffi.sizeof(self.key_type)
            if len(values) != n * self.stride * self.ncpus:
                raise ValueError(f"{n} keys but {len(values)} bytes of values for map {self.name}")
            kbuf, vbuf = ffi.from_buffer(keys), ffi.from_buffer(values)
        elif self.percpu:
            raise ValueError("batch updates of per-CPU maps take one value per CPU, as bytes")
        else:
            n = len(keys)
            kbuf = ffi.new(f"{self.key_type}[]", keys)
            vbuf = ffi.new(f"{self.value_type}[]", values)
        count = ffi.new("__u32 *", n)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts"),
                                                        "elem_flags": flags})
        ret = lib.bpf_map_update_batch(self.fd, kbuf, vbuf, count, opts)
        if ret < 0:
            raise BpfError(-ret, f"batch update of map {self.name} ({count[0]} of {n} written)")
        return count[0]

    def lookup_batch(self, chunk: int = 4096) -> list[tuple[Any, Any]]:
        """All elements, read in chunks (hash and array maps)."""
        out: list[tuple[Any, Any]] = []
        in_batch = ffi.NULL
        out_batch = ffi.new(f"{self.key_type} *")
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        while True:
            kbuf = ffi.new(f"{self.key_type}[{chunk}]")
            vbuf = self._value_buf(chunk)
            count = ffi.new("__u32 *", chunk)
            ret = lib.bpf_map_lookup_batch(self.fd, in_batch, out_batch, kbuf, vbuf, count, opts)
            if ret < 0 and -ret != 2:
                raise BpfError(-ret, f"batch lookup of map {self.name}")
            for i in range(count[0]):
                cells = self._cells(vbuf, i)
                out.append((self._own(self.key_type, kbuf[i]),
                            cells if self.percpu else cells[0]))
            if ret < 0:  # ENOENT: that was the last chunk
                return out
            in_batch = ffi.new(f"{self.key_type} *", out_batch[0])

    def delete_batch(self, keys: list[Any]) -> int:
        if not keys:
            return 0
        if all(isinstance(k, bytes) for k in keys):
            kbuf = ffi.from_buffer(f"{self.key_type}[]", b"".join(keys))
        else:
            kbuf = ffi.new(f"{self.key_type}[]", keys)
        count = ffi.new("__u32 *", len(keys))
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        _check(lib.bpf_map_delete_batch(self.fd, kbuf, count, opts), f"batch delete from map {self.name}")
        return count[0]


@dataclass
class Program:
    fd: int
    name: str

    def pin(self, path: str | Path) -> None:
        _check(lib.bpf_obj_pin(self.fd, str(path).encode()), f"pinning program {self.name} at {path}")

    @property
    def id(self) -> int:
        return prog_info(self.fd).id


class BpfObject:
    """One compiled .bpf.o: open, size and share its maps, load, then use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise BpfError(2, f"BPF object {self.path} not found",
                           "build it with `make build` (the objects are compiled from bpf/)")
        with _CapturedLog() as log:
            obj = lib.bpf_object__open_file(str(self.path).encode(), ffi.NULL)
        if obj == ffi.NULL:
            raise BpfError(ffi.errno, f"opening BPF object {self.path}", log.text.strip())
        self._obj = obj
        self.loaded = False
        self._types: dict[str, tuple[str, str]] = {}

    def close(self) -> None:
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raw_map(self, name: str) -> Any:
        m = lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if m == ffi.NULL:
            raise _mismatch(self.path, f"map {name}")
        return m

    def map_names(self) -> list[str]:
        names, m = [], lib.bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            names.append(ffi.string(lib.bpf_map__name(m)).decode())
            m = lib.bpf_object__next_map(self._obj, m)
        return names

    def declare(self, name: str, key_type: str, value_type: str) -> None:
        """Names the C types of a map so map() returns it typed; sizes are checked."""
        m = self._raw_map(name)
        ksz, vsz = lib.bpf_map__key_size(m), lib.bpf_map__value_size(m)
        if lib.bpf_map__type(m) not in (MAP_TYPE_PROG_ARRAY, MAP_TYPE_ARRAY_OF_MAPS,
                                         MAP_TYPE_HASH_OF_MAPS, MAP_TYPE_RINGBUF):
            if ffi.sizeof(key_type) != ksz or ffi.sizeof(value_type) != vsz:
                raise BpfError(22, f"map {name} of {self.path.name} has key/value sizes "
                                   f"{ksz}/{vsz}, not those of {key_type}/{value_type}")
        self._types[name] = (key_type, value_type)

    # -- before load ------------------------------------------------------------------
    def set_max_entries(self, name: str, n: int) -> None:
        _check(lib.bpf_map__set_max_entries(self._raw_map(name), n), f"sizing map {name}")

    def reuse_map(self, name: str, fd: int) -> None:
        """Makes this object use an existing map (a shared or pinned one) instead of its own."""
        _check(lib.bpf_map__reuse_fd(self._raw_map(name), fd), f"reusing map {name}")

    def set_value_size(self, name: str, size: int) -> None:
        """The value size of a map declared without a value type (a table)."""
        _check(lib.bpf_map__set_value_size(self._raw_map(name), size), f"sizing the values of map {name}")

    def set_rodata(self, section: str, data: bytes) -> None:
        """The initial contents of a read-only data section (".rodata.sw"): frozen at
        load, so the verifier treats what the program reads from it as constants."""
        m = lib.bpf_object__find_map_by_name(self._obj, section.encode())
        if m == ffi.NULL:
            raise _mismatch(self.path, f"section {section}")
        have = ffi.new("size_t *")
        lib.bpf_map__initial_value(m, have)
        if have[0] != len(data):
            raise BpfError(22, f"{section} of {self.path.name} holds {have[0]} bytes, "
                               f"not the {len(data)} of the layout written to it")
        _check(lib.bpf_map__set_initial_value(m, data, len(data)), f"setting {section} of {self.path.name}")

    def set_inner_map(self, name: str, fd: int) -> None:
        _check(lib.bpf_map__set_inner_map_fd(self._raw_map(name), fd), f"inner map of {name}")

    def load(self) -> None:
        with _CapturedLog() as log:
            ret = lib.bpf_object__load(self._obj)
        if ret < 0:
            text = log.text
            # libbpf frames the kernel's verifier log with this marker.
            if "BEGIN PROG LOAD LOG" in text:
                raise VerifierError(-ret, f"the verifier rejected {self.path.name}", text)
            raise BpfError(-ret, f"loading {self.path.name}", text.strip()[-3000:])
        self.loaded = True

    # -- after load -----------------------------------------------------------------
    def program(self, name: str) -> Program:
        p = lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if p == ffi.NULL:
            raise _mismatch(self.path, f"program {name}")
        return Program(lib.bpf_program__fd(p), name)

    def map(self, name: str) -> Map:
        m = self._raw_map(name)
        key_type, value_type = self._types.get(name, ("__u32", "__u32"))
        return Map(lib.bpf_map__fd(m), name, key_type, value_type, lib.bpf_map__type(m),
                   lib.bpf_map__max_entries(m))


def _mismatch(path: Path, what: str) -> BpfError:
    return BpfError(2, f"{path.name} has no {what}",
                    "the BPF objects do not match this version of shieldwall: rebuild them "
                    "(make build) or reinstall the package")


def obj_get(path: str | Path) -> int:
    return _check(lib.bpf_obj_get(str(path).encode()), f"opening pin {path}")


def xdp_link_create(prog_fd: int, ifindex: int, mode_flags: int) -> int:
    """An XDP bpf_link (an fd): it detaches when its last holder, fd or pin, goes away."""
    opts = ffi.new("struct bpf_link_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_link_create_opts")
    opts.flags = mode_flags
    return _check(lib.bpf_link_create(prog_fd, ifindex, lib.BPF_XDP, opts),
                  f"attaching XDP to ifindex {ifindex} with a bpf_link")


# enum bpf_attach_type of kernel 6.6 and later (the build host's uapi header may be older).
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
# enum bpf_link_type
LINK_TYPE_XDP = 6
LINK_TYPE_TCX = 11


def tcx_link_create(prog_fd: int, ifindex: int, ingress: bool, needed_by: str) -> int:
    """A TC bpf_link (tcx, kernel 6.6+), after any programs already on that side: it
    detaches when its last holder, fd or pin, goes away, and touches no other program
    or qdisc on the interface. `needed_by`: what needs it, for the error's hint."""
    side = "ingress" if ingress else "egress"
    opts = ffi.new("struct bpf_link_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_link_create_opts")
    ret = lib.bpf_link_create(prog_fd, ifindex, BPF_TCX_INGRESS if ingress else BPF_TCX_EGRESS, opts)
    if ret < 0:
        # A kernel before 6.6 knows no such attach type: it says EINVAL.
        hint = (f"tcx links need kernel 6.6 or later (this one is {os.uname().release}); "
                f"{needed_by} need them") if -ret == errno.EINVAL else ""
        raise BpfError(-ret, f"attaching a TC {side} program to ifindex {ifindex} with a tcx "
                             "bpf_link", hint)
    return ret


def tcx_egress_link_create(prog_fd: int, ifindex: int) -> int:
    return tcx_link_create(prog_fd, ifindex, False, "rules that read `state`")


def tcx_programs(ifindex: int, ingress: bool, room: int = 64) -> list[int]:
    """Ids of the programs on one side of the interface's tcx hook, in the order they run."""
    ids = ffi.new("__u32[]", room)
    count = ffi.new("__u32 *", room)
    side = "ingress" if ingress else "egress"
    _check(lib.bpf_prog_query(ifindex, BPF_TCX_INGRESS if ingress else BPF_TCX_EGRESS, 0,
                              ffi.NULL, ids, count),
           f"querying the TC {side} programs of ifindex {ifindex}")
    return [ids[i] for i in range(count[0])]


def tcx_egress_programs(ifindex: int, room: int = 64) -> list[int]:
    return tcx_programs(ifindex, False, room)


def pin_fd(fd: int, path: str | Path) -> None:
    _check(lib.bpf_obj_pin(fd, str(path).encode()), f"pinning at {path}")


def link_detach(fd: int) -> None:
    _check(lib.bpf_link_detach(fd), "detaching link")


def detach_pinned(path: str | Path) -> None:
    """Detaches a pinned link now, even while a process still holds an fd of it; one
    whose interface or attachment is already gone is fine. The pin stays."""
    fd = obj_get(path)
    try:
        link_detach(fd)
    except BpfError as exc:
        if exc.errno not in (errno.ENOLINK, errno.ENODEV, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def link_update(fd: int, new_prog_fd: int, expected_fd: int | None = None) -> None:
    """Swaps the link's program in one step. With expected_fd the kernel refuses (EPERM)
    unless the link still runs that program: a compare-and-swap."""
    opts = ffi.NULL
    if expected_fd is not None:
        opts = ffi.new("struct bpf_link_update_opts *")
        opts.sz = ffi.sizeof("struct bpf_link_update_opts")
        opts.flags = lib.BPF_F_REPLACE
        opts.old_prog_fd = expected_fd
    _check(lib.bpf_link_update(fd, new_prog_fd, opts), "replacing the program of a link")


def link_info(fd: int) -> Any:
    info = ffi.new("struct bpf_link_info *")
    size = ffi.new("__u32 *", ffi.sizeof("struct bpf_link_info"))
    _check(lib.bpf_obj_get_info_by_fd(fd, info, size), "reading link info")
    return _Info(id=info.id, type=info.type, prog_id=info.prog_id)


def prog_info(fd: int) -> Any:
    info = ffi.new("struct bpf_prog_info *")
    size = ffi.new("__u32 *", ffi.sizeof("struct bpf_prog_info"))
    _check(lib.bpf_obj_get_info_by_fd(fd, info, size), "reading program info")
    return _Info(id=info.id, type=info.type, name=ffi.string(info.name).decode())


def map_info(fd: int) -> Any:
    info = ffi.new("struct bpf_map_info *")
    size = ffi.new("__u32 *", ffi.sizeof("struct bpf_map_info"))
    _check(lib.bpf_obj_get_info_by_fd(fd, info, size), "reading map info")
    return _Info(id=info.id, type=info.type, name=ffi.string(info.name).decode(),
                 max_entries=info.max_entries, value_size=info.value_size)


class _Info(dict):
    __getattr__ = dict.__getitem__


class RingBuffer:
    """Consumes a BPF ring buffer; `callback(bytes)` runs for every record."""

    def __init__(self, map_fd: int, callback: Callable[[bytes], None]):
        self._handle = ffi.new_handle(callback)
        self._rb = _check_ptr(lib.ring_buffer__new(map_fd, lib.sw_ringbuf_sample, self._handle,
                                                   ffi.NULL), "opening ring buffer")

    def poll(self, timeout_ms: int = 100) -> int:
        ret = lib.ring_buffer__poll(self._rb, timeout_ms)
        if ret == -errno.EINTR:  # a signal (the daemon's SIGHUP): nothing read, not a fault
            return 0
        return _check(ret, "polling ring buffer")

    def consume(self) -> int:
        return _check(lib.ring_buffer__consume(self._rb), "consuming ring buffer")

    def close(self) -> None:
        if self._rb is not None:
            lib.ring_buffer__free(self._rb)
            self._rb = None


@ffi.def_extern()
def sw_ringbuf_sample(ctx: Any, data: Any, size: int) -> int:
    ffi.from_handle(ctx)(bytes(ffi.buffer(data, size)))
    return 0


# -- feature probes (libbpf's probe API) ------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """A probe's answer: supported or not, and the errno the kernel gave when not (EPERM
    for a type the kernel has but refuses, EINVAL for one it does not know)."""
    supported: bool
    errno: int = 0


def _probe(call: Callable[[], int]) -> Probe:
    ffi.errno = 0
    ret = call()
    err = ffi.errno
    if ret == 1:
        return Probe(True)
    return Probe(False, -ret if ret < 0 else err)


def _enum(prefix: str, name: str) -> int:
    value = getattr(lib, prefix + name, None)
    if value is None:
        raise ValueError(f"no {prefix}{name} in this build of shieldwall's binding")
    return value


def probe_prog_type(name: str) -> Probe:
    """Whether the kernel loads programs of this type ("xdp", "sched_cls", "ext", …)."""
    t = _enum("BPF_PROG_TYPE_", name.upper())
    return _probe(lambda: lib.libbpf_probe_bpf_prog_type(t, ffi.NULL))


def probe_map_type(name: str) -> Probe:
    """Whether the kernel creates maps of this type ("lru_hash", "ringbuf", …)."""
    t = _enum("BPF_MAP_TYPE_", name.upper())
    return _probe(lambda: lib.libbpf_probe_bpf_map_type(t, ffi.NULL))


def probe_helper(prog_type: str, helper: str) -> Probe:
    """Whether programs of `prog_type` may call `helper` ("bpf_loop", …) on this kernel."""
    t = _enum("BPF_PROG_TYPE_", prog_type.upper())
    h = _enum("BPF_FUNC_", helper.removeprefix("bpf_"))
    found = _probe(lambda: lib.libbpf_probe_bpf_helper(t, h, ffi.NULL))
    return _helper_refused(t, h) if found.supported else found


# What verifiers say of a helper a program may not call. libbpf 1.1's probe knows only
# the first two: newer kernels say the third, which it counts as "supported".
_NO_HELPER = ("invalid func ", "unknown func ", "program of this type cannot use helper ")


def _helper_refused(prog_type: int, helper_id: int) -> Probe:
    """The helper probe again, reading the verifier's reason: a call with no arguments
    set up is always rejected, and only the wording says whether the helper was known."""
    insns = ffi.new("struct bpf_insn[2]")
    insns[0].code, insns[0].imm = 0x85, helper_id  # BPF_JMP | BPF_CALL
    insns[1].code = 0x95                           # BPF_JMP | BPF_EXIT
    log = ffi.new("char[]", 4096)
    opts = ffi.new("struct bpf_prog_load_opts *")
    opts.sz = ffi.sizeof("struct bpf_prog_load_opts")
    opts.log_buf, opts.log_size, opts.log_level = log, 4096, 1
    fd = lib.bpf_prog_load(prog_type, ffi.NULL, b"GPL", insns, 2, opts)
    if fd >= 0:  # cannot happen with uninitialized arguments; take it as a yes
        os.close(fd)
        return Probe(True)
    text = ffi.string(log).decode(errors="replace")
    if any(phrase in text for phrase in _NO_HELPER):
        return Probe(False, errno.EINVAL)
    return Probe(True)


def prog_name_by_id(prog_id: int) -> str | None:
    """The name of a loaded program (any owner's), or None if it is gone."""
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        return prog_info(fd).name
    finally:
        os.close(fd)

