"""The programs phase of a plan: what runs in the lab's kernel once its network
is built -- TX offloads off, vxlan devices, XDP programs attached (from an
object, or loaded and pinned once), and their maps filled.

The ops are data, made from the topology alone (lab/plan.py asks the
programs' control planes, lab/lb.py and lab/gwping.py): MAC addresses come
from the plan (mac_of), and an interface index, which exists only once the
interface does, is an ``IfIndex`` placeholder that ``apply`` fills in.  So
the LB's and gwping's tables can be checked without a kernel, and every
engine executes the same ops through its kernel handle (lab/kernel.py), in
three round trips however many ops there are (one script, one query, one
bpftool batch).

Everything lives in the lab's namespaces or under ``pin_dir(lab)``: removing
the namespaces and ``teardown`` (the pins) undoes it all.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab.errors import LabError
from lab.kernel import XDP_MODES, KernelHandle, hexwords, xdp_prog_of

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
    """A vxlan device over `lower`, up, without reverse-path filtering, bound to
    the `remote` VTEP; the `peers` (the LB's local addresses) are routed into it,
    to `peer_mac`, so that replies go back through the tunnel."""

    ns: str
    dev: str
    vni: int
    local: str
    dstport: int
    lower: str
    mac: str
    remote: str = ""
    peers: tuple[str, ...] = ()
    peer_mac: str = ""


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
    """Load bpf/build/<obj>.o once, program and maps pinned under `pin`; with
    `self_map`, the program is put at key 0 of that program array of its own
    (a program that tail-calls itself)."""

    pin: str
    obj: str
    self_map: str = ""


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
    data planes of its ports (params.xdp) and the fullnat LB of its services;
    the map entries last, once every program they fill is attached."""
    from lab import gwping, lb  # they read the plan's MACs (lab.plan.mac_of)

    ops = [*gwping.program_ops(topo, namespaces), *lb.program_ops(topo, namespaces, lab)]
    return [o for o in ops if not isinstance(o, MapUpdate)] + [o for o in ops if isinstance(o, MapUpdate)]


def objects(ops: Iterable[ProgOp]) -> list[str]:
    return sorted({op.obj for op in ops if isinstance(op, XdpAttach | ProgLoad)})


def apply(kernel: KernelHandle, ops: Sequence[ProgOp]) -> None:
    """Run the ops in the kernel, in three round trips whatever their number: one
    shell script for the programs, devices and attachments (one ip -batch per
    namespace), one query for the interface indexes and map ids, one bpftool
    batch of map updates.  Under TCG a process costs tens of milliseconds
    in a guest, so the count matters more than anything else.  A failure is a
    LabError with the failing command's message; what ran before it is the
    caller's to undo (the engine's down)."""
    if not ops:
        return
    from lab import bpf  # builds the objects on the host on first use

    paths = {name: bpf.obj_path(name) for name in objects(ops)}
    kernel.provide(paths.values())
    updates = [op for op in ops if isinstance(op, MapUpdate)]
    setup = [op for op in ops if not isinstance(op, MapUpdate)]
    if ops[len(setup) :] != updates:
        raise LabError("programs: every map entry must come after the programs it fills")
    if setup:
        kernel.run(["sh", "-c", setup_script(setup, paths)], "attaching the programs", timeout=180)
    lines = [  # programs that tail-call themselves, into their own program array
        f"map update pinned {_tok(op.pin)}/maps/{_tok(op.self_map)} key 0 0 0 0 value pinned {op.pin}/prog"
        for op in setup if isinstance(op, ProgLoad) and op.self_map
    ]  # fmt: skip
    if updates:
        ifindex, map_id = _resolve(kernel, updates)
        for op in updates:
            key, value = op.key.resolve(ifindex), op.value.resolve(ifindex)
            where = f"id {map_id(op.where, op.map)}" if isinstance(op.where, Attached) else (
                f"pinned {_tok(op.where)}/maps/{_tok(op.map)}")  # fmt: skip
            kv = f"key {' '.join(hexwords(key))} value {' '.join(hexwords(value))}"
            lines.append(f"map update {where} {kv}")
    if lines:
        kernel.run(["sh", "-c", _bpftool_batch(lines)], f"filling {len(lines)} map entries", timeout=180)


def setup_script(ops: Sequence[ProgOp], paths: dict[str, Path]) -> str:
    """The shell script of everything but the map entries, in phases: programs
    loaded and pinned, vxlan devices, offloads, attachments."""
    out = ["set -e"]
    loads = [op for op in ops if isinstance(op, ProgLoad)]
    if loads:
        out.append("grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf")
    for op in loads:
        pin = shlex.quote(op.pin)
        out.append(f"rm -rf {pin} && mkdir -p {pin}/maps")
        obj = shlex.quote(str(paths[op.obj]))
        out.append(f"bpftool prog load {obj} {pin}/prog type xdp pinmaps {pin}/maps")
    devs: dict[str, list[str]] = {}  # ip -batch lines per namespace: devices, then attachments
    attach: dict[str, list[str]] = {}
    pinned: dict[str, list[str]] = {}  # bpftool batch lines per namespace
    shell_ns: dict[str, list[str]] = {}  # commands inside the namespace, once its devices exist
    for op in ops:
        match op:
            case VxlanDev():
                v6 = ":" in op.local  # an IPv6 underlay: the LB sends UDP checksum 0 (RFC 6935)
                devs.setdefault(op.ns, []).extend([
                    f"link add {_tok(op.dev)} address {_tok(op.mac)} type vxlan id {op.vni} "
                    f"local {_tok(op.local)}" + (f" remote {_tok(op.remote)}" if op.remote else "")
                    + f" dstport {op.dstport} dev {_tok(op.lower)}" + (" udp6zerocsumrx" if v6 else ""),
                    f"link set {_tok(op.dev)} up",
                    *(f"route add {_tok(peer)} dev {_tok(op.dev)}" for peer in op.peers),
                    *(f"neigh add {_tok(peer)} lladdr {_tok(op.peer_mac)} dev {_tok(op.dev)} nud permanent"
                      for peer in op.peers),
                ])  # fmt: skip
                for conf in ("all", op.dev, op.lower):
                    rp = f"/proc/sys/net/ipv4/conf/{_tok(conf)}/rp_filter"
                    shell_ns.setdefault(op.ns, []).append(f"echo 0 > {rp}")
            case TxCsumOff():
                shell_ns.setdefault(op.ns, []).append(f"ethtool -K {_tok(op.ifname)} tx off >/dev/null")
    out += [_ip_batch(ns, lines) for ns, lines in devs.items()]
    for ns, cmds in shell_ns.items():
        out.append(f"ip netns exec {_tok(ns)} sh -c {shlex.quote('set -e; ' + '; '.join(cmds))}")
    for op in ops:
        match op:
            case XdpAttach():
                flag = XDP_MODES[op.mode]
                obj = _tok(str(paths[op.obj]))
                line = f"link set dev {_tok(op.ifname)} {flag} obj {obj} sec {_tok(op.sec)}"
                attach.setdefault(op.ns, []).append(line)
            case XdpAttachPinned():
                line = f"net attach xdpdrv pinned {_tok(op.pin)}/prog dev {_tok(op.ifname)} overwrite"
                pinned.setdefault(op.ns, []).append(line)
    out += [_ip_batch(ns, lines) for ns, lines in attach.items()]
    # bpftool in the namespace's network only: ip -n would remount /sys, hiding the bpffs
    out += [_bpftool_batch(lines, f"nsenter --net=/run/netns/{_tok(ns)} ") for ns, lines in pinned.items()]
    return "\n".join(out) + "\n"


def _bpftool_batch(lines: list[str], prefix: str = "") -> str:
    """Shell that runs `lines` as one bpftool batch (one process: bpftool takes
    ~0.2 s to start in a TCG guest), stopping at the first failing command.

    Debian's bpftool 7.1 judges a finished batch by whatever errno its last
    command left behind, and in the 6.1 guest a successful map update leaves
    EAGAIN ("reading batch file failed: Resource temporarily unavailable").  A
    final `prog show` walks the program ids until ENOENT, which it accepts.
    The lines go through a file: a here-document on stdin fails there too."""
    words = " ".join(shlex.quote(line) for line in [*lines, "prog show"])
    return (
        "f=$(mktemp /tmp/toalab-bpftool.XXXXXX) && printf '%s\\n' " + words + ' > "$f" && '
        f'{{ {prefix}bpftool batch file "$f" >/dev/null; rc=$?; rm -f "$f"; [ $rc = 0 ]; }}'
    )


def _ip_batch(ns: str, lines: list[str]) -> str:
    return f"ip -n {_tok(ns)} -batch - <<'EOF'\n" + "\n".join(lines) + "\nEOF"


def _resolve(
    kernel: KernelHandle, updates: Sequence[MapUpdate]
) -> tuple[Callable[[str, str], int], Callable[[str | Attached, str], int]]:
    """One query for what the entries refer to: the links of every namespace
    involved (interface indexes, attached programs) and, when a program was
    attached by iproute2, the programs' and maps' ids."""
    refs = {p.ns for op in updates for b in (op.key, op.value) for p in b.parts if isinstance(p, IfIndex)}
    nss = sorted(refs | {op.where.ns for op in updates if isinstance(op.where, Attached)})
    ids = any(isinstance(op.where, Attached) for op in updates)
    parts = [f"echo '@ns {_tok(ns)}'; ip -n {_tok(ns)} -j -d link show" for ns in nss]
    if ids:
        parts += ["echo '@progs'; bpftool -j prog show", "echo '@maps'; bpftool -j map show"]
    out = kernel.run(["sh", "-c", "; ".join(parts)], "reading interfaces and map ids")
    links: dict[str, dict[str, dict]] = {}
    progs: list[dict] = []
    maps: list[dict] = []
    for section in out.split("@")[1:]:
        head, _, body = section.partition("\n")
        data = json.loads(body) if body.strip() else []
        if head.startswith("ns "):
            links[head[3:].strip()] = {str(ln["ifname"]): ln for ln in data}
        elif head.strip() == "progs":
            progs = data
        elif head.strip() == "maps":
            maps = data

    def link(ns: str, ifname: str) -> dict:
        try:
            return links[ns][ifname]
        except KeyError:
            raise LabError(f"no interface {ifname} in {ns}") from None

    def ifindex(ns: str, ifname: str) -> int:
        return int(link(ns, ifname)["ifindex"])

    def map_id(where: str | Attached, name: str) -> int:
        assert isinstance(where, Attached)
        pid = xdp_prog_of(link(where.ns, where.ifname))
        if pid is None:
            raise LabError(f"no XDP program on {where.ns}:{where.ifname}")
        mids = next((p.get("map_ids", []) for p in progs if p.get("id") == pid), [])
        for m in maps:
            if m.get("id") in mids and m.get("name") == name[:15]:  # the kernel keeps 15 characters
                return int(m["id"])
        raise LabError(f"the program on {where.ns}:{where.ifname} has no map {name}")

    return ifindex, map_id


_TOKEN = re.compile(r"^[A-Za-z0-9_.:/%+-]+$")


def _tok(s: str) -> str:
    """A word of an ip -batch line or a bpftool command: names, addresses, paths."""
    if not _TOKEN.match(s):
        raise LabError(f"refusing {s!r} in a batch line (names, addresses and paths without spaces only)")
    return s


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
