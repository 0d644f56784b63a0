"""The TOA/UOA modules in a lab: build, load/unload, stats, one exchange.

Shared by tests/test_kmod_vm.py, bench/bench_kmod.py and the demo.

    art = kmod.build()                             # modules + static examples for the VM kernel
    with VMSession() as vm, vm.lab(topo) as lab:
        kmod.load(vm, "toa", art, toa_map_table_bits=14)
        ev = kmod.tcp_exchange(lab, "rs1", "lb", "192.0.2.11", 8080,
                               opt=("10.0.0.1:1", "10.0.0.2:2"), artifacts=art).event
        ev["peer"]  # {"family": "ipv4", "addr": "10.0.0.1", "port": 1}
        kmod.stats(lab, "toa")["parsed_v4_in4"]

Engine-agnostic: programs run through Lab.exec / Lab.spawn; a module is
per kernel, so load/unload/stats accept a Lab (its kernel handle) or
a VMSession (the guest's root namespace).  The guest runs the static
binaries straight from the host's build tree (the host's / over 9p).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from lab.errors import LabError
from lab.kernel import ExecResult
from lab.net import Lab

if TYPE_CHECKING:
    from lab.vm.session import VMSession

    Target = Union[Lab, VMSession]  # noqa: UP007 (a string annotation alias)

REPO = Path(__file__).resolve().parent.parent
KMOD = REPO / "kmod"
MODULES = ("toa", "uoa")
# test-only modules, built beside them (kmod/tests/): name -> directory under the build tree
TEST_MODULES = {"ipmodify_holder": "tests/ipmodify_holder"}
PROGRAMS = ("tcp_server", "tcp_client", "udp_server", "udp_client", "toa_bench", "test_toa_opt")


def out_dir(release: str) -> Path:
    """build/kmod/<release>: the modules built for that kernel and static userspace."""
    return REPO / "build" / "kmod" / release


@dataclass(frozen=True)
class Artifacts:
    """What build() made for one kernel release."""

    release: str
    root: Path

    def module(self, name: str) -> Path:
        if name in TEST_MODULES:
            return self.root / TEST_MODULES[name] / f"{name}.ko"
        if name not in MODULES:
            raise LabError(f"unknown module '{name}' (modules: {', '.join(MODULES)})")
        return self.root / name / f"{name}.ko"

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def files(self) -> list[Path]:
        """Every module and program (what a guest without the host's / needs copied in)."""
        mods = [*MODULES, *TEST_MODULES]
        return [*map(self.module, mods), *(Path(self.bin(p)) for p in PROGRAMS)]

    def check(self) -> Artifacts:
        missing = [str(p) for p in self.files() if not p.exists()]
        if missing:
            raise LabError(f"not built: {', '.join(missing)} (run lab.kmod.build())")
        return self


def build(kernel: str | None = None, *, flavour: str | None = None) -> Artifacts:
    """Build toa.ko/uoa.ko against the headers of the VM kernel `kernel` (a series,
    series-flavour or release; None: the default) and the static examples.

    Nothing is rebuilt when nothing changed (make + Kbuild dependency tracking)."""
    from lab.vm.image import ImageBuilder

    image = ImageBuilder(kernel, flavour=flavour, progress=None).build()
    art = Artifacts(image.release, out_dir(image.release))
    _make(["modules-out", f"KDIR={image.headers}", f"MODOUT={art.root}"])
    _make(["userspace", "STATIC=1", f"BUILD={art.root / 'bin'}"])
    return art.check()


def artifacts_for(release: str) -> Artifacts:
    return Artifacts(release, out_dir(release)).check()


def _make(args: Sequence[str]) -> None:
    p = subprocess.run(["make", "-s", "-C", str(KMOD), *args], capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise LabError(f"make -C kmod {' '.join(args)} failed (exit {p.returncode}):\n{tail}")


# -- running things on a lab or a guest ------------------------------------------------------
def run(target: Target, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
    """Run argv in the target's kernel (a module is per kernel): a lab's, or a guest's."""
    return target.kernel().exec(list(argv), timeout=timeout)


def sh(target: Target, script: str, *, timeout: float = 60.0) -> ExecResult:
    return run(target, ["sh", "-c", script], timeout=timeout)


def release(target: Target) -> str:
    return run(target, ["uname", "-r"], timeout=30).check().stdout.strip()


def loaded(target: Target) -> set[str]:
    mods = run(target, ["cat", "/proc/modules"], timeout=30).check().stdout
    return {line.split()[0] for line in mods.splitlines() if line.split()[0] in MODULES}


class Unsupported(LabError):
    """The module refused this kernel (its one dmesg line says why)."""


def load(target: Target, name: str, artifacts: Artifacts | None = None, **params: object) -> None:
    """insmod the module built for the target's kernel, with module parameters.

    A module that refuses the kernel says why in one "<name>: not loading: ..." line
    of dmesg; that raises Unsupported with the line."""
    art = artifacts or artifacts_for(release(target))
    argv = ["insmod", str(art.module(name)), *(f"{k}={v}" for k, v in params.items())]
    r = run(target, argv, timeout=60)
    if r.returncode != 0:
        log = run(target, ["dmesg"], timeout=30).stdout.splitlines()
        why = next((ln.split("] ", 1)[-1] for ln in reversed(log) if f"{name}: not loading:" in ln), None)
        if why:
            raise Unsupported(why)
        raise LabError(f"insmod {name} failed (exit {r.returncode}): {r.stderr.strip()}")


def unload(target: Target, name: str, *, missing_ok: bool = False) -> None:
    r = run(target, ["rmmod", name], timeout=60)
    if r.returncode != 0 and not (missing_ok and name not in loaded(target)):
        raise LabError(f"rmmod {name} failed (exit {r.returncode}): {r.stderr.strip()}")


def parse_stats(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = int(parts[1])
    return out


def stats(target: Target, name: str) -> dict[str, int]:
    """/proc/net/<name>_stats as {counter: value} ({} when the module is not loaded)."""
    r = run(target, ["sh", "-c", f"cat /proc/net/{name}_stats 2>/dev/null || true"], timeout=30)
    return parse_stats(r.check().stdout)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that changed, after - before."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def dmesg_mark(target: Target) -> int:
    """Where the kernel log is now: pass it to dmesg_problems(since=) to judge only what
    came after (a guest kernel's own boot warnings are not the modules' doing)."""
    return len(run(target, ["dmesg"], timeout=30).check().stdout.splitlines())


def dmesg_problems(target: Target, since: int = 0) -> list[str]:
    """Kernel log lines that say something went wrong (WARNING, BUG, Oops, ...)."""
    out = run(target, ["dmesg"], timeout=30).check().stdout
    return [line for line in out.splitlines()[since:] if _DMESG_BAD.search(line)]


_DMESG_BAD = re.compile(
    r"\bWARNING:|\bBUG[: ]|\bOops\b|general protection fault|Call Trace:|rcu.*stall|"
    r"refcount_t:|list_(?:add|del) corruption|KASAN|UBSAN|kernel panic|Kernel panic"
)


# -- exchanges -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Client:
    """One client run: the option (CIP:CPORT, VIP:VPORT), raw option bytes, or none."""

    opt: tuple[str, str] | None = None
    raw_opt: str | None = None
    extra: tuple[str, ...] = ()

    def argv(self, program: str, host: str, port: int) -> list[str]:
        argv = [program, "--json"]
        if self.opt:
            argv += ["--opt", *self.opt]
        if self.raw_opt:
            argv += ["--raw-opt", self.raw_opt]
        return [*argv, *self.extra, host, str(port)]


@dataclass
class Exchange:
    """The server's events for one client, and that client's own events."""

    proto: str
    server: list[dict[str, Any]]
    client: list[dict[str, Any]]
    server_output: str = ""
    client_output: str = ""

    @property
    def event(self) -> dict[str, Any]:
        """The server's accept (TCP) or datagram (UDP) event."""
        want = "accept" if self.proto == "tcp" else "datagram"
        for ev in self.server:
            if ev.get("event") == want:
                return ev
        raise LabError(f"the {self.proto} server reported no {want} event: {self.server_output!r}")

    def client_event(self, name: str) -> dict[str, Any]:
        for ev in self.client:
            if ev.get("event") == name:
                return ev
        raise LabError(f"the {self.proto} client reported no {name} event: {self.client_output!r}")


@dataclass
class _Split:
    per_client: list[list[dict[str, Any]]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)


def events(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


MARK = "--toalab-client--"


def exchanges(
    lab: Lab,
    proto: str,
    server_node: str,
    client_node: str,
    host: str,
    port: int,
    clients: Sequence[Client],
    *,
    artifacts: Artifacts,
    server_family: str | None = None,
    timeout: float = 60.0,
) -> list[Exchange]:
    """Start one server (--json --count N) on server_node, run the N clients one after
    the other on client_node (one command), return one Exchange per client.

    The server listens on IPv4 or IPv6 after `host`'s family, or `server_family`
    ("-4", "-6": dual-stack, so an IPv4 connection shows v4-mapped addresses)."""
    if proto not in ("tcp", "udp"):
        raise LabError(f"proto must be tcp or udp, not {proto!r}")
    n = len(clients)
    family = server_family or ("-6" if ":" in host else "-4")
    srv = [artifacts.bin(f"{proto}_server"), family, "--json", "--count", str(n)]
    if proto == "tcp":
        srv += ["--timeout", "5"]
    srv.append(str(port))
    job = lab.spawn(server_node, srv)
    try:
        wait_for(job, '"event":"listening"', 15.0, f"{proto}_server on {server_node}")
        prog = artifacts.bin(f"{proto}_client")
        script = "\n".join(
            f"echo {MARK}; " + shlex.join(c.argv(prog, host, port)) for c in clients
        )  # one client after the other, each marked
        res = lab.exec(client_node, ["sh", "-c", script], timeout=timeout)
        split = _split_clients(res.stdout, n)
        failed = [i for i, evs in enumerate(split.per_client) if any(e.get("event") == "error" for e in evs)]
        if failed:
            raise LabError(
                f"{proto}_client #{failed[0]} on {client_node} failed: {split.raw[failed[0]].strip()} "
                f"{res.stderr.strip()}"
            )
        code = job.wait(timeout=15.0)
    finally:
        if job.running:
            job.terminate()
    out, err = job.output()
    sevents = events(out)
    if code != 0:
        raise LabError(f"{proto}_server on {server_node} exited {code}: {out}{err}")
    want = "accept" if proto == "tcp" else "datagram"
    accepted = [ev for ev in sevents if ev.get("event") == want]
    result = []
    for i in range(n):
        evs = [ev for ev in sevents if ev.get("event") != want]
        evs += [ev for ev in accepted if ev.get("n") == i]
        evs += [ev for ev in sevents if ev.get("event") == "close" and ev.get("n") == i]
        result.append(Exchange(proto, evs, split.per_client[i], out, split.raw[i]))
    return result


def tcp_exchange(
    lab: Lab, server_node: str, client_node: str, host: str, port: int,
    *, opt: tuple[str, str] | None = None, raw_opt: str | None = None, artifacts: Artifacts,
) -> Exchange:  # fmt: skip
    """One TCP connection; `.event` is the server's parsed accept event."""
    c = Client(opt=opt, raw_opt=raw_opt)
    return exchanges(lab, "tcp", server_node, client_node, host, port, [c], artifacts=artifacts)[0]


def udp_exchange(
    lab: Lab, server_node: str, client_node: str, host: str, port: int,
    *, opt: tuple[str, str] | None = None, raw_opt: str | None = None, artifacts: Artifacts,
) -> Exchange:  # fmt: skip
    """One datagram; `.event` is the server's datagram event (with the UOA lookup)."""
    c = Client(opt=opt, raw_opt=raw_opt, extra=("--once",))
    return exchanges(lab, "udp", server_node, client_node, host, port, [c], artifacts=artifacts)[0]


def _split_clients(stdout: str, n: int) -> _Split:
    chunks = stdout.split(MARK + "\n")[1:]
    if len(chunks) != n:
        raise LabError(f"expected the output of {n} clients, got {len(chunks)}: {stdout!r}")
    return _Split([events(c) for c in chunks], chunks)


def wait_for(job: Any, needle: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        out, err = job.output()
        if needle in out:
            return
        if not job.running:
            raise LabError(f"{what} ended before {needle}: {out}{err}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise LabError(f"{what}: no {needle} within {timeout} s")
