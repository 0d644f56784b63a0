"""What every engine (host, vm, docker, mininet) provides, and the lab record.

An engine is where a topology's kernel lives.  ``up`` builds a topology,
``exec``/``spawn`` run programs on its nodes, ``down`` removes everything it
made.  The ``LabRecord`` persisted under /run/toalab lets a later CLI
invocation (``toalab exec`` after ``toalab up``) reattach to a running lab;
it is written before anything is built so that a lab killed halfway can
still be found and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from lab import programs
from lab.errors import LabError
from lab.kernel import ExecResult, Job, KernelHandle
from lab.plan import Plan
from lab.topology import Topology

STATE_DIR = Path(os.environ.get("TOALAB_STATE_DIR", "/run/toalab"))


@dataclass
class LabRecord:
    name: str
    engine: str
    topology: str  # the path it was loaded from, or "<python>"
    namespaces: dict[str, str]  # node -> namespace (in the engine's kernel)
    roles: dict[str, str]
    state: str = "building"  # building | up
    created: float = field(default_factory=time.time)
    owner_pid: int = field(default_factory=os.getpid)
    engine_data: dict[str, Any] = field(default_factory=dict)
    topology_text: str = ""  # the topology's YAML as it was at up (empty: built in Python)
    helpers: dict[str, list[int]] = field(default_factory=dict)  # name -> [pid, start time]: ended at down

    @staticmethod
    def path_for(name: str) -> Path:
        return STATE_DIR / f"{name}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path_for(self.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.path_for(self.name))

    def forget(self) -> None:
        self.path_for(self.name).unlink(missing_ok=True)

    @classmethod
    def load(cls, name: str) -> LabRecord:
        p = cls.path_for(name)
        try:
            rec = cls(**json.loads(p.read_text()))
            rec.check(name)
            return rec
        except FileNotFoundError:
            raise LabError(f"no lab named '{name}' (running: {_names()})") from None
        except (ValueError, TypeError) as e:
            raise LabError(f"{p}: corrupt lab record ({e}); remove it with 'toalab down --all'") from None

    def check(self, name: str) -> None:
        """What a record read from disk names reaches ip netns, rm -rf and signals:
        its name must be the file's, its namespaces the lab's, its VM a plain name."""
        from lab.plan import LAB_NAME, ns_name  # the plan imports the engines' package
        from lab.topology import NODENAME

        if self.name != name or not LAB_NAME.match(name):
            raise ValueError(f"lab name {self.name!r} in the record of {name!r}")
        for node, ns in self.namespaces.items():
            if not NODENAME.match(node) or ns != ns_name(name, node):
                raise ValueError(f"namespace {ns!r} of node {node!r} is not this lab's")
        vm = self.engine_data.get("vm")
        if vm is not None and not (isinstance(vm, str) and _VM_NAME.match(vm)):
            raise ValueError(f"VM name {vm!r}")

    @classmethod
    def all(cls) -> list[LabRecord]:
        out = []
        for n in _list():
            try:
                out.append(cls.load(n))
            except LabError:
                continue
        return out

    @classmethod
    def corrupt(cls) -> list[Path]:
        """Record files that do not load: down --all removes them (only them)."""
        out = []
        for n in _list():
            try:
                cls.load(n)
            except LabError:
                out.append(cls.path_for(n))
        return out

    def ns(self, node: str) -> str:
        try:
            return self.namespaces[node]
        except KeyError:
            raise LabError(
                f"unknown node '{node}' in lab '{self.name}' (nodes: {', '.join(self.namespaces)})"
            ) from None


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): with the pid, its identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def helper_log(record: LabRecord, name: str) -> Path:
    return STATE_DIR / f"{record.name}.{name}.log"


def start_helper(record: LabRecord, name: str, argv: list[str]) -> tuple[int, Path]:
    """Run argv in the background for the lab's lifetime (its down ends it and
    removes its log); returns its pid and log."""
    log = helper_log(record, name)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    record.helpers[name] = [proc.pid, start_time(proc.pid) or 0]
    record.save()
    return proc.pid, log


def stop_helpers(record: LabRecord) -> None:
    """End the helpers the lab started: by pid, and only while the pid is still that process."""
    for name, (pid, started) in record.helpers.items():
        helper_log(record, name).unlink(missing_ok=True)
        if start_time(pid) != started:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our own child (the Python API): reap it
            if start_time(pid) != started:
                break
            time.sleep(0.02)
    record.helpers.clear()


_VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a directory name under the VM run root


def _list() -> list[str]:
    if not STATE_DIR.is_dir():
        return []
    return sorted(p.stem for p in STATE_DIR.glob("*.json"))


def _names() -> str:
    return ", ".join(_list()) or "none"


class Engine(ABC):
    kind: ClassVar[str]

    def __init__(self, record: LabRecord) -> None:
        self.record = record

    @property
    def name(self) -> str:
        return self.record.name

    @abstractmethod
    def up(self, topo: Topology) -> None:
        """Build the topology; on failure remove whatever was built, then raise."""

    @abstractmethod
    def down(self) -> None:
        """Remove everything this lab made. Idempotent."""

    @abstractmethod
    def exec(
        self, node: str, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None
    ) -> ExecResult: ...

    @abstractmethod
    def spawn(self, node: str, argv: Sequence[str]) -> Job: ...

    @abstractmethod
    def shell(self, node: str) -> int:
        """An interactive shell on the node, attached to this terminal."""

    @abstractmethod
    def run_interactive(self, node: str, argv: Sequence[str]) -> int:
        """Run argv on the node with this process's stdin/stdout/stderr."""

    @abstractmethod
    def stream(self, node: str, argv: Sequence[str], out: BinaryIO) -> int:
        """Run argv on the node, its stdout byte for byte into `out` (no terminal in
        between), its stderr to ours; Ctrl-C stops it cleanly (SIGINT, then its exit
        code)."""

    def status(self) -> dict[str, Any]:
        r = self.record
        return {
            "name": r.name,
            "engine": r.engine,
            "state": r.state,
            "topology": r.topology,
            "nodes": {n: {"role": r.roles.get(n, "?"), "netns": ns} for n, ns in r.namespaces.items()},
        }

    def kernel(self) -> KernelHandle:
        """The kernel the lab's network lives in: the running one here (the VM engine's
        is its guest's)."""
        return KernelHandle()

    def _attach_programs(self, plan: Plan) -> None:
        """The plan's programs phase (gateway data planes, the fullnat LB), run in
        this engine's kernel.  Programs die with their namespaces; ``down``
        removes the pins (programs.teardown)."""
        programs.apply(self.kernel(), plan.programs)

    @classmethod
    def cleanup_leftovers(cls) -> list[str]:
        """Remove what crashed labs of this engine left; return what was removed."""
        return []
