"""The policy: its file format, validation, and the reference model of its semantics.

load_policy() turns a YAML file into an immutable Policy or raises PolicyError naming
every problem; evaluate() says what the data plane must do with a parsed packet;
analyze() finds rules that can never match and other suspicious spots.
"""

from .analysis import Report, analyze
from .errors import Issue, PolicyError
from .load import load_policy, parse_policy, parse_policy_text
from .model import (
    ACTIONS,
    ActionKind,
    Capacity,
    Family,
    Fragment,
    Item,
    Items,
    Match,
    Pipeline,
    Policy,
    RuleSet,
    PrefixSet,
    Range,
    Rule,
    State,
    TcpFlags,
    register_action,
)
from .reference import Decision, evaluate

__all__ = [
    "ACTIONS",
    "ActionKind",
    "Capacity",
    "Decision",
    "Family",
    "Fragment",
    "Issue",
    "Item",
    "Items",
    "Match",
    "Pipeline",
    "Policy",
    "RuleSet",
    "PolicyError",
    "PrefixSet",
    "Range",
    "Report",
    "Rule",
    "State",
    "TcpFlags",
    "analyze",
    "evaluate",
    "load_policy",
    "parse_policy",
    "parse_policy_text",
    "register_action",
]
