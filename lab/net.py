"""A running lab (as Mininet's net.py holds its network): a topology brought up on
an engine, used, taken down.  The Python API; also ``from lab import Lab``.

    with Lab.up(topology.load("topologies/fullnat-4to4.yaml")) as lab:
        lab.exec("client", ["ping", "-c1", "192.0.2.11"]).check()
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from lab import topology
from lab.engines import Engine, ExecResult, Job, LabRecord, engine_class, stop_helpers
from lab.errors import LabError
from lab.kernel import KernelHandle
from lab.plan import LAB_NAME, ns_name
from lab.topology import Topology


class Lab:
    def __init__(self, engine: Engine, topology: Topology | None = None) -> None:
        self.engine = engine
        self.topology = topology

    @property
    def name(self) -> str:
        return self.engine.name

    @classmethod
    def up(
        cls, topo: Topology, name: str | None = None, engine: str = "host", **engine_opts: Any
    ) -> Lab:
        name = name or topo.name
        if not LAB_NAME.match(name):
            raise LabError(
                f"lab name '{name}' must be 1-24 chars of a-z, 0-9, '-', '_' (choose one with --name)"
            )
        if LabRecord.path_for(name).exists():
            raise LabError(f"lab '{name}' is already up; 'toalab down {name}' or pick --name")
        record = LabRecord(
            name=name,
            engine=engine,
            topology=topo.source,
            namespaces={},
            roles={n.name: n.role for n in topo.nodes.values()},
            engine_data=dict(engine_opts),
            topology_text=topo.text,
        )
        record.namespaces = {n: ns_name(name, n) for n in topo.nodes}
        eng = engine_class(engine)(record)
        with _interrupts_as_errors():
            eng.up(topo)
        return cls(eng, topo)

    @classmethod
    def attach(cls, name: str | None = None) -> Lab:
        """Reattach to a running lab; without a name, to the only one."""
        if name is None:
            labs = LabRecord.all()
            if not labs:
                raise LabError("no lab is up (start one with 'toalab up TOPOLOGY')")
            if len(labs) > 1:
                names = ", ".join(r.name for r in labs)
                raise LabError(f"several labs are up ({names}); name one with --lab NAME")
            record = labs[0]
        else:
            record = LabRecord.load(name)
        topo = topology.loads(record.topology_text, record.topology) if record.topology_text else None
        return cls(engine_class(record.engine)(record), topo)

    def down(self) -> None:
        with _interrupts_as_errors():
            stop_helpers(self.engine.record)
            self.engine.down()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def exec(
        self, node: str, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None
    ) -> ExecResult:
        return self.engine.exec(node, argv, timeout=timeout, input=input)

    def ns(self, node: str) -> str:
        """The network namespace of a node (in the lab's kernel)."""
        return self.engine.record.ns(node)

    def kernel(self) -> KernelHandle:
        """The kernel the lab lives in (lab/kernel.py), on any engine."""
        return self.engine.kernel()

    def spawn(self, node: str, argv: Sequence[str]) -> Job:
        return self.engine.spawn(node, argv)

    def status(self) -> dict[str, Any]:
        return self.engine.status()


@contextmanager
def lab_up(topo: Topology, **kw: Any) -> Iterator[Lab]:
    lab = Lab.up(topo, **kw)
    try:
        yield lab
    finally:
        lab.down()


@contextmanager
def _interrupts_as_errors() -> Iterator[None]:
    """SIGTERM/SIGHUP raise like Ctrl-C, so cleanup code runs for them too."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals alone
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
