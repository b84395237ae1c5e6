"""Loading and validating policy files: the schema, every kind of bad input, set files."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from shieldwall.policy import (
    ACTIONS,
    ActionKind,
    Capacity,
    Family,
    Fragment,
    Item,
    PolicyError,
    Range,
    load_policy,
    parse_policy,
    parse_policy_text,
    register_action,
)
from shieldwall.policy.model import TCP_FLAG_BITS
from shieldwall.policy.sets import read_set_file
from shieldwall.stages import policy_keys

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEADER = "version: 1\ndefault_action: pass\n"


def load(text: str, base_dir: Path | str = ".", capacity: Capacity = Capacity()):
    return parse_policy_text(textwrap.dedent(text), "policy.yaml", base_dir, capacity)


def rules(body: str) -> str:
    return HEADER + "rules:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def one_rule_match(match: str, action: str = "drop") -> str:
    return rules(f"- name: r\n  match: {match}\n  action: {action}\n")


def errors(text: str, base_dir: Path | str = ".", capacity: Capacity = Capacity()) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(text, base_dir, capacity)
    return [str(issue) for issue in caught.value.issues]


def error(text: str, base_dir: Path | str = ".", capacity: Capacity = Capacity()) -> str:
    found = errors(text, base_dir, capacity)
    assert len(found) == 1, found
    return found[0]


# --- the issue's example and the shipped examples -------------------------------------

ISSUE_EXAMPLE = """\
version: 1
default_action: pass
sets:
  blocklist:
    type: prefix
    entries: [198.51.100.0/24, "2001:db8:bad::/48"]
    files: [lists/bad.txt]
  relays:
    type: prefix
    files: [cached-consensus]
rules:
  - name: allow-admin
    match: {src: [203.0.113.7], proto: tcp, dport: 22}
    action: pass
  - name: drop-blocklisted
    match: {src: "@blocklist"}
    action: drop
  - name: web-only
    match: {dst: [192.0.2.10], proto: tcp, dport: ["!80", "!443"]}
    action: drop
  - name: watch-big-dns
    match: {proto: udp, sport: 53, length: "512-"}
    action: count
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "bad.txt").write_text(
        "# known bad\n203.0.113.64/26\n\n2001:db8:bad:1::/64  # inline comment\n"
    )
    (tmp_path / "cached-consensus").write_text((EXAMPLES / "cached-consensus").read_text())
    (tmp_path / "policy.yaml").write_text(ISSUE_EXAMPLE)
    return tmp_path


def test_issue_example_loads(policy_dir: Path) -> None:
    policy = load_policy(policy_dir / "policy.yaml")
    assert policy.version == 1
    assert policy.default_action == "pass"
    assert [r.name for r in policy.rules] == [
        "allow-admin", "drop-blocklisted", "web-only", "watch-big-dns"
    ]
    assert [r.id for r in policy.rules] == [1, 2, 3, 4]
    assert [r.action.name for r in policy.rules] == ["pass", "drop", "drop", "count"]
    assert [str(p) for p in policy.sets["blocklist"].prefixes] == [
        "198.51.100.0/24", "203.0.113.64/26", "2001:db8:bad::/48", "2001:db8:bad:1::/64"
    ]
    assert policy.sets["blocklist"].files == ("lists/bad.txt",)
    web = policy.rule("web-only").match
    assert web.dst.items == (Item(ipaddress.ip_network("192.0.2.10/32")),)
    assert web.proto.items == (Item(Range(6, 6)),)
    assert web.dport.items == (Item(Range(80, 80), True), Item(Range(443, 443), True))
    dns = policy.rule("watch-big-dns").match
    assert dns.length.items == (Item(Range(512, 65535)),)
    assert policy.rule("drop-blocklisted").match.src.items[0].value is policy.sets["blocklist"]


def test_relays_come_from_the_consensus(policy_dir: Path) -> None:
    relays = load_policy(policy_dir / "policy.yaml").sets["relays"]
    assert [str(p) for p in relays.prefixes] == [
        "192.0.2.77/32", "198.51.100.17/32", "198.51.100.42/32", "203.0.113.5/32",
        "2001:db8:5::5/128", "2001:db8:17::1/128",
    ]
    # The directory authority's dir-source address is not a relay address.
    assert ipaddress.ip_address("192.0.2.200") not in relays


@pytest.mark.parametrize("name", ["basic.yaml", "tor-relays.yaml"])
def test_examples_load(name: str) -> None:
    policy = load_policy(EXAMPLES / name)
    assert policy.rules


def test_tor_example_is_fail_closed() -> None:
    policy = load_policy(EXAMPLES / "tor-relays.yaml")
    assert policy.default_action == "drop"
    assert policy.pipeline.on_missing_stage == "drop"
    assert len(policy.sets["relays"].prefixes) == 6


def test_minimal_policy_has_defaults() -> None:
    policy = load(HEADER)
    assert policy.rules == ()
    assert dict(policy.sets) == {}
    assert policy.pipeline.on_missing_stage == "pass"
    assert policy.fastpath.allow == policy.fastpath.deny == ()


def test_parse_policy_takes_python_data() -> None:
    data = {"version": 1, "default_action": "drop", "rules": [{"name": "x", "action": "pass"}]}
    policy = parse_policy(data, "inline", ".")
    assert policy.default_action == "drop"
    assert policy.rules[0].match.fields() == {}


# --- match values ---------------------------------------------------------------------


def match_of(match: str):
    return load(one_rule_match(match)).rules[0].match


def test_ports_numbers_ranges_and_lists() -> None:
    m = match_of('{dport: [22, "1000-2000", "60000-", "-10", "!1500"], sport: "53"}')
    assert m.dport.items == (
        Item(Range(22, 22)), Item(Range(1000, 2000)), Item(Range(60000, 65535)),
        Item(Range(0, 10)), Item(Range(1500, 1500), True),
    )
    assert m.sport.items == (Item(Range(53, 53)),)


@pytest.mark.parametrize(
    ("written", "number"),
    [("tcp", 6), ("UDP", 17), ("icmp", 1), ("icmpv6", 58), ("ipv6-icmp", 58), ("gre", 47),
     ("esp", 50), ("ah", 51), ("sctp", 132), (0, 0), (255, 255), ('"41"', 41)],
)
def test_proto_names_and_numbers(written: object, number: int) -> None:
    assert match_of(f"{{proto: {written}}}").proto.items == (Item(Range(number, number)),)


def test_numeric_fields() -> None:
    m = match_of('{ttl: "-1", length: ["!0-39"], vlan: [10, "100-199"], icmp_type: 8, icmp_code: 0}')
    assert m.ttl.items == (Item(Range(0, 1)),)
    assert m.length.items == (Item(Range(0, 39), True),)
    assert m.vlan.items == (Item(Range(10, 10)), Item(Range(100, 199)))
    assert m.icmp_type.items == (Item(Range(8, 8)),)
    assert m.icmp_code.items == (Item(Range(0, 0)),)


def test_addresses_mixed_families_sets_and_negation() -> None:
    policy = load(
        HEADER
        + "sets:\n  bad: {type: prefix, entries: [198.51.100.0/24]}\n"
        + "rules:\n  - name: r\n    action: drop\n    match:\n"
        + '      src: [192.0.2.0/24, "2001:db8::/32", "!192.0.2.1", "!@bad", "@bad"]\n'
    )
    items = policy.rules[0].match.src.items
    assert [str(i) for i in items] == [
        "192.0.2.0/24", "2001:db8::/32", "!192.0.2.1/32", "!@bad", "@bad"
    ]


def test_tcp_flags_compile_to_mask_and_value() -> None:
    flags = match_of('{tcp_flags: "syn, !Ack"}').tcp_flags
    assert (flags.mask, flags.value) == (TCP_FLAG_BITS["SYN"] | TCP_FLAG_BITS["ACK"], TCP_FLAG_BITS["SYN"])
    assert str(flags) == "SYN,!ACK"
    assert list(TCP_FLAG_BITS) == ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]


def test_fragment_and_family() -> None:
    m = match_of("{fragment: non_first, family: IPv6}")
    assert m.fragment is Fragment.NON_FIRST
    assert m.family is Family.IPV6


def test_rule_without_match_matches_everything() -> None:
    policy = load(rules("- {name: all, action: drop}\n- {name: all2, action: count, match: {}}\n"))
    assert policy.rules[0].match.fields() == policy.rules[1].match.fields() == {}


def test_description_is_kept() -> None:
    policy = load(rules("- {name: r, action: pass, description: why this rule exists}\n"))
    assert policy.rules[0].description == "why this rule exists"


def test_pipeline_and_fastpath() -> None:
    policy = load(
        HEADER
        + "pipeline: {on_missing_stage: drop}\n"
        + "sets:\n  ok: {type: prefix, entries: [\"2001:db8:1::/48\"]}\n"
        + 'fastpath: {allow: [192.0.2.0/24, "@ok"], deny: [192.0.2.128/25]}\n'
    )
    assert policy.pipeline.on_missing_stage == "drop"
    assert policy.fastpath.allow == (ipaddress.ip_network("192.0.2.0/24"), policy.sets["ok"])
    assert policy.fastpath.deny == (ipaddress.ip_network("192.0.2.128/25"),)


# --- bad input: every error names the file, the field path and the problem -----------


def test_port_out_of_range_names_the_field() -> None:
    text = rules(
        """\
        - {name: a, action: pass}
        - {name: b, action: pass}
        - {name: c, action: pass}
        - {name: d, action: drop, match: {dport: 70000}}
        """
    )
    assert error(text) == "policy.yaml: rules[3].match.dport: port 70000 is out of range 0-65535"


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ('{sport: [22, "-1"]}', None),
        ('{sport: [22, 65536]}', "rules[0].match.sport[1]: port 65536 is out of range 0-65535"),
        ('{dport: "90-80"}', "rules[0].match.dport: range '90-80' is empty: 90 is above 80"),
        ('{dport: "1-70000"}', "rules[0].match.dport: port 70000 is out of range 0-65535"),
        ("{dport: -1}", "rules[0].match.dport: port -1 is out of range 0-65535"),
        ('{dport: "-"}', "rules[0].match.dport: '-' is not a port or a range (a-b, a-, -b)"),
        ("{dport: http}", "rules[0].match.dport: 'http' is not a port or a range (a-b, a-, -b)"),
        ("{dport: true}", "rules[0].match.dport: expected a port or a range, got the boolean true"),
        ("{dport: 2.5}", "rules[0].match.dport: expected a port or a range, got a float (2.5)"),
        ("{dport: []}", "rules[0].match.dport: empty list: leave the field out to match any value"),
        ('{dport: ["!"]}', "rules[0].match.dport[0]: '!' needs a value to negate"),
        ("{ttl: 256}", "rules[0].match.ttl: TTL 256 is out of range 0-255"),
        ("{vlan: 4096}", "rules[0].match.vlan: VLAN id 4096 is out of range 0-4095"),
        ("{length: 65536}", "rules[0].match.length: length 65536 is out of range 0-65535"),
        ("{icmp_type: 300}", "rules[0].match.icmp_type: ICMP type 300 is out of range 0-255"),
        ("{icmp_code: [0, 256]}", "rules[0].match.icmp_code[1]: ICMP code 256 is out of range 0-255"),
        ("{proto: 256}", "rules[0].match.proto: protocol number 256 is out of range 0-255"),
        (
            "{proto: tcpp}",
            "rules[0].match.proto: 'tcpp' is not a protocol number, a name (icmp, tcp, udp, gre, "
            "esp, ah, icmpv6, ipv6-icmp, sctp) or a range (a-b, a-, -b)",
        ),
        (
            '{tcp_flags: "SYN,!ACKK"}',
            "rules[0].match.tcp_flags: '!ACKK' is not a TCP flag "
            "(known: FIN SYN RST PSH ACK URG ECE CWR; ! for must be clear)",
        ),
        ('{tcp_flags: "SYN,!SYN"}', "rules[0].match.tcp_flags: flag SYN is given more than once"),
        ('{tcp_flags: ""}', "rules[0].match.tcp_flags: '' is not a TCP flag "
         "(known: FIN SYN RST PSH ACK URG ECE CWR; ! for must be clear)"),
        (
            "{tcp_flags: [SYN]}",
            "rules[0].match.tcp_flags: expected TCP flags such as \"SYN,!ACK\", got a list",
        ),
        (
            "{fragment: middle}",
            "rules[0].match.fragment: 'middle' is not a valid fragment (one of: any, first, non_first)",
        ),
        ("{family: ip4}", "rules[0].match.family: 'ip4' is not a valid family (one of: ipv4, ipv6)"),
    ],
)
def test_bad_match_values(match: str, message: str | None) -> None:
    if message is None:
        match_of(match)  # "-1" is the open range 0-1, not a negative number
        return
    assert error(one_rule_match(match)) == f"policy.yaml: {message}"


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("198.51.100.300", "'198.51.100.300' is not an IPv4 or IPv6 address or prefix"),
        ("198.51.100.0/33", "'198.51.100.0/33' is not an IPv4 or IPv6 address or prefix"),
        ('"2001:db8::/129"', "'2001:db8::/129' is not an IPv4 or IPv6 address or prefix"),
        ("192.0.2.1/24", "192.0.2.1/24 has host bits set: the network is 192.0.2.0/24"),
        ('"2001:db8::1/32"', "2001:db8::1/32 has host bits set: the network is 2001:db8::/32"),
        ('"::ffff:198.51.100.0/120"', "::ffff:198.51.100.0/120 is IPv4-mapped: write it as 198.51.100.0/24"),
        ('"fe80::1%eth0"', "'fe80::1%eth0': scoped addresses (with %zone) are not supported"),
        ("42", "expected an address, a prefix or @set (quote IPv6 ones), got the number 42"),
    ],
)
def test_malformed_prefixes(address: str, message: str) -> None:
    assert error(one_rule_match(f"{{src: [{address}]}}")) == f"policy.yaml: rules[0].match.src[0]: {message}"


def test_malformed_set_entry() -> None:
    text = HEADER + "sets:\n  s: {type: prefix, entries: [192.0.2.0/24, 192.0.2.1/24]}\n"
    assert error(text) == (
        "policy.yaml: sets.s.entries[1]: 192.0.2.1/24 has host bits set: the network is 192.0.2.0/24"
    )


def test_unknown_set_reference() -> None:
    text = HEADER + "sets:\n  blocklist: {type: prefix, entries: []}\n" + (
        "rules:\n  - {name: r, action: drop, match: {dst: [192.0.2.1, \"!@blocklsit\"]}}\n"
    )
    assert error(text) == (
        "policy.yaml: rules[0].match.dst[1]: unknown set 'blocklsit' (defined sets: blocklist)"
    )


def test_unknown_set_reference_without_sets() -> None:
    assert error(one_rule_match('{src: "@nope"}')) == (
        "policy.yaml: rules[0].match.src: unknown set 'nope' (defined sets: none)"
    )


def test_duplicate_rule_name() -> None:
    text = rules(
        """\
        - {name: web, action: pass}
        - {name: other, action: pass}
        - {name: web, action: drop}
        """
    )
    assert error(text) == "policy.yaml: rules[2].name: duplicate rule name 'web' (first at rules[0])"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("''", "invalid rule name ''"),
        ("'-x'", "invalid rule name '-x'"),
        ("'has space'", "invalid rule name 'has space'"),
        ("42", "expected a rule name, got the number 42"),
    ],
)
def test_bad_rule_names(name: str, message: str) -> None:
    assert error(rules(f"- {{name: {name}, action: pass}}\n")).startswith(
        f"policy.yaml: rules[0].name: {message}"
    )


def test_unreadable_set_file(tmp_path: Path) -> None:
    text = HEADER + "sets:\n  bad:\n    type: prefix\n    files: [lists/missing.txt]\n"
    assert error(text, tmp_path) == (
        "policy.yaml: sets.bad.files[0]: cannot read lists/missing.txt: No such file or directory"
    )


def test_set_file_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    text = HEADER + "sets:\n  bad: {type: prefix, files: [lists]}\n"
    assert error(text, tmp_path) == (
        "policy.yaml: sets.bad.files[0]: cannot read lists: it is a directory, not a regular file")


def test_bad_line_in_set_file_gives_its_number(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("# comment\n198.51.100.0/24\nnot-an-address\n")
    text = HEADER + "sets:\n  bad: {type: prefix, files: [bad.txt]}\n"
    assert error(text, tmp_path) == (
        "policy.yaml: sets.bad.files[0]: bad.txt:3: 'not-an-address' is not an IPv4 or IPv6 "
        "address or prefix"
    )


def test_set_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"192.0.2.0/24\n\xff\xfe\n")
    text = HEADER + "sets:\n  bad: {type: prefix, files: [bin.txt]}\n"
    assert error(text, tmp_path) == "policy.yaml: sets.bad.files[0]: bin.txt:2: not UTF-8 text"


def test_set_files_are_relative_to_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "list.txt").write_text("203.0.113.0/24\n203.0.113.0/24\n")
    (tmp_path / "conf" / "p.yaml").write_text(HEADER + "sets:\n  s: {type: prefix, files: [list.txt]}\n")
    monkeypatch.chdir(tmp_path)
    policy = load_policy("conf/p.yaml")
    # Duplicates are merged.
    assert policy.sets["s"].prefixes == (ipaddress.ip_network("203.0.113.0/24"),)


def test_unreadable_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "nothing.yaml")
    assert str(caught.value) == f"{tmp_path / 'nothing.yaml'}: cannot read the policy: No such file or directory"


def test_too_many_rules() -> None:
    text = rules("- {name: a, action: pass}\n- {name: b, action: pass}\n- {name: c, action: pass}\n")
    assert error(text, capacity=Capacity(rules=2)) == (
        "policy.yaml: rules: 3 rules, more than the capacity of 2"
    )
    assert len(load(text, capacity=Capacity(rules=3)).rules) == 3


def test_too_many_set_entries(tmp_path: Path) -> None:
    (tmp_path / "more.txt").write_text("198.51.100.1\n198.51.100.2\n")
    text = HEADER + "sets:\n  s: {type: prefix, entries: [198.51.100.1, 198.51.100.3], files: [more.txt]}\n"
    assert error(text, tmp_path, Capacity(set_entries=2)) == (
        "policy.yaml: sets.s: 3 entries, more than the capacity of 2"
    )


def test_too_many_fastpath_entries() -> None:
    text = HEADER + "fastpath: {allow: [192.0.2.1, 192.0.2.2], deny: [192.0.2.3]}\n"
    assert error(text, capacity=Capacity(fastpath_entries=2)) == (
        "policy.yaml: fastpath: 3 entries, more than the capacity of 2"
    )


def test_default_capacity() -> None:
    assert Capacity() == Capacity(rules=10_000, set_entries=1_000_000, fastpath_entries=1_000_000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER + "rule: []\n", ": unknown key 'rule' (did you mean 'rules'?)"),
        (HEADER + "colour: blue\n",
         ": unknown key 'colour' (allowed: version, sets, pipeline, events, mitigation, "
         + ", ".join(dict.fromkeys(k.split(".")[0] for k in policy_keys())) + ")"),
        (rules("- {name: r, action: drop, match: {dprot: 22}}\n"),
         ": rules[0].match: unknown key 'dprot' (did you mean 'dport'?)"),
        (rules("- {name: r, action: drop, when: {}}\n"),
         ": rules[0]: unknown key 'when' (allowed: name, match, action, description)"),
        (HEADER + "sets:\n  s: {type: prefix, entry: []}\n",
         ": sets.s: unknown key 'entry' (did you mean 'entries'?)"),
        (HEADER + "pipeline: {on_missing: drop}\n",
         ": pipeline: unknown key 'on_missing' (did you mean 'on_missing_stage'?)"),
        (HEADER + "fastpath: {block: []}\n", ": fastpath: unknown key 'block' (allowed: allow, deny)"),
    ],
)
def test_unknown_keys_are_named(text: str, message: str) -> None:
    assert error(text) == "policy.yaml" + message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default_action: pass\n", ": missing key 'version'"),
        ("version: 1\n", ": missing key 'default_action'"),
        ("version: 2\ndefault_action: pass\n", ": version: unsupported version 2 (supported: 1)"),
        ("version: true\ndefault_action: pass\n", ": version: unsupported version True (supported: 1)"),
        ("version: 1\ndefault_action: count\n", ": default_action: 'count' is not pass or drop"),
        ("", ": expected a mapping, got nothing (null)"),
        ("- 1\n", ": expected a mapping, got a list"),
        (HEADER + "rules: {}\n", ": rules: expected a list, got a mapping"),
        (HEADER + "sets: []\n", ": sets: expected a mapping of set names, got a list"),
        (rules("- {name: r}\n"), ": rules[0]: missing key 'action'"),
        (rules("- {action: pass}\n"), ": rules[0]: missing key 'name'"),
        (rules("- {name: r, action: reject}\n"),
         ": rules[0].action: unknown action 'reject' (one of: pass, drop, count, monitor)"),
        (rules("- {name: r, action: pass, match: }\n"),
         ": rules[0].match: expected a mapping, got nothing (null): write {} to match every packet"),
        (rules("- {name: r, action: pass, match: [1]}\n"), ": rules[0].match: expected a mapping, got a list"),
        (rules("- just-a-string\n"), ": rules[0]: expected a mapping, got the string 'just-a-string'"),
        (HEADER + "sets:\n  s: {entries: []}\n", ": sets.s: missing key 'type'"),
        (HEADER + "sets:\n  s: {type: port}\n", ": sets.s.type: unknown set type 'port' (supported: prefix)"),
        (HEADER + "sets:\n  '@s': {type: prefix}\n",
         ": sets: invalid set name '@s' (letters, digits, _ and -)"),
        (HEADER + "sets:\n  s: {type: prefix, entries: 192.0.2.0/24}\n",
         ": sets.s.entries: expected a list, got the string '192.0.2.0/24'"),
        (HEADER + "sets:\n  s: {type: prefix, entries: [!!int 7]}\n",
         ": sets.s.entries[0]: expected an address or prefix (quote IPv6 ones), got the number 7"),
        (HEADER + "sets:\n  s: {type: prefix, entries: ['!192.0.2.0/24']}\n",
         ": sets.s.entries[0]: '!192.0.2.0/24' is not an IPv4 or IPv6 address or prefix"),
        (HEADER + "pipeline: {on_missing_stage: monitor}\n",
         ": pipeline.on_missing_stage: 'monitor' is not pass or drop"),
        (HEADER + "fastpath: {allow: ['!192.0.2.0/24']}\n",
         ": fastpath.allow: entries cannot be negated: !192.0.2.0/24"),
        (HEADER + "fastpath: {allow: [198.51.100.0/24], deny: [192.0.2.0/24, 198.51.100.0/24]}\n",
         ": fastpath: 198.51.100.0/24 is in both allow and deny"),
        (HEADER + "fastpath: {deny: ['@missing']}\n",
         ": fastpath.deny[0]: unknown set 'missing' (defined sets: none)"),
    ],
)
def test_structural_errors(text: str, message: str) -> None:
    assert error(text) == "policy.yaml" + message


def test_overlap_through_a_set_is_found() -> None:
    text = HEADER + (
        "sets:\n  s: {type: prefix, entries: [198.51.100.0/24]}\n"
        "fastpath: {allow: ['@s'], deny: [198.51.100.0/24]}\n"
    )
    assert error(text) == "policy.yaml: fastpath: 198.51.100.0/24 is in both allow and deny"


# --- YAML-level problems --------------------------------------------------------------


def test_yaml_syntax_error_names_the_line() -> None:
    assert error(HEADER + "rules: [\n") == (
        "policy.yaml: line 4, column 1: invalid YAML: expected the node content, but found '<stream end>'"
    )


def test_duplicate_yaml_keys_are_refused() -> None:
    assert error(one_rule_match("{dport: 22, dport: 23}")) == (
        "policy.yaml: line 5, column 24: invalid YAML: duplicate key 'dport'"
    )


def test_unquoted_negation_gets_a_hint() -> None:
    text = rules("- name: r\n  action: drop\n  match:\n    dport: !80\n")
    message = error(text)
    assert message.startswith("policy.yaml: line 7, column 14: invalid YAML: could not determine a constructor for the tag")
    assert message.endswith('(quote values that start with !, for example "!80")')


# --- many problems at once ------------------------------------------------------------


def test_all_problems_are_reported_together() -> None:
    text = HEADER + textwrap.dedent(
        """\
        sets:
          good: {type: prefix, entries: [192.0.2.0/24]}
          broken: {type: prefix, entries: [192.0.2.1/24]}
        rules:
          - {name: a, action: drop, match: {dport: 70000, sport: 1-2-3}}
          - {name: b, action: drop, match: {src: "@broken", proto: nope}}
          - {name: a, action: pass, match: {src: "@good"}}
        """
    )
    with pytest.raises(PolicyError) as caught:
        load(text)
    err = caught.value
    assert [str(i) for i in err.issues] == [
        "policy.yaml: sets.broken.entries[0]: 192.0.2.1/24 has host bits set: the network is 192.0.2.0/24",
        "policy.yaml: rules[0].match.dport: port 70000 is out of range 0-65535",
        "policy.yaml: rules[0].match.sport: '1-2-3' is not a port or a range (a-b, a-, -b)",
        "policy.yaml: rules[1].match.src: set 'broken' is invalid",
        "policy.yaml: rules[1].match.proto: 'nope' is not a protocol number, a name (icmp, tcp, "
        "udp, gre, esp, ah, icmpv6, ipv6-icmp, sctp) or a range (a-b, a-, -b)",
        "policy.yaml: rules[2].name: duplicate rule name 'a' (first at rules[0])",
    ]
    # The first issue is also the exception's own file, path and problem.
    assert (err.file, err.path, err.problem) == (
        "policy.yaml", "sets.broken.entries[0]", "192.0.2.1/24 has host bits set: the network is 192.0.2.0/24"
    )
    assert str(err) == "\n".join(str(i) for i in err.issues)


# --- set files ------------------------------------------------------------------------


def test_plain_list_file(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("  # header\n\n192.0.2.0/25 # half\n2001:db8:f::1\n\t198.51.100.9  \n")
    assert [str(n) for n in read_set_file(path, "l.txt")] == [
        "192.0.2.0/25", "2001:db8:f::1/128", "198.51.100.9/32"
    ]


MICRODESC = """\
network-status-version 3 microdesc
vote-status consensus
r relay1 AAoQ1DAR6kkoo19hBAX5K0QztNw 2024-05-01 11:54:25 198.51.100.1 9001 0
m sha256digest
a [2001:db8::1]:443
r relay2 AAwffNL+oHO5EdyUoWAOwvEX3ws 2024-05-01 08:12:03 203.0.113.2 443 80
"""


def test_microdescriptor_consensus(tmp_path: Path) -> None:
    path = tmp_path / "cached-microdesc-consensus"
    path.write_text(MICRODESC)
    assert [str(n) for n in read_set_file(path, "c")] == [
        "198.51.100.1/32", "2001:db8::1/128", "203.0.113.2/32"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("r relay1 AAoQ 2024-05-01 11:54:25 198.51.100.1 9001 0",
         "c:3: malformed r line: expected 9 fields"),
        ("r relay1 AAoQ DtPd 2024-05-01 11:54:25 198.51.100.300 9001 0",
         "c:3: '198.51.100.300' is not an IPv4 or IPv6 address or prefix"),
        ("a 2001:db8::1:443", "c:3: malformed a line: expected 'a [address]:port'"),
        ("a [2001:db8::zz]:443", "c:3: '2001:db8::zz' is not an IPv4 or IPv6 address or prefix"),
    ],
)
def test_malformed_consensus_lines(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c"
    path.write_text(f"network-status-version 3\nvote-status consensus\n{line}\n")
    with pytest.raises(Exception) as caught:
        read_set_file(path, "c")
    assert str(caught.value) == message


def test_consensus_detection_needs_the_version_line(tmp_path: Path) -> None:
    # Without the version line, an r line is just a bad line of a plain list.
    path = tmp_path / "c"
    path.write_text("r relay AAoQ DtPd 2024-05-01 11:54:25 198.51.100.1 9001 0\n")
    with pytest.raises(Exception) as caught:
        read_set_file(path, "c")
    assert str(caught.value).startswith("c:1: ")


# --- actions ------------------------------------------------------------------------


def test_action_registry() -> None:
    assert list(ACTIONS) == ["pass", "drop", "count", "monitor"]
    assert [a.decides for a in ACTIONS.values()] == [True, True, False, False]
    assert ACTIONS["monitor"].would == "drop" and ACTIONS["monitor"].counts
    with pytest.raises(ValueError):
        register_action(ActionKind("pass", verdict="pass"))


def test_registered_action_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ACTIONS, "tally", ActionKind("tally", counts=True))
    policy = load(rules("- {name: r, action: tally}\n"))
    assert policy.rules[0].action is ACTIONS["tally"]


# --- sections inside sections -------------------------------------------------------


def test_a_dotted_key_is_handed_to_its_own_stage_only() -> None:
    from shieldwall.policy.load import _own_part
    owners = {"protect": object(), "protect.syn": object(), "limits": object()}
    doc = {"protect": {"land": "drop", "syn": {"ports": [80]}}, "limits": {}}
    assert _own_part(doc, ("protect",), owners) == {"protect": {"land": "drop"}}
    assert _own_part(doc, ("protect.syn",), owners) == {"protect.syn": {"ports": [80]}}
    # Absent, or its parent not a mapping (the parent's stage reports that): nothing.
    assert _own_part({"protect": "x"}, ("protect.syn",), owners) == {}
    assert _own_part({}, ("protect.syn",), owners) == {}
    assert _own_part({"protect": "x"}, ("protect",), owners) == {"protect": "x"}
