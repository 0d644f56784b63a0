"""kill -9 of `toalab up` at random points, each followed by `toalab down --all`:
whatever the point, nothing the lab made is left -- no namespace, host link,
pinned BPF object, lab record, VM run directory, qemu or other process of it.

make test runs 5 rounds on the host engine; make test-extended 50 on each engine."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOPOLOGIES, needs_root
from test_host_engine import links_on_host

from lab import netns, programs
from lab.engines import LabRecord
from lab.engines.vm import VM_PREFIX
from lab.vm.session import rundir_for

TOALAB = [sys.executable, "-m", "lab"]
SEED = 20261202
# how long an undisturbed `toalab up` takes here, roughly: the kill falls anywhere in it
UP_S = {"host": 1.6, "vm": 12.0}


def _processes_naming(name: str) -> list[str]:
    """Processes whose command line names the lab (its namespaces, its VM run directory)."""
    marks = (f"toalab-{name}-", str(rundir_for(VM_PREFIX + name)), f"--name {name} ")
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") + " "
        except OSError:
            continue
        if any(m in cmd for m in marks):
            out.append(f"{d.name}: {cmd.strip()[:120]}")
    return out


def leftovers(name: str, links_before: set[str]) -> list[str]:
    left = [f"netns {n}" for n in netns.listing(f"toalab-{name}-")]
    left += [f"link {n}" for n in sorted(links_on_host() - links_before)]
    if (programs.PIN_ROOT / name).exists():
        left.append(f"pins {programs.PIN_ROOT / name}")
    if LabRecord.path_for(name).exists():
        left.append(f"record {LabRecord.path_for(name)}")
    if rundir_for(VM_PREFIX + name).exists():
        left.append(f"VM run directory {rundir_for(VM_PREFIX + name)}")
    return left + [f"process {p}" for p in _processes_naming(name)]


def kill_rounds(engine: str, rounds: int, lab_name: str) -> list[tuple[float, list[str]]]:
    needs_root()
    rng = random.Random(SEED)
    links_before = links_on_host()
    bad = []
    for i in range(rounds):
        name = f"{lab_name}k{i}"
        argv = [*TOALAB, "up", str(TOPOLOGIES / "fullnat-4to4.yaml"), "--name", name, "--engine", engine]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        at = rng.uniform(0, UP_S[engine])
        try:
            proc.wait(at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        r = subprocess.run([*TOALAB, "down", "--all"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        left = leftovers(name, links_before)
        if left:
            bad.append((round(at, 2), left))
    return bad


@pytest.mark.host
def test_kill_9_during_up_on_the_host_engine(lab_name: str) -> None:
    assert kill_rounds("host", 5, lab_name) == []


@pytest.mark.extended
@pytest.mark.host
def test_kill_9_during_up_50_times_on_the_host_engine(lab_name: str) -> None:
    assert kill_rounds("host", 50, lab_name) == []


@pytest.mark.extended
@pytest.mark.vm
def test_kill_9_during_up_50_times_on_the_vm_engine(lab_name: str) -> None:
    assert kill_rounds("vm", 50, lab_name) == []
