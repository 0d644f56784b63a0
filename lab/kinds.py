"""Node kinds: which ``params`` sections a node of each role takes, typed, and
checked when a topology is validated (``Topology.validate``), so that a
misspelt field is a ``file: place: message`` line before anything is built.

    params:
      fullnat: {client_if: eth0, rs_if: eth1, udp_opt_pkts: 3}   # lb
      xdp: {eth0: {prog: gwping, forward: eth1}}                 # any node's ports
      vxlan: {vni: 42}                                           # rs of a vxlan service
      l7: {upstream: rs1, port: 80, rs_port: 8080}               # proxy

The sections are read through ``fullnat(node)``, ``xdp_ports(node)``,
``vxlan(node)`` and ``l7(node)``; the raw mapping stays in ``node.params`` (what the file said).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab.errors import LabError

if TYPE_CHECKING:
    from lab.topology import Node, Topology

# the programs a port may run from params.xdp (the LB is attached from services:)
PORT_PROGRAMS = ("gwping", "xdp_pass")
XDP_MODES = ("drv", "generic")


@dataclass(frozen=True)
class Fullnat:
    """The lb node's settings of the fullnat XDP LB (bpf/lb.c)."""

    xdp: bool = True  # false: a plain router, no XDP LB
    client_if: str = "eth0"
    rs_if: str = "eth1"
    udp_opt_pkts: int = 3  # UDP packets per flow that carry the option (a lost first one is survived)
    tcp_idle: float = 300.0  # flow idle lifetime, s
    udp_idle: float = 60.0
    lport_min: int = 1024  # local port range
    lport_max: int = 65535


@dataclass(frozen=True)
class Vxlan:
    """A real server's decapsulating vxlan device (a vxlan service's RS)."""

    vni: int
    dev: str = "vx0"


@dataclass(frozen=True)
class L7:
    """A proxy node's L7 proxy (kmod/examples/tcp_proxy.c, the seed's use of
    set_ip_opt): it terminates the client's connection on `port` and opens its
    own to `upstream`:`rs_port` with the option naming the client and the
    address the client connected to."""

    upstream: str  # a real server node
    port: int = 80
    rs_port: int = 8080


@dataclass(frozen=True)
class XdpPort:
    """One XDP program on one port of a node (``params.xdp.IFNAME``)."""

    node: str
    ifname: str
    prog: str  # object name in bpf/build, without .o
    mode: str = "drv"
    forward: str | None = None  # egress interface of a gwping port

    @property
    def sec(self) -> str:
        return "xdp"


# role -> the sections its params may hold; every node's ports may carry xdp programs
SECTIONS: dict[str, tuple[str, ...]] = {
    "lb": ("fullnat", "xdp"),
    "rs": ("vxlan", "xdp"),
    "proxy": ("l7", "xdp"),
}
DEFAULT_SECTIONS = ("xdp",)

IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")  # Linux caps interface names at 15 bytes


def fullnat(node: Node) -> Fullnat:
    return _section(node, "fullnat", Fullnat, _check_fullnat)


def vxlan(node: Node) -> Vxlan | None:
    if not node.params.get("vxlan"):
        return None
    return _section(node, "vxlan", Vxlan, _check_vxlan)


def l7(node: Node) -> L7:
    if "l7" not in node.params:
        raise LabError(f"nodes.{node.name}.params.l7: missing (the proxy's upstream, port, rs_port)")
    return _section(node, "l7", L7, _check_l7)


def xdp_ports(node: Node) -> list[XdpPort]:
    ports, problems = _xdp(node)
    if problems:
        raise LabError(f"nodes.{node.name}.params.xdp: {problems[0]}")
    return ports


def problems(topo: Topology) -> Iterator[str]:
    """Every problem of every node's params, as 'nodes.N.params.S...: message'."""
    for node in topo.nodes.values():
        where = f"nodes.{node.name}.params"
        allowed = SECTIONS.get(node.role, DEFAULT_SECTIONS)
        if not isinstance(node.params, dict):
            yield f"{where}: must be a mapping of sections ({', '.join(allowed)})"
            continue
        linked = {ep.ifname for ep, _ in topo.links_of(node.name)}
        for name in node.params:
            if name not in allowed:
                yield (
                    f"{where}.{name}: role {node.role} takes no '{name}' section "
                    f"(sections: {', '.join(allowed)})"
                )
        if "fullnat" in node.params and "fullnat" in allowed:
            for p in _fields(node.params["fullnat"], Fullnat, _check_fullnat):
                yield f"{where}.fullnat{p}"
            raw = node.params["fullnat"] or {}
            for key in ("client_if", "rs_if"):
                ifn = raw.get(key, getattr(Fullnat, key)) if isinstance(raw, dict) else None
                if isinstance(ifn, str) and ifn not in linked:
                    yield f"{where}.fullnat.{key}: no link uses interface '{ifn}' of {node.name}"
        if node.params.get("vxlan") and "vxlan" in allowed:
            for p in _fields(node.params["vxlan"], Vxlan, _check_vxlan):
                yield f"{where}.vxlan{p}"
        if "l7" in node.params and "l7" in allowed:
            for p in _fields(node.params["l7"], L7, _check_l7):
                yield f"{where}.l7{p}"
            up = (node.params["l7"] or {}).get("upstream") if isinstance(node.params["l7"], dict) else None
            if isinstance(up, str) and (up not in topo.nodes or topo.nodes[up].role != "rs"):
                yield f"{where}.l7.upstream: '{up}' is not a node of role rs"
        if "xdp" in node.params and "xdp" in allowed:
            _, found = _xdp(node, linked)
            for p in found:
                yield f"{where}.xdp{p}"


# -- typed sections --------------------------------------------------------------------------
def _section(node: Node, name: str, cls: type, check: Callable[[Any], Iterator[str]]) -> Any:
    raw = node.params.get(name) or {}
    found = list(_fields(raw, cls, check))
    if found:
        raise LabError(f"nodes.{node.name}.params.{name}{found[0]}")
    return cls(**raw)


def _fields(raw: Any, cls: type, check: Callable[[Any], Iterator[str]]) -> Iterator[str]:
    """Problems of one section as '.field: message' (or ': message' for the section)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        yield f": must be a mapping (fields: {', '.join(fields)})"
        return
    bad_type = False
    for key, val in raw.items():
        f = fields.get(key)
        if f is None:
            close = [n for n in fields if _close(str(key), n)]
            hint = f"; did you mean '{close[0]}'?" if close else ""
            yield f".{key}: unknown field (fields: {', '.join(fields)}){hint}"
            continue
        want, word = _TYPES[str(f.type)]
        if (isinstance(val, bool) and want is not bool) or not isinstance(val, want):
            yield f".{key}: {val!r} is not {word}"
            bad_type = True
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in raw]
    for n in missing:
        yield f".{n}: missing field"
    if not bad_type and not missing:
        yield from check(cls(**{k: v for k, v in raw.items() if k in fields}))


_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "bool": (bool, "true or false"),
    "int": (int, "an integer"),
    "float": ((int, float), "a number"),
    "str": (str, "a string"),
}


def _close(a: str, b: str) -> bool:
    """A likely misspelling: same letters but one, or two swapped."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def _check_fullnat(f: Fullnat) -> Iterator[str]:
    for key in ("client_if", "rs_if"):
        if not IFNAME.match(getattr(f, key)):
            yield f".{key}: '{getattr(f, key)}' is not an interface name"
    if not 1 <= f.udp_opt_pkts <= 255:
        yield f".udp_opt_pkts: {f.udp_opt_pkts} out of range 1-255"
    for key in ("tcp_idle", "udp_idle"):
        if not 0 < getattr(f, key) <= 86400:
            yield f".{key}: {getattr(f, key)} s out of range (0, 86400]"
    if not 1 <= f.lport_min <= f.lport_max <= 65535:
        yield f".lport_min/lport_max: {f.lport_min}-{f.lport_max} is not a range within 1-65535"


def _check_l7(p: L7) -> Iterator[str]:
    for key in ("port", "rs_port"):
        if not 1 <= getattr(p, key) <= 65535:
            yield f".{key}: {getattr(p, key)} out of range 1-65535"


def _check_vxlan(v: Vxlan) -> Iterator[str]:
    if not 0 <= v.vni < 1 << 24:
        yield f".vni: {v.vni} out of range 0-16777215"
    if not IFNAME.match(v.dev):
        yield f".dev: '{v.dev}' is not an interface name"


def _xdp(node: Node, linked: set[str] | None = None) -> tuple[list[XdpPort], list[str]]:
    """The ports of params.xdp and the problems found, as '.IF...: message'."""
    decl = node.params.get("xdp") or {}
    if not isinstance(decl, dict):
        return [], [": must map interface names to {prog, mode, forward}"]
    out, found = [], []
    for ifname, spec in decl.items():
        w = f".{ifname}"
        if isinstance(spec, str):
            spec = {"prog": spec}
        if not isinstance(spec, dict) or "prog" not in spec:
            found.append(f"{w}: needs 'prog' ({' or '.join(PORT_PROGRAMS)})")
            continue
        unknown = sorted(set(spec) - {"prog", "mode", "forward"})
        if unknown:
            names = ", ".join(map(str, unknown))
            found.append(f"{w}: unknown field(s) {names} (fields: prog, mode, forward)")
        prog, mode, fwd = spec["prog"], spec.get("mode", "drv"), spec.get("forward")
        if prog not in PORT_PROGRAMS:
            found.append(f"{w}.prog: '{prog}' is not a port program ({', '.join(PORT_PROGRAMS)})")
        if mode not in XDP_MODES:
            found.append(f"{w}.mode: '{mode}' is not drv or generic")
        if linked is not None and ifname not in linked:
            found.append(f"{w}: no link uses interface {ifname}")
        if fwd is not None:
            if linked is not None and fwd not in linked:
                found.append(f"{w}.forward: no link uses interface {fwd}")
            if prog != "gwping":
                found.append(f"{w}.forward: only a gwping port forwards")
        out.append(XdpPort(node.name, str(ifname), str(prog), str(mode), None if fwd is None else str(fwd)))
    return out, found
