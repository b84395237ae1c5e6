"""The stages a chain can hold, found by themselves: every module of this package other
than base registers one Stage (docs/stages.md). Their order in a chain is configuration;
`order` is their place in the default one."""

from __future__ import annotations

import importlib
import pkgutil

from .. import abi
from .base import Stage, StageBuild

_REGISTRY: dict[str, Stage] = {}
_DISCOVERED = False


def register(stage: Stage) -> Stage:
    """Adds a stage; its module id and reason codes must exist in the shared header."""
    if stage.name in _REGISTRY:
        raise ValueError(f"stage {stage.name!r} is registered twice")
    defines = abi.defines()
    if f"SW_MOD_{stage.name.upper()}" not in defines:
        raise ValueError(f"stage {stage.name!r} has no SW_MOD_{stage.name.upper()} in shieldwall.h")
    for reason in stage.reasons:
        if reason not in abi.REASON_CODES:
            raise ValueError(f"stage {stage.name!r} names reason {reason!r}, which shieldwall.h lacks")
    _REGISTRY[stage.name] = stage
    return stage


def _discover() -> None:
    global _DISCOVERED
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def stages() -> dict[str, Stage]:
    """Every stage, in default-chain order."""
    if not _DISCOVERED:
        _discover()
    return dict(sorted(_REGISTRY.items(), key=lambda item: item[1].order))


def stage(name: str) -> Stage:
    found = stages().get(name)
    if found is None:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(stages())}")
    return found


def policy_keys() -> dict[str, Stage]:
    """Policy keys -> the stage that owns them. A dotted key (`protect.syn`) is a sub-key
    of another stage's section (policy/load.py hands each stage only its own)."""
    return {key: s for s in stages().values() for key in s.keys}


__all__ = ["Stage", "StageBuild", "register", "stage", "stages", "policy_keys"]
