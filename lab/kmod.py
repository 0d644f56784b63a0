"""The TOA/UOA modules in a lab: build, load/unload, stats, the kernel log.

Shared by tests/test_kmod_vm.py, bench/bench_kmod.py and the demo; the
traffic that exercises them is lab/traffic.py's.

    art = kmod.build()                             # modules + static examples for the VM kernel
    with VMSession() as vm, vm.lab(topo) as lab:
        kmod.load(vm, "toa", art, toa_map_table_bits=14)
        traffic.tcp_exchange(lab, "rs1", "lb", "192.0.2.11", 8080, opt=(...), artifacts=art)
        kmod.stats(lab, "toa")["parsed_v4_in4"]

A module is per kernel, so load/unload/stats accept a Lab (its kernel
handle) or a VMSession (the guest's root namespace).  The guest runs the
static binaries straight from the host's build tree (the host's / over 9p).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from lab.errors import LabError
from lab.kernel import ExecResult

if TYPE_CHECKING:
    from lab.net import Lab
    from lab.vm.session import VMSession

    Target = Union[Lab, VMSession]  # noqa: UP007 (a string annotation alias)

REPO = Path(__file__).resolve().parent.parent
KMOD = REPO / "kmod"
MODULES = ("toa", "uoa")
# test-only modules, built beside them (kmod/tests/): name -> directory under the build tree
TEST_MODULES = {"ipmodify_holder": "tests/ipmodify_holder"}
PROGRAMS = ("tcp_server", "tcp_client", "udp_server", "udp_client", "tcp_proxy", "toa_bench", "test_toa_opt")


def userspace() -> Programs:
    """The example programs alone, static, for the host engine (no kernel needed)."""
    out = REPO / "build" / "kmod" / "userspace"
    _make(["userspace", "STATIC=1", f"BUILD={out / 'bin'}"])
    return Programs(out)


@dataclass(frozen=True)
class Programs:
    """The static example programs and tools under root/bin."""

    root: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)


def out_dir(release: str) -> Path:
    """build/kmod/<release>: the modules built for that kernel and static userspace."""
    return REPO / "build" / "kmod" / release


@dataclass(frozen=True)
class Artifacts(Programs):
    """What build() made for one kernel release: the modules, and the programs."""

    release: str = ""

    def module(self, name: str) -> Path:
        if name in TEST_MODULES:
            return self.root / TEST_MODULES[name] / f"{name}.ko"
        if name not in MODULES:
            raise LabError(f"unknown module '{name}' (modules: {', '.join(MODULES)})")
        return self.root / name / f"{name}.ko"

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
    from lab.progress import Ticker
    from lab.vm.image import ImageBuilder

    ticker = Ticker(prefix="toalab kmod")  # a terminal sees the steps; a log nothing
    image = ImageBuilder(kernel, flavour=flavour, progress=ticker).build()
    art = Artifacts(out_dir(image.release), image.release)
    ticker(f"toa.ko, uoa.ko for {image.release}")
    _make(["modules-out", f"KDIR={image.headers}", f"MODOUT={art.root}"])
    ticker("libipopt and the example programs (static)")
    _make(["userspace", "STATIC=1", f"BUILD={art.root / 'bin'}"])
    ticker.done()
    return art.check()


def artifacts_for(release: str) -> Artifacts:
    return Artifacts(out_dir(release), release).check()


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


TRUSTED = re.compile(r"^(none|[0-9A-Fa-f:.,/]*)$")  # what may reach the `trusted` parameter


def set_trusted(target: Target, name: str, trusted: str) -> None:
    """The loaded module's `trusted` list, at run time ("": every source; kmod/README.md)."""
    if not TRUSTED.match(trusted):
        raise LabError(f"trusted {trusted!r}: a comma list of prefixes, or none")
    path = f"/sys/module/{name}/parameters/trusted"
    r = sh(target, f"printf '%s\\n' '{trusted}' > {path}", timeout=30)  # a bare newline: the empty list
    if r.returncode != 0:
        raise LabError(f"{name}: the kernel refused trusted={trusted!r} ({r.stderr.strip()}; see dmesg)")


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
