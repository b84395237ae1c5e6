"""The libbpf binding against the real kernel: maps, batches, pins, map-of-maps swaps,
ring buffers, and errors that carry errno and a readable message."""

from __future__ import annotations

import errno
import struct

import pytest

from shieldwall import abi
from shieldwall.dataplane import bpffs
from shieldwall.kernel import libbpf
from shieldwall.kernel.errors import BpfError
from shieldwall.kernel.libbpf import BpfObject, Map
from shieldwall.kernel.testrun import prog_test_run
from shieldwall.paths import object_path

pytestmark = pytest.mark.kernel

PACKET = b"\x02" * 12 + b"\x88\xb5" + b"\x00" * 50


@pytest.fixture()
def selftest():
    obj = BpfObject(object_path("selftest"))
    inner = Map.create(libbpf.MAP_TYPE_ARRAY, "st_inner", "__u32", "__u32", 1)
    obj.set_inner_map("st_outer", inner.fd)
    obj.load()
    yield obj, inner
    inner.close()
    obj.close()


def test_map_of_maps_swap_changes_verdict_atomically(selftest):
    obj, first = selftest
    outer = obj.map("st_outer")
    prog = obj.program("st_verdict_from_inner")
    first.update(0, 1)  # XDP_DROP
    outer.set_fd(0, first.fd)
    assert prog_test_run(prog.fd, PACKET).retval == 1
    second = Map.create(libbpf.MAP_TYPE_ARRAY, "st_inner2", "__u32", "__u32", 1)
    second.update(0, 2)  # XDP_PASS
    outer.set_fd(0, second.fd)
    assert prog_test_run(prog.fd, PACKET).retval == 2
    second.close()


def test_ring_buffer_delivers_records(selftest):
    obj, _ = selftest
    got: list[int] = []
    rb = libbpf.RingBuffer(obj.map("st_events").fd, lambda data: got.append(struct.unpack("I", data)[0]))
    try:
        for size in (60, 61, 200):
            prog_test_run(obj.program("st_report_length").fd, PACKET[:14] + b"\x00" * (size - 14))
        rb.poll(100)
    finally:
        rb.close()
    assert got == [60, 61, 200]


def test_batch_update_and_lookup_of_a_hash_map():
    m = Map.create(libbpf.MAP_TYPE_HASH, "st_hash", "__u32", "__u64", 10_000)
    try:
        assert m.update_batch(list(range(5000)), [k * 3 for k in range(5000)]) == 5000
        items = dict((int(k), int(v)) for k, v in m.lookup_batch(chunk=512))
        assert len(items) == 5000 and items[4999] == 14997
        assert m.delete_batch(list(range(100))) == 100
        assert m.lookup(50) is None and m.lookup(150) == 450
    finally:
        m.close()


def test_pin_reuse_and_unpin():
    pin = bpffs.ensure_bpffs() / "shieldwall-test-pin"
    m = Map.create(libbpf.MAP_TYPE_PERCPU_ARRAY, "sw_counters", "__u32", "struct sw_counter",
                   abi.SW_ACT_MAX * abi.SW_R_MAX)
    try:
        m.pin(pin)
        again = Map.open_pinned(pin, "__u32", "struct sw_counter")
        # A freshly loaded object told to reuse the pinned map counts into it.
        with BpfObject(object_path("root")) as obj:
            obj.reuse_map("sw_counters", again.fd)
            obj.load()
            assert libbpf.map_info(obj.map("sw_counters").fd).id == libbpf.map_info(m.fd).id
            frame = bytes(PACKET[:12]) + b"\x08\x00" + bytes([0x45, 0, 0, 20]) + bytes(16)
            assert prog_test_run(obj.program("sw_root").fd, frame).retval == abi.SW_ACT_PASS
        cell = abi.SW_ACT_PASS * abi.SW_R_MAX + abi.SW_R_END_OF_CHAIN
        assert sum(c.packets for c in m.lookup(cell)) == 1
        again.close()
    finally:
        pin.unlink(missing_ok=True)
        m.close()
    assert not pin.exists()


def test_errors_carry_errno_and_message():
    with pytest.raises(BpfError) as info:
        Map.open_pinned(bpffs.root() / "shieldwall-does-not-exist", "__u32", "__u32")
    assert info.value.errno == errno.ENOENT
    assert "opening pinned map" in str(info.value) and "No such file" in str(info.value)
    with pytest.raises(BpfError) as info:
        Map.create(libbpf.MAP_TYPE_ARRAY, "st_bad", "__u32", "__u32", 0)
    assert info.value.errno == errno.EINVAL


def test_declared_types_must_match_the_object():
    with BpfObject(object_path("root")) as obj, pytest.raises(BpfError, match="key/value sizes"):
        obj.declare("sw_scratch", "__u32", "struct sw_counter")


def test_batches_of_bytes_fill_per_cpu_maps_and_values_outlive_their_buffers():
    m = Map.create(libbpf.MAP_TYPE_PERCPU_ARRAY, "t_percpu", "__u32", "struct sw_counter", 40)
    try:
        keys = struct.pack("40I", *range(40))
        values = b"".join(struct.pack("QQ", k, cpu) for k in range(40) for cpu in range(m.ncpus))
        assert m.update_batch(keys, values) == 40
        with pytest.raises(ValueError):
            m.update_batch(keys, values[:-1])
        # Read in chunks: each chunk's buffer is gone before the values are looked at.
        cells = dict(m.lookup_batch(chunk=16))
        assert [c.packets for c in cells[33]] == [33] * m.ncpus
        assert [c.bytes for c in m.lookup(39)] == list(range(m.ncpus))
    finally:
        m.close()


def test_map_size_is_set_before_load():
    with BpfObject(object_path("fastpath")) as obj:
        obj.set_max_entries("sw_fp_tab", 1234)
        obj.load()
        assert libbpf.map_info(obj.map("sw_fp_tab").fd).max_entries == 1234
