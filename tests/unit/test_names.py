"""Interface and namespace names are names, never paths: the kernel's and iproute2's rules,
in the library and on the command line (before anything needs privilege)."""

from __future__ import annotations

import pytest

from shieldwall.kernel.names import BadName, check_ifname, check_netns_name
from shieldwall.kernel.netns import NamespaceError, check_name

from ..helpers import shieldwall


@pytest.mark.parametrize("name", ["eth0", "sw-srv0", "a", "x" * 15, "eth0.100", "é" * 7, "veth@1"])
def test_interface_names_the_kernel_accepts(name):
    assert check_ifname(name) == name


@pytest.mark.parametrize("name,why", [
    ("", "empty"),
    ("x" * 16, "16 bytes"),
    ("é" * 8, "16 bytes"),          # bytes count, not characters
    (".", "directories"),
    ("..", "directories"),
    ("../etc", "'/'"),
    ("a/b", "'/'"),
    ("eth0:1", "':'"),               # an alias label, never a device name
    ("a b", "white space"),
    ("a\tb", "white space"),
    ("a\nb", "white space"),
    ("a\xa0b", "white space"),       # the kernel's isspace() counts it
    ("a\0b", "NUL"),
])
def test_interface_names_the_kernel_refuses(name, why):
    with pytest.raises(BadName, match="is not an interface name") as refused:
        check_ifname(name)
    assert why in str(refused.value)


@pytest.mark.parametrize("name", ["sw-server", "a", "x" * 249, "with space", "a:b", "a.b"])
def test_namespace_names_iproute2_accepts(name):
    assert check_netns_name(name) == name == check_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/run/netns/x", "a\0b", "x" * 250])
def test_namespace_names_that_are_paths_or_too_long(name):
    with pytest.raises(BadName, match="is not a network namespace name"):
        check_netns_name(name)
    with pytest.raises(NamespaceError):
        check_name(name)


def test_a_long_name_is_quoted_short():
    with pytest.raises(BadName) as refused:
        check_ifname("x" * 5000)
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize("args,option", [
    (("up", "--allow-empty", "--iface", "../../etc"), "--iface"),
    (("down", "--iface", "a/b"), "--iface"),
    (("status", "--iface", "eth0:1"), "--iface"),
    (("reload", "--allow-empty", "--iface", "x" * 16), "--iface"),
    (("up", "--allow-empty", "--netns", "..", "--iface", "eth0"), "--netns"),
    (("status", "--netns", "a/b"), "--netns"),
])
def test_the_command_line_refuses_them(args, option):
    out = shieldwall(*args)
    assert out.returncode == 2
    assert f"argument {option}:" in out.stderr and "is not a" in out.stderr
    assert "Traceback" not in out.stderr
