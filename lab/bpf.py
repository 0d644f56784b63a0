"""BPF helpers for the lab: build the XDP objects, run them with
BPF_PROG_TEST_RUN, attach them to interfaces in namespaces, read their maps.

Generic on purpose: the gateway-ping program and the fullnat LB both use
it.  ``run_xdp`` drives ``bpf/build/xdp_test_run`` (one JSON object per
call); attaching goes through iproute2 (``ip -n NS link set dev X xdpdrv obj
FILE sec SEC``) and live maps through bpftool, both of which the kernels the
lab targets (host 6.x, Debian 6.1 guest) ship.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError

ROOT = Path(__file__).resolve().parents[1]
BPF_DIR = ROOT / "bpf"
BUILD_DIR = BPF_DIR / "build"
TEST_RUN = BUILD_DIR / "xdp_test_run"

XDP_ACTIONS = ("XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT")
XDP_MODES = {"drv": "xdpdrv", "native": "xdpdrv", "generic": "xdpgeneric", "skb": "xdpgeneric"}


class BpfError(LabError):
    """Building, loading, running or attaching a BPF program failed."""


# -- building ------------------------------------------------------------------------


def build(target: str = "all", *, bpf_dir: Path = BPF_DIR) -> None:
    """Run ``make -C bpf TARGET`` (a no-op when up to date), serialised by a lock
    so that concurrent test sessions do not write the same objects."""
    build_dir = bpf_dir / "build"  # ignored by git, like everything built
    build_dir.mkdir(exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        p = subprocess.run(
            ["make", "-s", "-C", str(bpf_dir), target], capture_output=True, text=True
        )
    if p.returncode != 0:
        raise BpfError(f"make -C {bpf_dir} {target} failed:\n{p.stdout}{p.stderr}".rstrip())


def obj_path(name: str, *, build_first: bool = True) -> Path:
    """bpf/build/NAME.o, built on demand (NAME without .o, e.g. 'gwping')."""
    if build_first:
        build()
    p = BUILD_DIR / f"{name}.o"
    if not p.exists():
        raise BpfError(f"{p}: no such BPF object (is bpf/{name}.c in bpf/Makefile PROGS?)")
    return p


# -- BPF_PROG_TEST_RUN -----------------------------------------------------------------


@dataclass(frozen=True)
class MapEntry:
    key: bytes
    values: tuple[bytes, ...]  # one per possible CPU for per-CPU maps, else one

    @property
    def value(self) -> bytes:
        return self.values[0]

    def u64_sum(self) -> int:
        """Sum of the little-endian u64 at the start of every CPU's value."""
        return sum(int.from_bytes(v[:8], "little") for v in self.values)


@dataclass(frozen=True)
class XdpResult:
    retval: int
    action: str
    data_out: bytes
    duration_ns: int  # average per run over `repeat` runs
    repeat: int
    maps: dict[str, list[MapEntry]] = field(default_factory=dict)

    def counters(self, map_name: str) -> dict[int, int]:
        """A per-CPU array of u64 counters as {index: total over CPUs}."""
        return map_u64_counters(self.maps[map_name])


@dataclass(frozen=True)
class MapUpdate:
    map: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class LoadInfo:
    prog: str
    xlated_insns: int
    jited_bytes: int
    verified_insns: int


def map_u64_counters(entries: Iterable[MapEntry]) -> dict[int, int]:
    return {int.from_bytes(e.key, "little"): e.u64_sum() for e in entries}


def _tool() -> Path:
    build()
    return TEST_RUN


# Runs argv somewhere and returns (exit code, stdout, stderr): the running
# kernel by default, or e.g. a VM guest's (``VMSession.run``) to check a
# program against another kernel with the same tool and the same inputs.
Runner = Callable[[list[str], float], tuple[int, str, str]]


def local_runner(argv: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BpfError(f"{' '.join(argv[:4])} ... timed out after {timeout} s") from None
    return p.returncode, p.stdout, p.stderr


def _run_tool(argv: list[str], timeout: float, runner: Runner = local_runner) -> dict:
    code, out, err = runner(argv, timeout)
    if code != 0:
        raise BpfError(f"xdp_test_run failed ({code}):\n{err.strip()[-4000:]}")
    try:
        return json.loads(out)
    except ValueError as e:
        raise BpfError(f"xdp_test_run printed no JSON ({e}): {out[:200]!r}") from None


def _maps(doc: dict) -> dict[str, list[MapEntry]]:
    out: dict[str, list[MapEntry]] = {}
    for name, entries in doc.get("maps", {}).items():
        out[name] = [
            MapEntry(
                key=bytes.fromhex(e["key"]),
                values=tuple(bytes.fromhex(v) for v in e.get("values", [e.get("value", "")])),
            )
            for e in entries
        ]
    return out


def run_xdp_many(
    obj: str | Path,
    prog: str,
    pkts: Sequence[bytes],
    repeat: int = 1,
    *,
    map_updates: Sequence[MapUpdate] = (),
    dump_maps: Sequence[str] = (),
    ifindex: int | None = None,
    timeout: float = 120.0,
    runner: Runner = local_runner,
) -> list[XdpResult]:
    """Run PROG of OBJ once per packet (each `repeat` times) in one load of the
    object; map updates apply before the first run, dumps are taken after the
    last one (every result carries the same dump)."""
    if not pkts:
        raise BpfError("run_xdp_many: no packets")
    argv = [str(_tool()), str(obj), "--prog", prog, "--repeat", str(repeat)]
    for u in map_updates:
        argv += ["--map-update", u.map, u.key.hex(), u.value.hex()]
    for m in dump_maps:
        argv += ["--dump-map", m]
    if ifindex is not None:
        argv += ["--ifindex", str(ifindex)]
    for pkt in pkts:
        argv += ["--hex", bytes(pkt).hex()]
    doc = _run_tool(argv, timeout, runner)
    maps = _maps(doc)
    return [
        XdpResult(
            retval=r["retval"],
            action=r["action"],
            data_out=bytes.fromhex(r["data_out"]),
            duration_ns=r["duration_ns"],
            repeat=r["repeat"],
            maps=maps,
        )
        for r in doc["results"]
    ]


def run_xdp(
    obj: str | Path,
    prog: str,
    pkt: bytes,
    repeat: int = 1,
    *,
    map_updates: Sequence[MapUpdate] = (),
    dump_maps: Sequence[str] = (),
    ifindex: int | None = None,
) -> XdpResult:
    """One packet through PROG with BPF_PROG_TEST_RUN."""
    return run_xdp_many(
        obj, prog, [pkt], repeat, map_updates=map_updates, dump_maps=dump_maps, ifindex=ifindex
    )[0]


def load_check(obj: str | Path, prog: str, *, runner: Runner = local_runner) -> LoadInfo:
    """Load PROG into the running kernel (the verifier runs) and unload it."""
    doc = _run_tool([str(_tool()), str(obj), "--prog", prog, "--load-only"], 120.0, runner)
    return LoadInfo(doc["prog"], doc["xlated_insns"], doc["jited_bytes"], doc["verified_insns"])


# -- a kernel's interfaces, XDP attachments and live maps ---------------------------------


@dataclass(frozen=True)
class Sys:
    """Interfaces, XDP attachments and live maps of one kernel, reached
    through a runner: the running kernel by default, a VM guest's with a
    runner over its VMSession (lab.lb.runner_for).  The module functions
    below are the running kernel's."""

    runner: Runner = local_runner

    def run(self, argv: list[str], what: str) -> str:
        try:
            code, out, err = self.runner(argv, 60.0)
        except FileNotFoundError:
            raise BpfError(f"{what}: {argv[0]} is not installed") from None
        if code != 0:
            raise BpfError(f"{what} failed: {(err or out).strip()}")
        return out

    def ip(self, netns: str | None, args: list[str]) -> tuple[int, str, str]:
        return self.runner(["ip", *(["-n", netns] if netns else []), *args], 60.0)

    def link(self, netns: str | None, ifname: str) -> dict:
        code, out, err = self.ip(netns, ["-j", "-d", "link", "show", "dev", ifname])
        if code != 0:
            raise BpfError(f"no interface {ifname} in {netns or 'the root namespace'}: {err.strip()}")
        return json.loads(out)[0]

    def ifindex(self, netns: str | None, ifname: str) -> int:
        return int(self.link(netns, ifname)["ifindex"])

    def mac(self, netns: str | None, ifname: str) -> bytes:
        return bytes.fromhex(self.link(netns, ifname)["address"].replace(":", ""))

    def xdp_prog_id(self, netns: str | None, ifname: str) -> int | None:
        xdp = self.link(netns, ifname).get("xdp") or {}
        prog = xdp.get("prog") or {}
        if "id" in prog:
            return int(prog["id"])
        for att in xdp.get("attached", []):
            if "prog" in att:
                return int(att["prog"]["id"])
        return None

    def xdp_mode(self, netns: str | None, ifname: str) -> str | None:
        """'drv', 'generic', 'hw' or None as iproute2 reports the attachment."""
        mode = (self.link(netns, ifname).get("xdp") or {}).get("mode")
        return {1: "drv", 2: "generic", 3: "hw"}.get(mode) if isinstance(mode, int) else mode

    def attach_xdp(
        self, netns: str | None, ifname: str, obj: str | Path, *, sec: str = "xdp", mode: str = "drv"
    ) -> int:
        """Attach the program of section SEC of OBJ to IFNAME in NETNS, replacing
        any program there; returns the program id."""
        try:
            flag = XDP_MODES[mode]
        except KeyError:
            raise BpfError(f"unknown XDP mode '{mode}' (one of {', '.join(XDP_MODES)})") from None
        for other in {"xdpdrv", "xdpgeneric"} - {flag}:  # one mode at a time
            self.ip(netns, ["link", "set", "dev", ifname, other, "off"])
        code, _, err = self.ip(netns, ["link", "set", "dev", ifname, flag, "obj", str(obj), "sec", sec])
        if code != 0:
            where = f"{netns}:{ifname}" if netns else ifname
            raise BpfError(f"attaching {obj} sec {sec} to {where} ({flag}) failed: {err.strip()}")
        pid = self.xdp_prog_id(netns, ifname)
        if pid is None:
            raise BpfError(f"{ifname}: program attached but no XDP program id reported")
        return pid

    def detach_xdp(self, netns: str | None, ifname: str) -> None:
        """Remove any XDP program (native or generic) from IFNAME; idempotent."""
        for flag in ("xdpdrv", "xdpgeneric"):
            self.ip(netns, ["link", "set", "dev", ifname, flag, "off"])

    def tx_checksum_off(self, netns: str | None, ifname: str) -> None:
        """Make IFNAME checksum what it sends in software.  A veth hands its
        peer CHECKSUM_PARTIAL skbs (the TCP checksum field holds only the
        pseudo-header sum); an XDP program on the peer that redirects or TXes
        them sends that partial checksum on the wire, and the receiver drops
        the segment (TcpInCsumErrors).  Both ends of every link with an XDP
        port need it."""
        argv = ["ethtool", "-K", ifname, "tx", "off"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.run(argv, " ".join(argv))

    def ensure_bpffs(self) -> None:
        mounts = self.run(["cat", "/proc/mounts"], "reading /proc/mounts")
        if any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in mounts.splitlines()):
            return
        self.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], "mounting bpffs on /sys/fs/bpf")

    # -- live maps (bpftool) ---------------------------------------------------------------
    def bpftool(self, args: list[str]) -> object:
        out = self.run(["bpftool", "-j", *args], f"bpftool {' '.join(args)}")
        return json.loads(out) if out.strip() else None

    def prog_map_ids(self, prog_id: int) -> dict[str, int]:
        """Map name -> map id for the maps a loaded program uses."""
        info = self.bpftool(["prog", "show", "id", str(prog_id)])
        assert isinstance(info, dict)
        out: dict[str, int] = {}
        for mid in info.get("map_ids", []):
            m = self.bpftool(["map", "show", "id", str(mid)])
            assert isinstance(m, dict)
            out[str(m.get("name", ""))] = int(mid)
        return out

    def map_id(self, prog_id: int, name: str) -> int:
        ids = self.prog_map_ids(prog_id)
        # the kernel keeps 15 characters of a map name
        for n, mid in ids.items():
            if n == name[:15]:
                return mid
        raise BpfError(f"program {prog_id} uses no map named {name} (maps: {', '.join(ids) or 'none'})")

    def map_update(self, mid: int, key: bytes, value: bytes) -> None:
        self.bpftool(["map", "update", "id", str(mid), "key", *_hexwords(key), "value", *_hexwords(value)])

    def map_delete(self, mid: int, key: bytes) -> None:
        self.bpftool(["map", "delete", "id", str(mid), "key", *_hexwords(key)])

    def map_dump(self, mid: int) -> list[MapEntry]:
        """All entries of a live map; per-CPU maps give one value per CPU."""
        out = []
        for e in self.bpftool(["map", "dump", "id", str(mid)]) or []:  # type: ignore[union-attr]
            assert isinstance(e, dict)
            key = _bytes_of(e["key"])
            if "values" in e:
                vals = tuple(_bytes_of(v["value"]) for v in sorted(e["values"], key=lambda v: v["cpu"]))
            else:
                vals = (_bytes_of(e["value"]),)
            out.append(MapEntry(key, vals))
        return out


def _hexwords(b: bytes) -> list[str]:
    return [f"0x{x:02x}" for x in b]


def _bytes_of(v: object) -> bytes:
    if isinstance(v, list):
        return bytes(int(x, 16) if isinstance(x, str) else int(x) for x in v)
    raise BpfError(f"unexpected bpftool value {v!r}")


# The running kernel's, for code that never targets another one.
def attach_xdp(
    netns: str | None, ifname: str, obj: str | Path, *, sec: str = "xdp", mode: str = "drv"
) -> int:
    return Sys().attach_xdp(netns, ifname, obj, sec=sec, mode=mode)


def detach_xdp(netns: str | None, ifname: str) -> None:
    Sys().detach_xdp(netns, ifname)


def tx_checksum_off(netns: str | None, ifname: str) -> None:
    Sys().tx_checksum_off(netns, ifname)


def xdp_prog_id(netns: str | None, ifname: str) -> int | None:
    return Sys().xdp_prog_id(netns, ifname)


def xdp_mode(netns: str | None, ifname: str) -> str | None:
    return Sys().xdp_mode(netns, ifname)


def ifindex(netns: str | None, ifname: str) -> int:
    return Sys().ifindex(netns, ifname)


def mac(netns: str | None, ifname: str) -> bytes:
    return Sys().mac(netns, ifname)


def prog_map_ids(prog_id: int) -> dict[str, int]:
    return Sys().prog_map_ids(prog_id)


def map_id(prog_id: int, name: str) -> int:
    return Sys().map_id(prog_id, name)


def map_update_id(mid: int, key: bytes, value: bytes) -> None:
    Sys().map_update(mid, key, value)


def map_delete_id(mid: int, key: bytes) -> None:
    Sys().map_delete(mid, key)


def map_dump_id(mid: int) -> list[MapEntry]:
    return Sys().map_dump(mid)
