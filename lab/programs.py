"""The programs phase of a plan: what runs in the lab's kernel once its network
is built -- TX offloads off, vxlan devices, XDP programs attached (from an
object, or loaded and pinned once), and their maps filled.

The ops are data, made from the topology alone (lab/plan.py asks the
programs' control planes, lab/lb.py and lab/gwping.py): MAC addresses come
from the plan (mac_of), and an interface index, which exists only once the
interface does, is an ``IfIndex`` placeholder that ``apply`` fills in.  So
the LB's and gwping's tables can be checked without a kernel, and every
engine executes the same ops through its kernel handle (lab/kernel.py).

Everything lives in the lab's namespaces or under ``pin_dir(lab)``: removing
the namespaces and ``teardown`` (the pins) undoes it all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab.errors import LabError
from lab.kernel import KernelHandle

if TYPE_CHECKING:
    from lab.topology import Topology

PIN_ROOT = Path("/sys/fs/bpf/toalab")


def pin_dir(lab: str) -> Path:
    """Where a lab's pinned programs and maps live (in its kernel's bpffs)."""
    return PIN_ROOT / lab


@dataclass(frozen=True)
class IfIndex:
    """The ifindex of ns:ifname, resolved in the kernel when the ops run."""

    ns: str
    ifname: str


Part = bytes | IfIndex


@dataclass(frozen=True)
class Blob:
    """Map key or value bytes, some of them interface indexes (u32, host order)."""

    parts: tuple[Part, ...]

    @classmethod
    def of(cls, *parts: Part) -> Blob:
        return cls(tuple(parts))

    def resolve(self, ifindex: Callable[[str, str], int]) -> bytes:
        out = b""
        for p in self.parts:
            out += p if isinstance(p, bytes) else ifindex(p.ns, p.ifname).to_bytes(4, sys.byteorder)
        return out


@dataclass(frozen=True)
class TxCsumOff:
    """Checksum in software what ns:ifname sends (KernelHandle.tx_checksum_off says why)."""

    ns: str
    ifname: str


@dataclass(frozen=True)
class VxlanDev:
    """A vxlan device (IPv4 underlay over `lower`), up, without reverse-path filtering."""

    ns: str
    dev: str
    vni: int
    local: str
    dstport: int
    lower: str
    mac: str


@dataclass(frozen=True)
class XdpAttach:
    """Program section `sec` of bpf/build/<obj>.o on ns:ifname (iproute2)."""

    ns: str
    ifname: str
    obj: str
    mode: str = "drv"
    sec: str = "xdp"


@dataclass(frozen=True)
class ProgLoad:
    """Load bpf/build/<obj>.o once, program and maps pinned under `pin`."""

    pin: str
    obj: str


@dataclass(frozen=True)
class XdpAttachPinned:
    """The program pinned under `pin`, attached natively to ns:ifname (bpftool)."""

    ns: str
    ifname: str
    pin: str


@dataclass(frozen=True)
class Attached:
    """The maps of the program attached to ns:ifname."""

    ns: str
    ifname: str


@dataclass(frozen=True)
class MapUpdate:
    """One entry of map `map` of a pinned program (`where` its pin dir) or an attached one."""

    where: str | Attached
    map: str
    key: Blob
    value: Blob


ProgOp = TxCsumOff | VxlanDev | XdpAttach | ProgLoad | XdpAttachPinned | MapUpdate


def for_topology(topo: Topology, namespaces: dict[str, str], lab: str) -> list[ProgOp]:
    """Every program a topology implies, from its control planes: the gateway
    data planes of its ports (params.xdp), then the fullnat LB of its services."""
    from lab import gwping, lb  # they read the plan's MACs (lab.plan.mac_of)

    return [*gwping.program_ops(topo, namespaces), *lb.program_ops(topo, namespaces, lab)]


def describe(op: ProgOp) -> str:
    match op:
        case TxCsumOff():
            return f"tx checksum offload off on {op.ns}:{op.ifname}"
        case VxlanDev():
            return f"vxlan device {op.dev} (vni {op.vni}) on {op.ns}"
        case XdpAttach():
            return f"{op.obj}.o on {op.ns}:{op.ifname}"
        case ProgLoad():
            return f"loading {op.obj}.o pinned at {op.pin}"
        case XdpAttachPinned():
            return f"{op.pin} on {op.ns}:{op.ifname}"
        case MapUpdate():
            return f"map {op.map} of {op.where}"
    raise TypeError(op)


def objects(ops: Iterable[ProgOp]) -> list[str]:
    return sorted({op.obj for op in ops if isinstance(op, XdpAttach | ProgLoad)})


def apply(kernel: KernelHandle, ops: Sequence[ProgOp]) -> None:
    """Run the ops in the kernel, in order.  A failure is a LabError naming the op;
    what ran before it is the caller's to undo (the engine's down)."""
    if not ops:
        return
    from lab import bpf  # builds the objects on the host on first use

    paths = {name: bpf.obj_path(name) for name in objects(ops)}
    kernel.provide(paths.values())
    if any(isinstance(op, ProgLoad) for op in ops):
        kernel.ensure_bpffs()
    ifindexes: dict[tuple[str, str], int] = {}

    def ifindex(ns: str, ifname: str) -> int:
        if (ns, ifname) not in ifindexes:
            ifindexes[ns, ifname] = kernel.ifindex(ns, ifname)
        return ifindexes[ns, ifname]

    maps: dict[Attached, dict[str, int]] = {}
    for op in ops:
        try:
            _apply(kernel, op, paths, ifindex, maps)
        except LabError as e:
            raise LabError(f"{describe(op)}: {e}") from None


def _apply(
    k: KernelHandle,
    op: ProgOp,
    paths: dict[str, Path],
    ifindex: Callable[[str, str], int],
    maps: dict[Attached, dict[str, int]],
) -> None:
    match op:
        case TxCsumOff():
            k.tx_checksum_off(op.ns, op.ifname)
        case VxlanDev():
            k.run(["ip", "-n", op.ns, "link", "add", op.dev, "address", op.mac, "type", "vxlan",
                   "id", str(op.vni), "local", op.local, "dstport", str(op.dstport), "dev", op.lower],
                  "creating the device")  # fmt: skip
            k.run(["ip", "-n", op.ns, "link", "set", op.dev, "up"], "bringing it up")
            for conf in ("all", op.dev, op.lower):
                k.sysctl(op.ns, f"net.ipv4.conf.{conf}.rp_filter", 0)
        case XdpAttach():
            k.attach_xdp(op.ns, op.ifname, paths[op.obj], sec=op.sec, mode=op.mode)
        case ProgLoad():
            k.exec(["rm", "-rf", op.pin])
            k.run(["mkdir", "-p", f"{op.pin}/maps"], f"creating {op.pin}")
            k.run(["bpftool", "prog", "load", str(paths[op.obj]), f"{op.pin}/prog", "type", "xdp",
                   "pinmaps", f"{op.pin}/maps"], "bpftool prog load")  # fmt: skip
        case XdpAttachPinned():
            k.run(["nsenter", f"--net=/run/netns/{op.ns}", "bpftool", "net", "attach", "xdpdrv", "pinned",
                   f"{op.pin}/prog", "dev", op.ifname, "overwrite"], "bpftool net attach")  # fmt: skip
        case MapUpdate():
            key, value = op.key.resolve(ifindex), op.value.resolve(ifindex)
            if isinstance(op.where, Attached):
                if op.where not in maps:
                    pid = k.xdp_prog_id(op.where.ns, op.where.ifname)
                    if pid is None:
                        raise LabError(f"no XDP program on {op.where.ns}:{op.where.ifname}")
                    maps[op.where] = k.prog_map_ids(pid)
                mid = maps[op.where].get(op.map[:15])  # the kernel keeps 15 characters
                if mid is None:
                    raise LabError(f"the program has no map {op.map}")
                k.map_update(mid, key, value)
            else:
                k.bpftool(["map", "update", "pinned", f"{op.where}/maps/{op.map}",
                           "key", *_hex(key), "value", *_hex(value)])  # fmt: skip
        case _:
            raise TypeError(f"not a program op: {op!r}")


def _hex(b: bytes) -> list[str]:
    return [f"0x{x:02x}" for x in b]


def undo(kernel: KernelHandle, ops: Sequence[ProgOp], lab: str) -> None:
    """What apply(ops) did, removed from a lab that stays up: programs detached,
    vxlan devices deleted, pins removed.  (Taking a lab down needs only
    teardown: its namespaces take the rest with them.)"""
    for op in reversed(ops):
        match op:
            case XdpAttach() | XdpAttachPinned():
                kernel.detach_xdp(op.ns, op.ifname)
            case VxlanDev():
                kernel.exec(["ip", "-n", op.ns, "link", "del", op.dev])
    teardown(kernel, lab)


def teardown(kernel: KernelHandle, lab: str) -> None:
    """Remove what outlives a lab's namespaces: its pinned programs and maps."""
    kernel.exec(["rm", "-rf", str(pin_dir(lab))])
    kernel.exec(["rmdir", str(PIN_ROOT)])  # when empty


def teardown_all(kernel: KernelHandle) -> list[str]:
    """Every lab's pins (what toalab down --all finds left over); what was removed."""
    listing = kernel.exec(["ls", "-1", str(PIN_ROOT)])
    labs = listing.stdout.split() if listing.returncode == 0 else []
    for lab in labs:
        teardown(kernel, lab)
    return [str(pin_dir(lab)) for lab in labs]


__all__ = [
    "PIN_ROOT", "Attached", "Blob", "IfIndex", "MapUpdate", "ProgLoad", "ProgOp", "TxCsumOff",
    "VxlanDev", "XdpAttach", "XdpAttachPinned", "apply", "describe", "pin_dir", "teardown",
]  # fmt: skip
