"""Topology model: nodes, links, addresses, routes, sysctls, services.

A topology reads like Mininet's Topo: build it in Python with
``add_node``/``add_link``, or load it from ``topologies/*.yaml``.  Every
problem found while loading or validating is reported, each on one line
that names the file and the place (``fullnat.yaml: links[2]: unknown node
'rs3'``), in one ``TopologyError``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab import kinds, sched
from lab.errors import LabError
from lab.impair import Impairment

ROLES = ("client", "lb", "proxy", "switch", "router", "rs", "gateway", "prober", "host")
PROTOCOLS = ("tcp", "udp")
MAX_RS = 16  # bpf/include/lb.h LB_MAX_RS
IfAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

# node names end up in namespace names
IFNAME = kinds.IFNAME
NODENAME = re.compile(r"^[a-z][a-z0-9_-]{0,19}$")
# net.ipv4.ip_forward, net/ipv4/conf/eth0.100/rp_filter: no empty or '..' component
_SYSCTL = re.compile(r"^net(?:[./][A-Za-z0-9_-]+)+$")


class TopologyError(LabError):
    """One or more problems in a topology; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Route:
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    via: IpAddr | None = None
    dev: str | None = None

    @property
    def family(self) -> int:
        return self.dst.version


@dataclass
class Node:
    name: str
    role: str = "host"
    # interface name -> addresses; "lo" may carry extra addresses (a VIP)
    interfaces: dict[str, list[IfAddr]] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    # free-form per-role settings (e.g. xdp programs), kept for the engines
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def forwarding(self) -> bool:
        return self.role in ("lb", "router", "gateway")

    def addresses(self, version: int | None = None) -> Iterator[IfAddr]:
        for addrs in self.interfaces.values():
            for a in addrs:
                if version is None or a.version == version:
                    yield a

    def address(self, version: int) -> IpAddr:
        """The node's first address of that IP version, outside loopback."""
        for ifname, addrs in self.interfaces.items():
            if ifname == "lo":
                continue
            for a in addrs:
                if a.version == version:
                    return a.ip
        raise LabError(f"node '{self.name}' has no IPv{version} address")


@dataclass(frozen=True)
class Endpoint:
    node: str
    ifname: str

    def __str__(self) -> str:
        return f"{self.node}:{self.ifname}"


@dataclass
class Link:
    a: Endpoint
    b: Endpoint
    mtu: int = 1500
    impair: dict[str, Impairment] = field(default_factory=dict)  # "a" / "b": what that end sends


@dataclass(frozen=True)
class HealthCheck:
    """How ``toalab lb health`` probes a service's real servers from the lb node:
    ``tcp`` connects to rs_port, ``ping`` sends an ICMP echo; a server is marked
    down after ``fall`` failed probes in a row and up after ``rise`` good ones."""

    check: str = "tcp"
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2


HEALTH_CHECKS = ("tcp", "ping")
SERVICE_KEYS = ("lb", "vip", "port", "protocols", "real_servers", "rs_port", "local", "vxlan",
                "scheduler", "persistence", "health")  # fmt: skip


@dataclass
class Service:
    """A fullnat virtual service: VIP:port/proto -> real servers, scheduled by
    ``scheduler`` (lab/sched.py) with per-server ``weights`` (1 unless given);
    ``persistence`` seconds of source-IP persistence (0: off)."""

    name: str
    lb: str
    vip: IpAddr
    port: int
    protocols: list[str]
    real_servers: list[str]
    rs_port: int
    local: list[IpAddr]
    vxlan: bool = False
    scheduler: str = sched.DEFAULT
    persistence: int = 0
    weights: dict[str, int] = field(default_factory=dict)
    health: HealthCheck | None = None

    def weight(self, rs: str) -> int:
        return self.weights.get(rs, 1)


@dataclass
class Topology:
    name: str
    description: str = ""
    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    services: dict[str, Service] = field(default_factory=dict)
    source: str = "<python>"
    text: str = ""  # the YAML it was loaded from: a running lab's record keeps it

    # -- building, Mininet style -------------------------------------------------
    def add_node(self, name: str, role: str = "host", **params: Any) -> Node:
        node = Node(name=name, role=role)
        for ifname, addrs in params.pop("interfaces", {}).items():
            node.interfaces[ifname] = [ipaddress.ip_interface(a) for a in addrs]
        for r in params.pop("routes", []):
            node.routes.append(_route(r))
        node.sysctls.update(params.pop("sysctls", {}))
        node.params.update(params)
        self.nodes[name] = node
        return node

    def add_link(self, a: str, b: str, mtu: int = 1500) -> Link:
        link = Link(_endpoint(a), _endpoint(b), mtu)
        self.links.append(link)
        return link

    def add_address(self, node: str, ifname: str, addr: str) -> None:
        self.nodes[node].interfaces.setdefault(ifname, []).append(ipaddress.ip_interface(addr))

    # -- queries -----------------------------------------------------------------
    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(self.nodes)
            raise LabError(f"unknown node '{name}' in {self.name} (nodes: {known})") from None

    def links_of(self, node: str) -> Iterable[tuple[Endpoint, Endpoint]]:
        for link in self.links:
            if link.a.node == node:
                yield link.a, link.b
            elif link.b.node == node:
                yield link.b, link.a

    def validate(self) -> Topology:
        problems = list(_problems(self))
        if problems:
            raise TopologyError([f"{self.source}: {p}" for p in problems])
        return self


# -- loading -----------------------------------------------------------------------


def load(path: str | Path) -> Topology:
    """Load and validate a topology file; raises TopologyError / LabError."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise LabError(f"{p}: cannot read topology: {e.strerror}") from None
    return loads(text, source=str(p))


def loads(text: str, source: str = "<string>") -> Topology:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise TopologyError([f"{source}: {where}not valid YAML: {problem}"]) from None
    topo = from_dict(doc, source).validate()
    topo.text = text
    return topo


def from_dict(doc: Any, source: str = "<dict>") -> Topology:
    problems: list[str] = []

    def bad(where: str, msg: str) -> None:
        problems.append(f"{source}: {where}: {msg}")

    if not isinstance(doc, dict):
        raise TopologyError([f"{source}: the top level must be a mapping with 'name' and 'nodes'"])
    for key in doc:
        if key not in ("name", "description", "nodes", "links", "services"):
            bad(str(key), "unknown top-level key (expected name, description, nodes, links, services)")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        bad("name", "missing field: a topology needs a name")
        name = "unnamed"
    topo = Topology(name=name, description=str(doc.get("description", "")), source=source)

    nodes = doc.get("nodes")
    if not isinstance(nodes, dict) or not nodes:
        bad("nodes", "missing field: a topology needs a mapping of nodes")
        nodes = {}
    for nname, spec in nodes.items():
        _load_node(topo, str(nname), spec or {}, bad)

    links = doc.get("links", [])
    if not isinstance(links, list):
        bad("links", "must be a list of 'node:ifname -- node:ifname' strings or mappings")
        links = []
    for i, spec in enumerate(links):
        _load_link(topo, f"links[{i}]", spec, bad)

    services = doc.get("services", {}) or {}
    if not isinstance(services, dict):
        bad("services", "must be a mapping of service name to its settings")
        services = {}
    for sname, spec in services.items():
        _load_service(topo, str(sname), spec or {}, bad)

    if problems:
        raise TopologyError(problems)
    return topo


def _load_node(topo: Topology, name: str, spec: Any, bad: Any) -> None:
    where = f"nodes.{name}"
    if not NODENAME.match(name):
        bad(where, "node names are 1-20 chars of a-z, 0-9, '-', '_', starting with a letter")
    if not isinstance(spec, dict):
        bad(where, "must be a mapping (role, interfaces, routes, sysctls)")
        return
    role = spec.get("role")
    if role is None:
        bad(where, f"missing field 'role' (one of {', '.join(ROLES)})")
        role = "host"
    elif role not in ROLES:
        bad(f"{where}.role", f"unknown role '{role}' (one of {', '.join(ROLES)})")
    node = Node(name=name, role=str(role))
    for key in spec:
        if key not in ("role", "interfaces", "routes", "sysctls", "params"):
            bad(f"{where}.{key}", "unknown key (expected role, interfaces, routes, sysctls, params)")
    ifaces = spec.get("interfaces", {}) or {}
    if not isinstance(ifaces, dict):
        bad(f"{where}.interfaces", "must map interface names to lists of addresses")
        ifaces = {}
    for ifname, addrs in ifaces.items():
        iw = f"{where}.interfaces.{ifname}"
        if not IFNAME.match(str(ifname)):
            bad(iw, "interface names are 1-15 chars, starting with a letter")
        if addrs is None:
            addrs = []
        if isinstance(addrs, str):
            addrs = [addrs]
        if not isinstance(addrs, list):
            bad(iw, "must be a list of addresses with prefix, e.g. 192.0.2.1/24")
            continue
        parsed: list[IfAddr] = []
        for j, a in enumerate(addrs):
            try:
                if "/" not in str(a):
                    raise ValueError("an address needs a prefix length, e.g. /24 or /64")
                parsed.append(ipaddress.ip_interface(str(a)))
            except ValueError as e:
                bad(f"{iw}[{j}]", f"bad address '{a}': {e}")
        node.interfaces[str(ifname)] = parsed
    for j, r in enumerate(spec.get("routes", []) or []):
        try:
            node.routes.append(_route(r))
        except (ValueError, TypeError) as e:
            bad(f"{where}.routes[{j}]", str(e))
    sysctls = spec.get("sysctls", {}) or {}
    if not isinstance(sysctls, dict):
        bad(f"{where}.sysctls", "must map sysctl names (net.ipv4.ip_forward) to values")
    else:
        for k, v in sysctls.items():
            if not _SYSCTL.match(str(k)):
                bad(f"{where}.sysctls.{k}", "only per-namespace net.* sysctls (net.a.b or net/a/b)")
            node.sysctls[str(k)] = str(int(v) if isinstance(v, bool) else v)
    node.params.update(spec.get("params", {}) or {})
    topo.nodes[name] = node


def _route(r: Any) -> Route:
    """A route from a mapping {dst, via, dev}; dst 'default' takes via's family."""
    if not isinstance(r, dict) or "dst" not in r:
        raise ValueError("a route is a mapping with 'dst' and 'via' and/or 'dev'")
    via = ipaddress.ip_address(str(r["via"])) if r.get("via") is not None else None
    dst_s = str(r["dst"])
    if dst_s == "default":
        if via is None:
            raise ValueError("a default route needs 'via' (its family comes from it)")
        dst_s = "0.0.0.0/0" if via.version == 4 else "::/0"
    dst = ipaddress.ip_network(dst_s, strict=True)
    if via is not None and via.version != dst.version:
        raise ValueError(f"route to {dst} via {via}: families differ")
    if via is None and not r.get("dev"):
        raise ValueError(f"route to {dst} needs 'via' or 'dev'")
    return Route(dst=dst, via=via, dev=r.get("dev"))


def _endpoint(s: str) -> Endpoint:
    node, sep, ifname = s.strip().partition(":")
    if not sep or not node or not ifname:
        raise ValueError(f"'{s}' is not node:ifname")
    return Endpoint(node, ifname)


def _load_link(topo: Topology, where: str, spec: Any, bad: Any) -> None:
    mtu = 1500
    if isinstance(spec, str):
        parts = [p for p in re.split(r"\s*--\s*", spec.strip()) if p]
        if len(parts) != 2:
            bad(where, f"'{spec}' is not 'node:ifname -- node:ifname'")
            return
        a, b = parts
    elif isinstance(spec, dict) and "a" in spec and "b" in spec:
        a, b = str(spec["a"]), str(spec["b"])
        mtu = spec.get("mtu", 1500)
        extra = [str(k) for k in spec if k not in ("a", "b", "mtu", "impair")]
        if extra:
            bad(where, f"unknown field(s) {', '.join(extra)} (a, b, mtu, impair)")
    else:
        bad(where, "a link is 'node:ifname -- node:ifname' or a mapping with a, b (and mtu, impair)")
        return
    imps: dict[str, Impairment] = {}
    raw = spec.get("impair", {}) if isinstance(spec, dict) else {}
    ends_ok = isinstance(raw, dict) and all(k in ("a", "b") and isinstance(v, dict) for k, v in raw.items())
    if not ends_ok:
        bad(f"{where}.impair", "a mapping of link end (a, b) to impairments: {a: {delay: 10ms, loss: 1%}}")
        raw = {}
    for end, kv in raw.items():
        try:
            imps[end] = Impairment.parse(kv, f"{where}.impair.{end}")
        except LabError as e:
            bad(f"{where}.impair.{end}", str(e).split(": ", 1)[-1])
        if end in imps and imps[end].mtu:
            bad(f"{where}.impair.{end}", "the MTU is the link's own field (mtu: N), both ends alike")
    try:
        topo.links.append(Link(_endpoint(a), _endpoint(b), int(mtu), imps))
    except ValueError as e:
        bad(where, str(e))


def _load_service(topo: Topology, name: str, spec: Any, bad: Any) -> None:
    where = f"services.{name}"
    if not isinstance(spec, dict):
        bad(where, "must be a mapping (lb, vip, port, protocols, real_servers, rs_port, local)")
        return
    unknown = [str(k) for k in spec if k not in SERVICE_KEYS]
    if unknown:
        bad(where, f"unknown field(s) {', '.join(unknown)} (expected {', '.join(SERVICE_KEYS)})")
    missing = [k for k in ("lb", "vip", "port", "real_servers", "local") if k not in spec]
    if missing:
        bad(where, f"missing field(s): {', '.join(missing)}")
        return
    try:
        vip = ipaddress.ip_address(str(spec["vip"]))
        local = [ipaddress.ip_address(str(a)) for a in spec["local"]]
    except ValueError as e:
        bad(where, str(e))
        return
    protocols = [str(p) for p in spec.get("protocols", ["tcp", "udp"])]
    for p in protocols:
        if p not in PROTOCOLS:
            bad(f"{where}.protocols", f"unknown protocol '{p}' (tcp or udp)")
    real_servers, weights = _real_servers(spec["real_servers"], f"{where}.real_servers", bad)
    scheduler = str(spec.get("scheduler", sched.DEFAULT))
    if scheduler not in sched.SCHEDULERS:
        bad(f"{where}.scheduler", f"unknown scheduler '{scheduler}' (one of {', '.join(sched.SCHEDULERS)})")
    persistence = _int(spec.get("persistence", 0), 0, 86400, f"{where}.persistence", "seconds", bad)
    port = int(spec["port"])
    topo.services[name] = Service(
        name=name,
        lb=str(spec["lb"]),
        vip=vip,
        port=port,
        protocols=protocols,
        real_servers=real_servers,
        rs_port=int(spec.get("rs_port", port)),
        local=local,
        vxlan=bool(spec.get("vxlan", False)),
        scheduler=scheduler,
        persistence=persistence,
        weights=weights,
        health=_health(spec.get("health"), f"{where}.health", bad),
    )


def _int(v: Any, lo: int, hi: int, where: str, what: str, bad: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        bad(where, f"{v!r} is not a whole number of {what} in {lo}..{hi}")
        return lo
    return v


def _real_servers(spec: Any, where: str, bad: Any) -> tuple[list[str], dict[str, int]]:
    """``[rs1, {node: rs2, weight: 3}]``: the names, and the weights given."""
    if not isinstance(spec, list) or not spec:
        bad(where, "must be a non-empty list of nodes (a name, or {node: NAME, weight: W})")
        return [], {}
    names: list[str] = []
    weights: dict[str, int] = {}
    for i, e in enumerate(spec):
        if isinstance(e, dict):
            extra = [str(k) for k in e if k not in ("node", "weight")]
            if "node" not in e or extra:
                bad(f"{where}[{i}]", "a real server is a name or {node: NAME, weight: W}")
                continue
            name = str(e["node"])
            if "weight" in e:
                weights[name] = _int(e["weight"], 0, sched.MAX_WEIGHT, f"{where}[{i}].weight", "units", bad)
        else:
            name = str(e)
        if name in names:
            bad(f"{where}[{i}]", f"real server '{name}' is listed twice")
        names.append(name)
    return names, weights


def _health(spec: Any, where: str, bad: Any) -> HealthCheck | None:
    if spec is None:
        return None
    if spec is True:
        return HealthCheck()
    if not isinstance(spec, dict):
        bad(where, "must be true or a mapping (check, interval, timeout, rise, fall)")
        return None
    extra = [str(k) for k in spec if k not in ("check", "interval", "timeout", "rise", "fall")]
    if extra:
        bad(where, f"unknown field(s) {', '.join(extra)} (check, interval, timeout, rise, fall)")
    check = str(spec.get("check", "tcp"))
    if check not in HEALTH_CHECKS:
        bad(f"{where}.check", f"unknown check '{check}' (one of {', '.join(HEALTH_CHECKS)})")
    times = {}
    for k in ("interval", "timeout"):
        v = spec.get(k, 1.0)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.05 <= v <= 3600:
            bad(f"{where}.{k}", f"{v!r} is not a number of seconds in 0.05..3600")
            v = 1.0
        times[k] = float(v)
    rise = _int(spec.get("rise", 2), 1, 100, f"{where}.rise", "probes", bad)
    fall = _int(spec.get("fall", 2), 1, 100, f"{where}.fall", "probes", bad)
    return HealthCheck(check, times["interval"], times["timeout"], rise, fall)


# -- validation --------------------------------------------------------------------


def _problems(topo: Topology) -> Iterator[str]:
    seen_ep: dict[Endpoint, str] = {}
    for i, link in enumerate(topo.links):
        for ep in (link.a, link.b):
            if ep.node not in topo.nodes:
                yield f"links[{i}]: unknown node '{ep.node}' (nodes: {', '.join(topo.nodes)})"
                continue
            if ep in seen_ep:
                yield f"links[{i}]: {ep} is already used by {seen_ep[ep]}"
            seen_ep[ep] = f"links[{i}]"
            if ep.ifname == "lo":
                yield f"links[{i}]: {ep}: 'lo' cannot be a link end"
            elif not IFNAME.match(ep.ifname):
                yield (
                    f"links[{i}]: interface name {ep.ifname!r} of {ep.node}: 1-15 chars of "
                    "A-Z a-z 0-9 _ . -, starting with a letter"
                )
        if link.a.node == link.b.node:
            yield f"links[{i}]: a link joins two different nodes, not {link.a.node} to itself"
        if not 68 <= link.mtu <= 65535:
            yield f"links[{i}]: mtu {link.mtu} out of range 68-65535"

    owner: dict[IpAddr, str] = {}
    for node in topo.nodes.values():
        linked = {ep.ifname for ep, _ in topo.links_of(node.name)} | {"lo"}
        for ifname, addrs in node.interfaces.items():
            if ifname not in linked:
                yield f"nodes.{node.name}.interfaces.{ifname}: no link uses this interface"
            for a in addrs:
                here = f"nodes.{node.name}.interfaces.{ifname}"
                if a.ip in owner:
                    yield f"{here}: duplicate address {a.ip} (also on {owner[a.ip]})"
                owner[a.ip] = f"{node.name}:{ifname}"
                if a.ip.is_multicast or a.ip.is_unspecified:
                    yield f"{here}: {a} is not a unicast host address"
                if a.ip == a.network.network_address and a.network.prefixlen < a.max_prefixlen - 1:
                    yield f"{here}: {a} is the network address of its prefix"
        if node.role == "switch" and any(a for n, a in node.interfaces.items() if n != "lo"):
            yield f"nodes.{node.name}: a switch is layer 2; put addresses on other nodes"
        for j, r in enumerate(node.routes):
            if r.dev and r.dev not in linked:
                yield f"nodes.{node.name}.routes[{j}]: unknown device '{r.dev}'"
            if r.via is not None and r.dev is None and not any(
                r.via in a.network for a in node.addresses(r.via.version)
            ):
                yield f"nodes.{node.name}.routes[{j}]: gateway {r.via} is on none of the node's subnets"

    for s in topo.services.values():
        where = f"services.{s.name}"
        if s.lb not in topo.nodes:
            yield f"{where}.lb: unknown node '{s.lb}'"
        elif topo.nodes[s.lb].role != "lb":
            yield f"{where}.lb: node '{s.lb}' has role '{topo.nodes[s.lb].role}', not lb"
        for rs in s.real_servers:
            if rs not in topo.nodes:
                yield f"{where}.real_servers: unknown node '{rs}'"
        if len(s.real_servers) > MAX_RS:
            yield f"{where}.real_servers: {len(s.real_servers)} real servers, at most {MAX_RS} per service"
        if s.health and s.health.check == "tcp" and "tcp" not in s.protocols:
            yield f"{where}.health: a tcp check needs a tcp service; use check: ping"
        for port in (s.port, s.rs_port):
            if not 1 <= port <= 65535:
                yield f"{where}: port {port} out of range 1-65535"
        if s.vip not in owner:
            yield f"{where}.vip: {s.vip} is on no node (put it on the lb's lo or interface)"
        for a in s.local:
            if owner.get(a, "").split(":")[0] != s.lb:
                yield f"{where}.local: {a} is not an address of the lb node '{s.lb}'"
        if s.vxlan:
            for rs in s.real_servers:
                if rs in topo.nodes and not topo.nodes[rs].params.get("vxlan"):
                    yield f"{where}: vxlan service, but real server {rs} has no params.vxlan (vni)"

    yield from kinds.problems(topo)
