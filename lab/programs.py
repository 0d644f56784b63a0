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


def _lab_name(name: str) -> bool:
    from lab.plan import LAB_NAME  # the plan imports this module

    return bool(LAB_NAME.match(name))


def pin_dir(lab: str) -> Path:
    """Where a lab's pinned programs and maps live (in its kernel's bpffs); the
    name is checked, as it reaches rm -rf (it may come from a listing)."""
    if not _lab_name(lab):
        raise LabError(f"refusing {lab!r} as a lab's pin directory name")
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
class Qdisc:
    """tc qdisc replace dev IFNAME root ARGS in ns: a link impairment (lab/impair.py)."""

    ns: str
    ifname: str
    args: tuple[str, ...]


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


ProgOp = TxCsumOff | Qdisc | VxlanDev | XdpAttach | ProgLoad | XdpAttachPinned | MapUpdate


def for_topology(topo: Topology, namespaces: dict[str, str], lab: str) -> list[ProgOp]:
    """Every program a topology implies, from its control planes: the gateway
    data planes of its ports (params.xdp) and the fullnat LB of its services;
    the map entries last, once every program they fill is attached."""
    from lab import gwping, impair, lb  # they read the plan's MACs (lab.plan.mac_of)

    ops = [*impair.program_ops(topo, namespaces), *gwping.program_ops(topo, namespaces),
           *lb.program_ops(topo, namespaces, lab)]  # fmt: skip
    return [o for o in ops if not isinstance(o, MapUpdate)] + [o for o in ops if isinstance(o, MapUpdate)]


def objects(ops: Iterable[ProgOp]) -> list[str]:
    return sorted({op.obj for op in ops if isinstance(op, XdpAttach | ProgLoad)})


def apply(kernel: KernelHandle, ops: Sequence[ProgOp], *, prelude: str = "") -> None:
    """Run the ops in the kernel, in two round trips whatever their number: one
    shell script for the programs, devices and attachments (one ip -batch per
    namespace, the namespaces and the program loads in parallel), ending with
    the interface indexes and map ids the entries refer to; one bpftool batch
    of map updates.  Under TCG a process costs a tenth of a second in a guest
    and the verifier seconds, so the count and the overlap matter more than
    anything else.  A failure is a
    LabError with the failing command's message; what ran before it is the
    caller's to undo (the engine's down).  `prelude`: shell to run first, while
    the programs load (setup_script)."""
    if not ops and not prelude:
        return
    from lab import bpf  # builds the objects on the host on first use

    paths = {name: bpf.obj_path(name) for name in objects(ops)}
    kernel.provide(paths.values())
    updates = [op for op in ops if isinstance(op, MapUpdate)]
    setup = [op for op in ops if not isinstance(op, MapUpdate)]
    if ops[len(setup) :] != updates:
        raise LabError("programs: every map entry must come after the programs it fills")
    nss, ids = _references(updates)
    if setup or prelude:
        script = setup_script(setup, paths, nss, with_ids=ids, prelude=prelude)
        what = "building the lab and attaching its programs" if prelude else "attaching the programs"
        try:
            listing = kernel.run(["sh", "-c", script], what, timeout=180)
        except LabError as e:
            if "qdisc kind is unknown" in str(e):
                raise LabError(f"{what}: this kernel has no netem (sch_netem), which the topology's link "
                               "impairments need; use --engine vm") from None  # fmt: skip
            raise
    elif updates:
        listing = kernel.run(["sh", "-c", "; ".join(_listing(nss, ids))], "reading interfaces and map ids")
    lines = []
    for op in setup:  # programs that tail-call themselves, into their own program array
        if isinstance(op, ProgLoad) and op.self_map:
            pin, array = _tok(op.pin), _tok(op.self_map)
            lines.append(f"map update pinned {pin}/maps/{array} key 0 0 0 0 value pinned {pin}/prog")
    if updates:
        ifindex, map_id = _resolve(listing)
        for op in updates:
            key, value = op.key.resolve(ifindex), op.value.resolve(ifindex)
            where = f"id {map_id(op.where, op.map)}" if isinstance(op.where, Attached) else (
                f"pinned {_tok(op.where)}/maps/{_tok(op.map)}")  # fmt: skip
            kv = f"key {' '.join(hexwords(key))} value {' '.join(hexwords(value))}"
            lines.append(f"map update {where} {kv}")
    if lines:
        kernel.run(["sh", "-c", _bpftool_batch(lines)], f"filling {len(lines)} map entries", timeout=180)


def setup_script(
    ops: Sequence[ProgOp],
    paths: dict[str, Path],
    listing: Sequence[str] = (),
    *,
    with_ids: bool = False,
    prelude: str = "",
) -> str:
    """The shell script of everything but the map entries.  Phase 1 runs in
    parallel: each program load (the verifier: seconds in a TCG guest) beside
    each namespace's chain of vxlan devices, offloads and iproute2
    attachments; phase 2 attaches the pinned programs; then the links of the
    `listing` namespaces (and the programs and maps, when a map entry names an
    attached program) are printed for the map entries' placeholders (_resolve),
    sparing a round trip.  A `prelude` (the plan's shell: the namespaces and
    links the rest needs) runs while the programs load.  Nothing started here
    outlives the script, failed or not."""
    out = ["set -e", "trap wait EXIT", "rc=0; _loads=; _jobs="]
    loads = [op for op in ops if isinstance(op, ProgLoad)]
    if loads:
        out.append("grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf")
    for op in loads:
        pin = shlex.quote(op.pin)
        obj = shlex.quote(str(paths[op.obj]))
        load = f"rm -rf {pin} && mkdir -p {pin}/maps && "
        load += f"bpftool prog load {obj} {pin}/prog type xdp pinmaps {pin}/maps"
        out.append(f'( {load} ) & _loads="$_loads $!"')
    if prelude:
        out.append(prelude.rstrip("\n"))
    devs: dict[str, list[str]] = {}  # ip -batch lines per namespace: devices
    shell_ns: dict[str, list[str]] = {}  # commands inside the namespace, once its devices exist
    attach: dict[str, list[str]] = {}  # ip -batch lines per namespace: attachments
    pinned: dict[str, list[str]] = {}  # bpftool batch lines per namespace
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
            case Qdisc():
                args = " ".join(_tok(a) for a in op.args)
                shell_ns.setdefault(op.ns, []).append(f"tc qdisc replace dev {_tok(op.ifname)} root {args}")
            case XdpAttach():
                obj = _tok(str(paths[op.obj]))
                line = f"link set dev {_tok(op.ifname)} {XDP_MODES[op.mode]} obj {obj} sec {_tok(op.sec)}"
                attach.setdefault(op.ns, []).append(line)
            case XdpAttachPinned():
                line = f"net attach xdpdrv pinned {_tok(op.pin)}/prog dev {_tok(op.ifname)} overwrite"
                pinned.setdefault(op.ns, []).append(line)
    jobs: list[str] = []
    for ns in dict.fromkeys([*devs, *shell_ns, *attach]):
        chain = []
        if ns in devs:
            chain.append(_ip_batch(ns, devs[ns]))
        if ns in shell_ns:  # /proc/sys/net and ethtool follow the network namespace: nsenter is enough
            cmds = shlex.quote("set -e; " + "; ".join(shell_ns[ns]))
            chain.append(f"nsenter --net=/run/netns/{_tok(ns)} sh -c {cmds}")
        if ns in attach:
            chain.append(_ip_batch(ns, attach[ns]))
        jobs.append(" && ".join(chain))
    out += [f'( {job} ) & _jobs="$_jobs $!"' for job in jobs]
    out.append('for p in $_loads $_jobs; do wait "$p" || rc=1; done; [ "$rc" = 0 ]')
    # bpftool in the namespace's network only: ip -n would remount /sys, hiding the bpffs
    out += [_bpftool_batch(lines, f"nsenter --net=/run/netns/{_tok(ns)} ") for ns, lines in pinned.items()]
    out += _listing(listing, with_ids)
    return "\n".join(out) + "\n"


def _listing(namespaces: Sequence[str], attached: bool) -> list[str]:
    """Shell printing what _resolve reads: each namespace's links (JSON, '@ns NS'
    sections) and, with `attached`, the programs and maps ('@progs', '@maps')."""
    out = [f"echo '@ns {_tok(ns)}'; ip -n {_tok(ns)} -j -d link show" for ns in namespaces]
    if attached and namespaces:
        out += ["echo '@progs'; bpftool -j prog show", "echo '@maps'; bpftool -j map show"]
    return out


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


def _ip_batch(ns: str, lines: list[str], *, force: bool = False) -> str:
    """One ip -batch in a namespace, on one line (so that it chains with && and &)."""
    words = " ".join(shlex.quote(line) for line in lines)
    return f"printf '%s\\n' {words} | ip -n {_tok(ns)}{' -force' if force else ''} -batch -"


def _references(updates: Sequence[MapUpdate]) -> tuple[list[str], bool]:
    """What the entries refer to: the namespaces whose interface indexes (or
    attached programs) they name, and whether they need programs' map ids."""
    refs = {p.ns for op in updates for b in (op.key, op.value) for p in b.parts if isinstance(p, IfIndex)}
    nss = sorted(refs | {op.where.ns for op in updates if isinstance(op.where, Attached)})
    return nss, any(isinstance(op.where, Attached) for op in updates)


def _resolve(out: str) -> tuple[Callable[[str, str], int], Callable[[str | Attached, str], int]]:
    """The interface indexes and map ids of a _listing's output."""
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
    """What apply(ops) did, removed from a lab that stays up, in one round trip:
    programs detached and vxlan devices deleted (one ip -batch per namespace,
    the namespaces in parallel), pins removed.  Best effort: what is already
    gone is no error.  (Taking a lab down needs only teardown: its namespaces
    take the rest with them.)"""
    kernel.exec(["sh", "-c", undo_script(ops, lab)], timeout=120)


def undo_script(ops: Sequence[ProgOp], lab: str) -> str:
    lines: dict[str, list[str]] = {}
    for op in reversed(ops):
        match op:
            case XdpAttach() | XdpAttachPinned():
                lines.setdefault(op.ns, []).extend(
                    f"link set dev {_tok(op.ifname)} {flag} off" for flag in ("xdpdrv", "xdpgeneric")
                )
            case VxlanDev():
                lines.setdefault(op.ns, []).append(f"link del {_tok(op.dev)}")
    # -force: ip -batch carries on past a line that fails (a device already gone)
    out = [f"( {_ip_batch(ns, cmds, force=True)} ) 2>/dev/null &" for ns, cmds in lines.items()]
    out += ["wait", *_teardown_lines(lab)]
    return "\n".join(out) + "\n"


def teardown(kernel: KernelHandle, lab: str) -> None:
    """Remove what outlives a lab's namespaces: its pinned programs and maps."""
    kernel.exec(["sh", "-c", "; ".join(_teardown_lines(lab))])


def _teardown_lines(lab: str) -> list[str]:
    pins, root = shlex.quote(str(pin_dir(lab))), shlex.quote(str(PIN_ROOT))
    return [f"rm -rf {pins}", f"rmdir {root} 2>/dev/null || true"]  # the root when empty


def teardown_all(kernel: KernelHandle) -> list[str]:
    """Every lab's pins (what toalab down --all finds left over); what was removed."""
    listing = kernel.exec(["ls", "-1", str(PIN_ROOT)])
    labs = [n for n in listing.stdout.split() if _lab_name(n)] if listing.returncode == 0 else []
    for lab in labs:
        teardown(kernel, lab)
    return [str(pin_dir(lab)) for lab in labs]
