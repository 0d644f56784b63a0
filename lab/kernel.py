"""The kernel a lab lives in, as one handle: the host's, or a VM guest's.

Everything that touches a lab's kernel after its network is built (XDP
programs, live maps, offloads, sysctls, modules, files) goes through a
KernelHandle, which an engine hands out (``Engine.kernel()``, ``Lab.kernel()``,
``VMSession.kernel()``): the code that attaches a program or reads a map is
the same on every engine, only the runner under it differs.

    k = lab.kernel()
    pid = k.attach_xdp("toalab-demo-lb", "eth0", obj)
    k.map_update(k.map_id(pid, "lb_ports"), key, value)
    k.exec(["sysctl", "-n", "net.ipv4.ip_forward"]).check().stdout
"""

from __future__ import annotations

import json
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError

XDP_MODES = {"drv": "xdpdrv", "native": "xdpdrv", "generic": "xdpgeneric", "skb": "xdpgeneric"}


class KernelError(LabError):
    """A command in the lab's kernel failed (interface, XDP, map, file)."""


@dataclass
class ExecResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> ExecResult:
        if self.returncode != 0:
            err = self.stderr.strip().splitlines()
            tail = f": {err[-1]}" if err else ""
            raise LabError(f"'{' '.join(self.argv)}' exited {self.returncode}{tail}")
        return self


class Job(ABC):
    """A program started in the background (on a node, or in a guest)."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int: ...

    @abstractmethod
    def terminate(self) -> None: ...

    @abstractmethod
    def output(self) -> tuple[str, str]:
        """stdout and stderr so far (all of it once the job has ended)."""

    @property
    @abstractmethod
    def running(self) -> bool: ...


# Runs argv in a kernel's root namespace and returns (exit code, stdout, stderr).
Runner = Callable[[list[str], float], tuple[int, str, str]]


def local_runner(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """The running kernel's: a subprocess."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KernelError(f"{' '.join(argv[:4])} ... timed out after {timeout} s") from None
    return p.returncode, p.stdout, p.stderr


def _no_copy(paths: Iterable[Path | str]) -> None:
    """The host's files are already where they are."""


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
class KernelHandle:
    """Commands, files, interfaces, XDP attachments and live maps of one kernel."""

    runner: Runner = local_runner
    # make host files readable at the same paths there (a guest without the host's /)
    provide_files: Callable[[Iterable[Path | str]], None] = field(default=_no_copy)
    where: str = "the host"

    # -- commands and files ---------------------------------------------------------------
    def exec(self, argv: list[str], *, timeout: float = 60.0) -> ExecResult:
        """Run argv in the kernel's root namespace; the exit code is the caller's to judge."""
        try:
            code, out, err = self.runner(list(argv), timeout)
        except FileNotFoundError:
            return ExecResult(list(argv), 127, "", f"{argv[0]}: not found")
        return ExecResult(list(argv), code, out, err)

    def run(self, argv: list[str], what: str, *, timeout: float = 60.0) -> str:
        """Run argv; its stdout, or KernelError naming `what` and the command's error."""
        r = self.exec(argv, timeout=timeout)
        if r.returncode == 127 and not r.stdout:
            raise KernelError(f"{what}: {argv[0]} is not installed in {self.where}")
        if r.returncode != 0:
            raise KernelError(f"{what} failed: {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def read(self, path: str) -> str:
        return self.run(["cat", path], f"reading {path}")

    def provide(self, paths: Iterable[Path | str]) -> None:
        self.provide_files(paths)

    def sysctl(self, netns: str | None, key: str, value: str | int) -> None:
        argv = ["sysctl", "-qw", f"{key}={value}"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.run(argv, f"sysctl {key}={value}" + (f" in {netns}" if netns else ""))

    # -- interfaces ---------------------------------------------------------------------------
    def ip(self, netns: str | None, args: list[str]) -> ExecResult:
        return self.exec(["ip", *(["-n", netns] if netns else []), *args])

    def link(self, netns: str | None, ifname: str) -> dict:
        r = self.ip(netns, ["-j", "-d", "link", "show", "dev", ifname])
        if r.returncode != 0:
            raise KernelError(f"no interface {ifname} in {netns or 'the root namespace'}: {r.stderr.strip()}")
        return json.loads(r.stdout)[0]

    def ifindex(self, netns: str | None, ifname: str) -> int:
        return int(self.link(netns, ifname)["ifindex"])

    def mac(self, netns: str | None, ifname: str) -> bytes:
        return bytes.fromhex(self.link(netns, ifname)["address"].replace(":", ""))

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

    # -- XDP ------------------------------------------------------------------------------------
    def xdp_prog_id(self, netns: str | None, ifname: str) -> int | None:
        return xdp_prog_of(self.link(netns, ifname))

    def xdp_mode(self, netns: str | None, ifname: str) -> str | None:
        """'drv', 'generic', 'hw' or None as iproute2 reports the attachment."""
        mode = (self.link(netns, ifname).get("xdp") or {}).get("mode")
        return {1: "drv", 2: "generic", 3: "hw"}.get(mode) if isinstance(mode, int) else mode

    def attach_xdp(
        self, netns: str | None, ifname: str, obj: str | Path, *, sec: str = "xdp", mode: str = "drv"
    ) -> int:
        """Attach the program of section SEC of OBJ (a host path) to IFNAME in NETNS,
        replacing any program there; returns the program id."""
        try:
            flag = XDP_MODES[mode]
        except KeyError:
            raise KernelError(f"unknown XDP mode '{mode}' (one of {', '.join(XDP_MODES)})") from None
        self.provide([obj])
        for other in {"xdpdrv", "xdpgeneric"} - {flag}:  # one mode at a time
            self.ip(netns, ["link", "set", "dev", ifname, other, "off"])
        r = self.ip(netns, ["link", "set", "dev", ifname, flag, "obj", str(obj), "sec", sec])
        if r.returncode != 0:
            where = f"{netns}:{ifname}" if netns else ifname
            raise KernelError(f"attaching {obj} sec {sec} to {where} ({flag}) failed: {r.stderr.strip()}")
        pid = self.xdp_prog_id(netns, ifname)
        if pid is None:
            raise KernelError(f"{ifname}: program attached but no XDP program id reported")
        return pid

    def detach_xdp(self, netns: str | None, ifname: str) -> None:
        """Remove any XDP program (native or generic) from IFNAME; idempotent."""
        for flag in ("xdpdrv", "xdpgeneric"):
            self.ip(netns, ["link", "set", "dev", ifname, flag, "off"])

    def ensure_bpffs(self) -> None:
        mounts = self.read("/proc/mounts")
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
        mine = {int(m) for m in info.get("map_ids", [])}
        every = self.bpftool(["map", "show"]) or []  # two calls, not one per map
        assert isinstance(every, list)
        return {str(m.get("name", "")): int(m["id"]) for m in every if int(m.get("id", -1)) in mine}

    def map_id(self, prog_id: int, name: str) -> int:
        ids = self.prog_map_ids(prog_id)
        # the kernel keeps 15 characters of a map name
        for n, mid in ids.items():
            if n == name[:15]:
                return mid
        raise KernelError(f"program {prog_id} uses no map named {name} (maps: {', '.join(ids) or 'none'})")

    def map_update(self, mid: int, key: bytes, value: bytes) -> None:
        self.bpftool(["map", "update", "id", str(mid), "key", *hexwords(key), "value", *hexwords(value)])

    def map_delete(self, mid: int, key: bytes) -> None:
        self.bpftool(["map", "delete", "id", str(mid), "key", *hexwords(key)])

    def map_dump(self, mid: int) -> list[MapEntry]:
        """All entries of a live map; per-CPU maps give one value per CPU."""
        return [_entry(e) for e in self.bpftool(["map", "dump", "id", str(mid)]) or []]  # type: ignore[union-attr]

    def map_lookup(self, mid: int, key: bytes) -> MapEntry | None:
        """One entry of a live map, None when the key is not in it."""
        r = self.exec(["bpftool", "-j", "map", "lookup", "id", str(mid), "key", *hexwords(key)])
        if r.returncode != 0:
            if "not found" in (r.stderr + r.stdout).lower():
                return None
            raise KernelError(f"bpftool map lookup id {mid} failed: {(r.stderr or r.stdout).strip()}")
        return _entry(json.loads(r.stdout))

    def monotonic_ns(self) -> int:
        """Now on the kernel's clock as BPF programs read it (bpf_ktime_get_ns: CLOCK_MONOTONIC)."""
        head = self.run(["head", "-n", "3", "/proc/timer_list"], "reading the kernel's clock")
        for line in head.splitlines():
            if line.startswith("now at "):
                return int(line.split()[2])
        raise KernelError(f"no 'now at' line in /proc/timer_list of {self.where}")


def xdp_prog_of(link: dict) -> int | None:
    """The id of the XDP program on a link as `ip -j -d link show` reports it."""
    xdp = link.get("xdp") or {}
    prog = xdp.get("prog") or {}
    if "id" in prog:
        return int(prog["id"])
    for att in xdp.get("attached", []):
        if "prog" in att:
            return int(att["prog"]["id"])
    return None


def hexwords(b: bytes) -> list[str]:
    """Bytes as bpftool takes them (0x01 0x02 ...)."""
    return [f"0x{x:02x}" for x in b]


def _entry(e: object) -> MapEntry:
    assert isinstance(e, dict)
    key = _bytes_of(e["key"])
    if "values" in e:
        vals = tuple(_bytes_of(v["value"]) for v in sorted(e["values"], key=lambda v: v["cpu"]))
    else:
        vals = (_bytes_of(e["value"]),)
    return MapEntry(key, vals)


def _bytes_of(v: object) -> bytes:
    if isinstance(v, list):
        return bytes(int(x, 16) if isinstance(x, str) else int(x) for x in v)
    raise KernelError(f"unexpected bpftool value {v!r}")
