"""What every engine (host, vm, docker, mininet) provides, and the lab record.

An engine is where a topology's kernel lives.  ``up`` builds a topology,
``exec``/``spawn`` run programs on its nodes, ``down`` removes everything it
made.  The ``LabRecord`` persisted under /run/toalab lets a later CLI
invocation (``toalab exec`` after ``toalab up``) reattach to a running lab;
it is written before anything is built so that a lab killed halfway can
still be found and removed.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
            return cls(**json.loads(p.read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab named '{name}' (running: {_names()})") from None
        except (ValueError, TypeError) as e:
            raise LabError(f"{p}: corrupt lab record ({e}); remove it with 'toalab down --all'") from None

    @classmethod
    def all(cls) -> list[LabRecord]:
        out = []
        for n in _list():
            try:
                out.append(cls.load(n))
            except LabError:
                continue
        return out

    def ns(self, node: str) -> str:
        try:
            return self.namespaces[node]
        except KeyError:
            raise LabError(
                f"unknown node '{node}' in lab '{self.name}' (nodes: {', '.join(self.namespaces)})"
            ) from None


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
