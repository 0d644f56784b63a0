"""Host engine: network namespaces on the running kernel, built over netlink.

Each namespace gets one pyroute2 socket opened from inside it (setns on this
thread), so the whole topology is built with a few hundred netlink messages
and no helper processes.  Programs run on a node through ``ip netns exec``,
which execs the program itself: a job's PID is the program's PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO, BinaryIO

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from lab import netns, programs
from lab.engines.base import Engine, ExecResult, Job
from lab.errors import LabError
from lab.kernel import KernelHandle
from lab.plan import NS_PREFIX, Addr, Bridge, Netns, Plan, Port, RouteAdd, Sysctl, Up, Veth
from lab.topology import Topology

_IFA_F_NODAD = 0x02


class HostJob(Job):
    def __init__(self, argv: list[str], proc: subprocess.Popen[bytes], out: IO[bytes], err: IO[bytes]):
        self.argv = argv
        self.proc = proc
        self._out = out
        self._err = err

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"'{' '.join(self.argv)}' still running after {timeout} s") from None

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> tuple[str, str]:
        def read(f: IO[bytes]) -> str:
            f.seek(0)
            return f.read().decode(errors="replace")

        return read(self._out), read(self._err)


class HostEngine(Engine):
    kind = "host"

    def up(self, topo: Topology) -> None:
        plan = Plan.build(topo, self.name)
        clash = [ns for ns in plan.namespaces.values() if netns.exists(ns)]
        if clash:
            raise LabError(
                f"namespace {clash[0]} already exists: lab '{self.name}' is up or was left over; "
                f"run 'toalab down {self.name}' (or 'toalab down --all') first"
            )
        self.record.save()  # before building: a crash halfway stays findable
        try:
            self._execute(plan)
            self._attach_programs(plan)
        except BaseException:
            self.down()
            raise
        self.record.state = "up"
        self.record.save()

    def _execute(self, plan: Plan) -> None:
        netns.create([op.ns for op in plan.ops if isinstance(op, Netns)])
        sockets: dict[str, _Netlink] = {}
        try:
            for ns in plan.namespaces.values():
                with netns.entered(ns):
                    sockets[ns] = _Netlink(IPRoute())
            failpoint = _failpoint()
            entered: str | None = None  # consecutive sysctls of a namespace share one setns
            with contextlib.ExitStack() as stack:
                for n, op in enumerate(plan.ops):
                    if failpoint and n == failpoint[1]:
                        _trip(failpoint[0], n)
                    if isinstance(op, Netns):
                        continue
                    if entered and (not isinstance(op, Sysctl) or op.ns != entered):
                        stack.close()
                        entered = None
                    try:
                        if isinstance(op, Sysctl):
                            if entered is None:
                                stack.enter_context(netns.entered(op.ns))
                                entered = op.ns
                            netns.write_sysctl(op.key, op.value)
                        else:
                            _apply(op, sockets[op.ns])
                    except (NetlinkError, OSError) as e:
                        raise LabError(f"building {op.ns}: {_describe(op)} failed: {e}") from None
        finally:
            for s in sockets.values():
                s.ipr.close()

    def down(self) -> None:
        # what runs inside (a server left in the background) would keep the namespaces alive
        netns.end_processes(list(self.record.namespaces.values()))
        for ns in self.record.namespaces.values():
            netns.remove(ns)
        programs.teardown(self.kernel(), self.name)
        self.record.forget()

    @classmethod
    def cleanup_leftovers(cls) -> list[str]:
        removed = []
        left = netns.listing(NS_PREFIX)
        netns.end_processes(left)
        for ns in left:
            netns.remove(ns)
            removed.append(ns)
        return removed + programs.teardown_all(KernelHandle())

    # -- running programs -----------------------------------------------------------
    def _argv(self, node: str, argv: Sequence[str]) -> list[str]:
        if not argv:
            raise LabError("no command given (use: toalab exec NODE -- CMD ...)")
        return ["ip", "netns", "exec", self.record.ns(node), *argv]

    def exec(
        self, node: str, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None
    ) -> ExecResult:
        full = self._argv(node, argv)
        try:
            p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            raise LabError(f"{node}: '{' '.join(argv)}' timed out after {timeout} s") from None
        return ExecResult(list(argv), p.returncode, p.stdout, p.stderr)

    def spawn(self, node: str, argv: Sequence[str]) -> HostJob:
        full = self._argv(node, argv)
        # the job owns these files and closes them with itself
        out = tempfile.TemporaryFile()  # noqa: SIM115
        err = tempfile.TemporaryFile()  # noqa: SIM115
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        return HostJob(list(argv), proc, out, err)

    def run_interactive(self, node: str, argv: Sequence[str]) -> int:
        return subprocess.call(self._argv(node, argv))

    def stream(self, node: str, argv: Sequence[str], out: BinaryIO) -> int:
        proc = subprocess.Popen(self._argv(node, argv), stdin=subprocess.DEVNULL, stdout=out)
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the terminal sent SIGINT to the program as well
            proc.send_signal(signal.SIGINT)
            return proc.wait()

    def shell(self, node: str) -> int:
        env = dict(os.environ, PS1=f"[{self.name}:{node}] \\w# ")
        return subprocess.call(
            [*self._argv(node, [os.environ.get("SHELL", "/bin/bash"), "--norc", "-i"])], env=env
        )


def _failpoint() -> tuple[str, int] | None:
    """TOALAB_FAILPOINT=fail:N|stall:N - test hook that stops a build at op N."""
    spec = os.environ.get("TOALAB_FAILPOINT", "")
    kind, _, n = spec.partition(":")
    return (kind, int(n)) if kind in ("fail", "stall") and n.isdigit() else None


def _trip(kind: str, n: int) -> None:
    if kind == "fail":
        raise LabError(f"failpoint: build stopped at operation {n}")
    print(f"toalab: failpoint: stalled at operation {n}", file=sys.stderr, flush=True)
    while True:  # stall until killed
        time.sleep(3600)


class _Netlink:
    """A namespace's netlink socket with a name -> ifindex cache.

    One link dump per namespace instead of one lookup per operation: the
    lookups were a third of the build time.
    """

    def __init__(self, ipr: IPRoute) -> None:
        self.ipr = ipr
        self._index: dict[str, int] = {}

    def index(self, ifname: str) -> int:
        if ifname not in self._index:
            self._index = {link.get("ifname"): int(link["index"]) for link in self.ipr.get_links()}
            if ifname not in self._index:
                raise LabError(f"no interface {ifname}")
        return self._index[ifname]


def _apply(op: object, nl: _Netlink) -> None:
    ipr = nl.ipr
    match op:
        case Veth():
            peer: dict[str, object] = {
                "ifname": op.peer_ifname,
                "net_ns_fd": netns.path(op.peer_ns),
                "mtu": op.mtu,
            }
            if op.peer_mac:
                peer["address"] = op.peer_mac
            mac = {"address": op.mac} if op.mac else {}
            ipr.link("add", ifname=op.ifname, kind="veth", mtu=op.mtu, peer=peer, **mac)
        case Bridge():
            ipr.link("add", ifname=op.ifname, kind="bridge")
        case Port():
            ipr.link("set", index=nl.index(op.ifname), master=nl.index(op.bridge))
        case Up():
            ipr.link("set", index=nl.index(op.ifname), state="up")
        case Addr():
            ipr.addr(
                "add",
                index=nl.index(op.ifname),
                address=str(op.addr.ip),
                prefixlen=op.addr.network.prefixlen,
                flags=_IFA_F_NODAD if op.addr.version == 6 else 0,
            )
        case RouteAdd():
            kw: dict[str, object] = {"dst": str(op.dst)}
            if op.via is not None:
                kw["gateway"] = str(op.via)
            if op.dev:
                kw["oif"] = nl.index(op.dev)
            ipr.route("add", **kw)
        case _:
            raise TypeError(f"host engine cannot apply {op!r}")


def _describe(op: object) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in vars(op).items() if k != "ns")
    return f"{type(op).__name__.lower()}({fields})"
