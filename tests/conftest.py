"""Shared fixtures: a real labsquid per test, a real origin server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.origin import OriginServer  # noqa: E402
from support.service import Labsquid  # noqa: E402


@pytest.fixture
def origin():
    with OriginServer() as server:
        yield server


@pytest.fixture
def make_labsquid(tmp_path):
    started: list[Labsquid] = []

    def make(**kwargs) -> Labsquid:
        folder = tmp_path / f"ls{len(started)}"
        folder.mkdir()
        instance = Labsquid(folder, **kwargs)
        started.append(instance)
        return instance

    yield make
    for instance in started:
        if instance.proc is not None and instance.proc.poll() is None:
            instance.kill_tree()


@pytest.fixture
def labsquid(make_labsquid):
    """A running labsquid in serial mode (the quickest to start)."""
    return make_labsquid().start()
