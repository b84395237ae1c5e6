"""The policy's rules compiled into decision chains (docs/classifier.md).

A packet's decision must cost the same few table lookups whatever the rules and
whatever traffic an attacker sends: no cache to defeat, no walk over the rules.

1. Every field the rules use gives the packet a class (policy.classes).
2. Fields with few classes are combined into one **misc** class by a product table
   (the packet's classes are digits of one index).
3. The rules are split into **buckets** by which address fields they use. Rules that
   name sources and rules that name destinations would otherwise multiply each other's
   classes; in separate buckets each stays linear.
4. A bucket is a **decision chain**: a state (the rules of the bucket still able to
   match, cut after the first one already certain to decide) walks through the
   bucket's dimensions; each step maps (state, class) to the next state, through a
   dense table, or, where that would be large and mostly repetitive, a default per
   state plus a hash of the exceptions. The final state names the bucket's first
   deciding rule and the counting rules before it.
5. The packet's decision is the lowest deciding rule over the buckets; counting rules
   before it are counted.

The chains are built here in pure Python, as plain arrays; `Plan.decide()` walks them
exactly as the data plane does, and the tests compare it with reference.evaluate_rules.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Iterator

from .. import abi
from ..model.parse import ParsedPacket
from .classes import ADDRESS_FIELDS, FIELDS, FieldClasses, field_classes, mask
from .direct import decide as direct_decide
from .direct import direct_rules
from .model import Policy, Rule, RuleSet

MISC = abi.SW_POL_DIM_MISC  # the dimension id of the combined small fields
MISC_FIELD_CLASSES = 64     # a field with at most this many classes may join misc
MISC_PRODUCT = 1 << 16      # entries the misc product table may take
DENSE_FREE = 1 << 16        # a dense step this small (256 KiB) is always taken
DENSE_RATIO = 4             # else dense only if at most this many times the sparse size
DENSE_MAX = 1 << 21         # and never larger than this
TABLE_BUDGET = 1 << 24      # table entries (4 bytes each) one ruleset may take
ONE_BUCKET_BUDGET = 1 << 16  # entries under which all rules share one bucket
ONE_BUCKET_RULES = 512      # past this many rules, one bucket is not even tried
REMAP_FREE = 1 << 12        # a dense step this small reads the dimension's class directly
SPARSE_BUDGET = 1 << 21     # exceptions (hash entries) one ruleset may take


class ClassifierTooLarge(ValueError):
    """The rules need more memory than the classifier may take."""


@dataclass(frozen=True)
class Decision:
    """A bucket's (or the packet's) outcome: the first deciding rule (0: none) and the
    counting rules that matched before it, as (rule id, would drop)."""

    rule_id: int = 0
    verdict: str | None = None
    counted: tuple[tuple[int, bool], ...] = ()


@dataclass(eq=False)
class Step:
    """One step of a chain: the dimension it reads, how that dimension's classes map to
    this bucket's (remap), and the transition. Dense: next = table[state * width +
    class]. Sparse: next = exceptions.get((state, class), default[state])."""

    dim: int
    remap: array
    states: int
    width: int
    table: array | None = None
    default: array | None = None
    exceptions: dict[tuple[int, int], int] | None = None
    direct: bool = False  # dense, indexed by the dimension's own class: no remap read

    @property
    def dense(self) -> bool:
        return self.table is not None

    def next(self, state: int, cls: int) -> int:
        """cls: the bucket's class, or the dimension's own for a direct step."""
        if self.table is not None:
            return self.table[state * self.width + cls]
        assert self.default is not None and self.exceptions is not None
        return self.exceptions.get((state, cls), self.default[state])

    @property
    def entries(self) -> int:
        own = len(self.table if self.table is not None else self.default)
        return own if self.direct else len(self.remap) + own


@dataclass(eq=False)
class Bucket:
    rules: int                  # mask of the rules it holds
    steps: list[Step]
    decisions: list[Decision]   # by final state


@dataclass(eq=False)
class Plan:
    """Everything the policy stage needs for one ruleset."""

    rules: tuple[Rule, ...]
    default_action: str
    fields: dict[str, FieldClasses]
    misc_fields: tuple[str, ...] = ()
    misc_strides: tuple[int, ...] = ()
    misc_table: array = field(default_factory=lambda: array("I"))
    misc_classes: int = 0
    buckets: list[Bucket] = field(default_factory=list)
    direct: tuple | None = None  # policy.direct rules, when the ruleset is small enough

    def dim_class(self, dim: int, classes: dict[str, int]) -> int:
        if dim == MISC:
            index = sum(classes[f] * stride for f, stride in zip(self.misc_fields, self.misc_strides))
            return self.misc_table[index]
        return classes[_FIELD_NAMES[dim]]

    def decide(self, pkt: ParsedPacket) -> Decision:
        """The rules' decision for a packet, by the data plane's own steps."""
        if self.direct is not None:
            return direct_decide(self.direct, pkt)
        classes = {name: fc.of(pkt) for name, fc in self.fields.items()}
        found = [self._bucket_decision(b, classes) for b in self.buckets]
        return merge(found)

    def _bucket_decision(self, bucket: Bucket, classes: dict[str, int]) -> Decision:
        state = 0
        for step in bucket.steps:
            cls = self.dim_class(step.dim, classes)
            state = step.next(state, cls if step.direct else step.remap[cls])
        return bucket.decisions[state]

    # -- what it costs -------------------------------------------------------------
    @property
    def sparse_entries(self) -> int:
        return sum(len(s.exceptions) for b in self.buckets for s in b.steps if s.exceptions is not None)

    def lookups(self) -> dict[str, int]:
        """Table reads one packet costs, at most: the bound docs/classifier.md states."""
        if self.direct is not None:
            return {"direct_rules": len(self.direct), "field_lookups": 0, "misc_lookups": 0,
                    "chain_steps": 0, "sparse_steps": 0, "buckets": 0}
        steps = [s for b in self.buckets for s in b.steps]
        return {
            "field_lookups": len(self.fields),
            "misc_lookups": int(bool(self.misc_fields)),
            "chain_steps": len(steps),
            "sparse_steps": sum(1 for s in steps if not s.dense),
            "buckets": len(self.buckets),
        }


_FIELD_NAMES = {fid: name for name, fid in FIELDS.items()}


def merge(found: list[Decision]) -> Decision:
    """The lowest deciding rule over the buckets, and the counting rules before it."""
    deciders = [d for d in found if d.rule_id]
    best = min(deciders, key=lambda d: d.rule_id) if deciders else Decision()
    limit = best.rule_id or 1 << 62
    counted = sorted(c for d in found for c in d.counted if c[0] < limit)
    return Decision(best.rule_id, best.verdict, tuple(counted))


# --- building -------------------------------------------------------------------------


def set_bits(v: int) -> Iterator[int]:
    """The indexes of v's set bits, lowest first."""
    text = bin(v)[:1:-1]
    i = text.find("1")
    while i >= 0:
        yield i
        i = text.find("1", i + 1)


DIRECT = True  # small rulesets run in direct mode (tests turn it off to test the chains)


def plan(policy: Policy | RuleSet) -> Plan:
    """Direct mode for a small ruleset, else the decision chains of its rules
    (ClassifierTooLarge past the budget)."""
    if DIRECT:
        direct = direct_rules(policy)
        if direct is not None:
            return Plan(policy.rules, policy.default_action, {}, direct=direct)
    return _Builder(policy.rules, policy.default_action).build()


class _Builder:
    def __init__(self, rules: tuple[Rule, ...], default_action: str) -> None:
        self.rules = rules
        self.default_action = default_action
        self.fields = field_classes(rules)
        self.deciding = mask(i for i, r in enumerate(rules) if r.action.decides)
        self.entries = 0
        self.sparse = 0
        self.budget = TABLE_BUDGET

    def build(self) -> Plan:
        out = Plan(self.rules, self.default_action, self.fields)
        self._misc(out)
        # dim -> class vectors, and each rule's dims
        self.dims: dict[int, list[int]] = {FIELDS[f]: fc.vectors for f, fc in self.fields.items()
                                           if f not in out.misc_fields}
        if out.misc_fields:
            self.dims[MISC] = self.misc_vectors
        misc = set(out.misc_fields)
        self.uses = [frozenset(MISC if f in misc else FIELDS[f] for f in r.match.fields())
                     for r in self.rules]
        self.users = {d: mask(i for i, u in enumerate(self.uses) if d in u) for d in self.dims}
        out.buckets.extend(self._one_bucket() or [b for g in self._groups() for b in self._buckets(g)])
        if len(out.buckets) > abi.SW_POL_MAX_BUCKETS:
            raise ClassifierTooLarge(f"the rules need {len(out.buckets)} buckets; the stage runs "
                                     f"at most {abi.SW_POL_MAX_BUCKETS}")
        return out

    # -- misc ---------------------------------------------------------------------------
    def _misc(self, out: Plan) -> None:
        small = sorted((fc for f, fc in self.fields.items()
                        if f not in ADDRESS_FIELDS and fc.count <= MISC_FIELD_CLASSES),
                       key=lambda fc: fc.count)
        chosen: list[FieldClasses] = []
        product = 1
        for fc in small:
            if product * fc.count <= MISC_PRODUCT:
                chosen.append(fc)
                product *= fc.count
        if len(chosen) < 2:
            return  # one small field is its own dimension: a product would add a lookup
        strides, stride = [], 1
        for fc in chosen:
            strides.append(stride)
            stride *= fc.count
        # The product, digit by digit: vectors of all combinations, then their classes.
        vectors = [-1]
        for fc in chosen:
            vectors = [v & w for w in fc.vectors for v in vectors]
        ids: dict[int, int] = {}
        table = array("I", (ids.setdefault(v, len(ids)) for v in vectors))
        out.misc_fields = tuple(fc.name for fc in chosen)
        out.misc_strides = tuple(strides)
        out.misc_table = table
        out.misc_classes = len(ids)
        self.misc_vectors = list(ids)
        self._charge(len(table))

    # -- buckets ------------------------------------------------------------------------
    def _one_bucket(self) -> list[Bucket] | None:
        """Every rule in one chain, if that stays small: each bucket costs a packet its
        own steps, and a small ruleset needs no split."""
        if not self.rules:
            return []
        if len(self.rules) > ONE_BUCKET_RULES:
            return None
        spent = (self.entries, self.sparse)
        budget = self.budget
        self.budget = ONE_BUCKET_BUDGET
        try:
            return [self._bucket(mask(range(len(self.rules))))]
        except (_TooBig, ClassifierTooLarge):
            self.entries, self.sparse = spent
            return None
        finally:
            self.budget = budget

    def _groups(self) -> list[int]:
        """Rules by which address fields they use: sources and destinations named by
        different rules never multiply each other's classes."""
        groups: dict[tuple[bool, ...], int] = {}
        for i, r in enumerate(self.rules):
            used = r.match.fields()
            key = tuple(f in used for f in ADDRESS_FIELDS)
            groups[key] = groups.get(key, 0) | 1 << i
        return [groups[k] for k in sorted(groups)]

    def _buckets(self, rules: int) -> list[Bucket]:
        """One bucket, or, when its chain outgrows the budget, the rules split further
        by a dimension some of them read and others do not."""
        spent = (self.entries, self.sparse)
        try:
            return [self._bucket(rules)]
        except _TooBig as big:
            self.entries, self.sparse = spent  # the failed attempt takes nothing
            dims = {d for i in set_bits(rules) for d in self.uses[i]}
            for dim in [big.dim] + sorted(dims - {big.dim}):
                inside, outside = rules & self.users[dim], rules & ~self.users[dim]
                if inside and outside:
                    return self._buckets(inside) + self._buckets(outside)
            raise ClassifierTooLarge(
                f"the rules need more than {TABLE_BUDGET:,} table entries or {SPARSE_BUDGET:,} "
                f"exceptions (at {_dim_name(big.dim)}; rules {_rule_list(self.rules, rules)})") from None

    def _bucket(self, rules: int) -> Bucket:
        dims = {d for i in set_bits(rules) for d in self.uses[i]}
        local = {d: len({v & rules for v in self.dims[d]}) for d in dims}
        # Small dimensions first (their tables stay small), then the large ones, most
        # classes first: a state then already knows which few rules remain.
        order = sorted(dims, key=lambda d: (d != MISC and local[d] > MISC_FIELD_CLASSES, -local[d]))
        if len(order) > abi.SW_POL_MAX_STEPS:
            raise ClassifierTooLarge(f"a bucket would need {len(order)} steps; the stage runs "
                                     f"at most {abi.SW_POL_MAX_STEPS}")
        done: set[int] = set()
        resolved = mask(i for i in set_bits(rules) if not self.uses[i])
        states = _States(self.deciding)
        states.add(rules, resolved)
        steps = []
        for d in order:
            done.add(d)
            resolved = mask(i for i in set_bits(rules) if self.uses[i] <= done)
            step, states = self._step(d, rules, states, resolved)
            steps.append(step)
            self._charge(step.entries, len(step.exceptions or ()), d)
        decisions = [self._decision(v) for v in states.vectors]
        self._charge(2 * len(decisions) + sum(len(d.counted) for d in decisions), 0, order[-1] if order else None)
        return Bucket(rules, steps, decisions)

    def _step(self, d: int, rules: int, states: "_States", resolved: int) -> tuple[Step, "_States"]:
        ids: dict[int, int] = {}
        remap = array("I", (ids.setdefault(v & rules, len(ids)) for v in self.dims[d]))
        lvecs = list(ids)
        wild = rules & ~self.users[d]  # the bucket's rules that do not read this dimension
        nxt = _States(self.deciding)
        default = array("I", (nxt.add(s & wild, resolved) for s in states.vectors))
        # Only classes that admit a rule reading d can differ from the default.
        classes_of: dict[int, list[int]] = {}
        for c, lv in enumerate(lvecs):
            for r in set_bits(lv & ~wild):
                classes_of.setdefault(r, []).append(c)
        exceptions: dict[tuple[int, int], int] = {}
        for si, s in enumerate(states.vectors):
            seen: set[int] = set()
            for r in set_bits(s & self.users[d]):
                for c in classes_of.get(r, ()):
                    if c in seen:
                        continue
                    seen.add(c)
                    n = nxt.add(s & lvecs[c], resolved)
                    if n != default[si]:
                        exceptions[(si, c)] = n
            # Checked as it grows: an attempt that cannot fit must fail fast.
            if (self.sparse + len(exceptions) > SPARSE_BUDGET
                    or self.entries + len(default) + len(exceptions) > self.budget):
                raise _TooBig(d)
        dense_size = len(states.vectors) * len(lvecs)
        step = Step(d, remap, len(states.vectors), len(lvecs))
        if dense_size <= DENSE_FREE or (dense_size <= DENSE_RATIO * (len(exceptions) + len(default))
                                        and dense_size <= DENSE_MAX):
            w = len(lvecs)
            table = array("I", bytes(4 * dense_size))
            for si, n in enumerate(default):
                table[si * w:(si + 1) * w] = array("I", [n]) * w
            for (si, c), n in exceptions.items():
                table[si * w + c] = n
            step.table = table
            if len(states.vectors) * len(remap) <= REMAP_FREE:
                # Rows over the dimension's own classes: one read less per packet.
                step.table = array("I", (table[s * w + remap[g]] for s in range(len(states.vectors))
                                         for g in range(len(remap))))
                step.width, step.direct = len(remap), True
        else:
            step.default, step.exceptions = default, exceptions
        return step, nxt

    def _decision(self, v: int) -> Decision:
        decider = v & self.deciding
        low = decider & -decider
        first = low.bit_length() - 1 if low else None
        counted = []
        for i in set_bits(v):
            if first is not None and i >= first:
                break
            kind = self.rules[i].action
            if kind.counts:
                counted.append((i + 1, kind.would == "drop"))
        if first is None:
            return Decision(0, None, tuple(counted))
        return Decision(first + 1, self.rules[first].action.verdict, tuple(counted))

    # -- budget ---------------------------------------------------------------------
    def _charge(self, entries: int, sparse: int = 0, dim: int | None = None) -> None:
        self.entries += entries
        self.sparse += sparse
        if self.entries > self.budget or self.sparse > SPARSE_BUDGET:
            if dim is None:
                raise ClassifierTooLarge(f"the rules need more than {TABLE_BUDGET:,} table entries")
            raise _TooBig(dim)


class _TooBig(Exception):
    def __init__(self, dim: int) -> None:
        self.dim = dim


class _States:
    """A step's states: rule vectors, numbered. A vector is cut after its first rule
    that is certain to match and decides: no later rule can matter any more."""

    def __init__(self, deciding: int) -> None:
        self.deciding = deciding
        self.ids: dict[int, int] = {}
        self.vectors: list[int] = []

    def add(self, v: int, resolved: int) -> int:
        certain = v & resolved & self.deciding
        if certain:
            v &= ((certain & -certain) << 1) - 1
        n = self.ids.get(v)
        if n is None:
            n = self.ids[v] = len(self.vectors)
            self.vectors.append(v)
        return n


def _dim_name(dim: int) -> str:
    return "the combined small fields" if dim == MISC else _FIELD_NAMES[dim]


def _rule_list(rules: tuple[Rule, ...], bits: int) -> str:
    names = [rules[i].name for i in set_bits(bits)]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
