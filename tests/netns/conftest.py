"""Namespace tier: real traffic in namespaces, pins on the run's own bpffs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _pins_of_this_run(private_bpffs):
    yield private_bpffs
