"""Shared fixtures and the rule that an empty run is a failure."""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns, topology
from lab.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "topologies"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # CI must never pass on a run that collected nothing.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces); run the suite as root")


@pytest.fixture
def lab_name(request: pytest.FixtureRequest) -> str:
    """A lab name unique to this test and process, so parallel runs never collide."""
    return f"t{os.getpid() % 100000}-{zlib.crc32(request.node.nodeid.encode()) % 100000}"


@pytest.fixture
def fullnat4(lab_name: str) -> Iterator[Lab]:
    needs_root()
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name) as lab:
        yield lab
    assert not netns.listing(f"toalab-{lab_name}-")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
