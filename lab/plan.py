"""A topology compiled into the ordered operations that build it.

The plan is the one place that decides what a topology means in kernel
objects (namespaces, veth pairs, bridges, addresses, routes, sysctls).  The
host engine executes it over netlink in-process; the VM engine renders it as
an ``ip -batch`` shell script and runs that in the guest.  Docker and
Mininet engines can consume the same operations.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from dataclasses import dataclass, field

from lab import programs
from lab.errors import LabError
from lab.programs import ProgOp
from lab.topology import IfAddr, IpAddr, Topology

NS_PREFIX = "toalab-"
SWITCH_BRIDGE = "br0"


def ns_name(lab: str, node: str) -> str:
    return f"{NS_PREFIX}{lab}-{node}"


def mac_of(node: str, ifname: str) -> str:
    """The MAC address of node:ifname in every lab of a topology: locally
    administered unicast, from the names alone, so that what programs are
    told about next hops (the LB's and gwping's tables) is known from the
    topology before anything runs.  Labs never share a segment, so the same
    MAC in two labs side by side is harmless."""
    h = hashlib.sha256(f"{node}/{ifname}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *h[:5]))


@dataclass(frozen=True)
class Netns:
    ns: str


@dataclass(frozen=True)
class Sysctl:
    ns: str
    key: str
    value: str


@dataclass(frozen=True)
class Veth:
    ns: str
    ifname: str
    peer_ns: str
    peer_ifname: str
    mtu: int
    mac: str = ""  # the plan's (mac_of); empty: the kernel picks one
    peer_mac: str = ""


@dataclass(frozen=True)
class Bridge:
    ns: str
    ifname: str


@dataclass(frozen=True)
class Port:
    ns: str
    ifname: str
    bridge: str


@dataclass(frozen=True)
class Up:
    ns: str
    ifname: str


@dataclass(frozen=True)
class Addr:
    ns: str
    ifname: str
    addr: IfAddr


@dataclass(frozen=True)
class RouteAdd:
    ns: str
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    via: IpAddr | None
    dev: str | None


Op = Netns | Sysctl | Veth | Bridge | Port | Up | Addr | RouteAdd

# Set before any interface exists so that every interface inherits them:
# no DAD wait on IPv6 addresses, and RS replies to an LB local address are
# never dropped by reverse-path filtering in a fullnat layout.
BASE_SYSCTLS = (
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
)
FORWARDING_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
)


@dataclass
class Plan:
    lab: str
    namespaces: dict[str, str]  # node -> namespace
    ops: list[Op] = field(default_factory=list)
    # the programs phase, run once the network is built (lab/programs.py)
    programs: list[ProgOp] = field(default_factory=list)

    @classmethod
    def build(cls, topo: Topology, lab: str) -> Plan:
        nsmap = {n: ns_name(lab, n) for n in topo.nodes}
        plan = cls(lab=lab, namespaces=nsmap)
        ops = plan.ops
        ops.extend(Netns(ns) for ns in nsmap.values())
        for node in topo.nodes.values():
            ns = nsmap[node.name]
            ops.extend(Sysctl(ns, k, v) for k, v in BASE_SYSCTLS)
            if node.forwarding:
                ops.extend(Sysctl(ns, k, v) for k, v in FORWARDING_SYSCTLS)
        seen: dict[str, str] = {}
        for link in topo.links:
            a, b = mac_of(link.a.node, link.a.ifname), mac_of(link.b.node, link.b.ifname)
            for mac, ep in ((a, link.a), (b, link.b)):
                if mac in seen:  # 40 bits of a hash: never seen, but never silently
                    raise LabError(f"{topo.name}: {ep} and {seen[mac]} hash to the same MAC {mac}")
                seen[mac] = str(ep)
            ops.append(
                Veth(nsmap[link.a.node], link.a.ifname, nsmap[link.b.node], link.b.ifname, link.mtu, a, b)
            )
        for node in topo.nodes.values():
            ns = nsmap[node.name]
            ifnames = [ep.ifname for ep, _ in topo.links_of(node.name)]
            if node.role == "switch":
                ops.append(Bridge(ns, SWITCH_BRIDGE))
                ops.extend(Port(ns, i, SWITCH_BRIDGE) for i in ifnames)
                ifnames.append(SWITCH_BRIDGE)
            ops.append(Up(ns, "lo"))
            ops.extend(Up(ns, i) for i in ifnames)
            for ifname, addrs in node.interfaces.items():
                ops.extend(Addr(ns, ifname, a) for a in addrs)
            ops.extend(Sysctl(ns, k, v) for k, v in node.sysctls.items())
            ops.extend(RouteAdd(ns, r.dst, r.via, r.dev) for r in node.routes)
        plan.programs = programs.for_topology(topo, nsmap, lab)
        return plan

    # -- rendering for engines that run shell in the target kernel ----------------
    def render_shell(self) -> str:
        """A POSIX sh script that builds the topology with iproute2.

        ip commands are grouped into one ``ip -n NS -batch -`` per namespace
        and phase, because a process start is the expensive part in a TCG guest.
        """
        out = ["set -e", "ip -batch - <<'EOF'"]
        netns = [op.ns for op in self.ops if isinstance(op, Netns)]
        _safe(*netns)
        out.extend(f"netns add {ns}" for ns in netns)
        out.append("EOF")
        phases: list[list[Op]] = [
            [op for op in self.ops if isinstance(op, Sysctl) and _is_base(op)],
            [op for op in self.ops if isinstance(op, Veth)],
            [op for op in self.ops if isinstance(op, Bridge | Port | Up | Addr)],
            [op for op in self.ops if isinstance(op, Sysctl) and not _is_base(op)],
            [op for op in self.ops if isinstance(op, RouteAdd)],
        ]
        for phase in phases:
            by_ns: dict[str, list[Op]] = {}
            for op in phase:
                by_ns.setdefault(op.ns, []).append(op)
            # Namespaces are independent within a phase: their groups run
            # concurrently, and each background job's status is collected so
            # that a failure still fails the script.
            jobs = []
            for ns, ops in by_ns.items():
                sysctls = [op for op in ops if isinstance(op, Sysctl)]
                if sysctls:
                    body = "; ".join(
                        f"echo {shlex.quote(op.value)} > {_sysctl_path(op.key)}" for op in sysctls
                    )
                    jobs.append(f"ip netns exec {shlex.quote(ns)} sh -c {shlex.quote(body)}")
                lines = [_ip_line(op) for op in ops if not isinstance(op, Sysctl)]
                if lines:
                    jobs.append("\n".join([f"ip -n {shlex.quote(ns)} -batch - <<'EOF'", *lines, "EOF"]))
            if len(jobs) == 1:
                out.append(jobs[0])
            elif jobs:
                out.append("pids=")
                for job in jobs:
                    out.append(job.replace("\n", " &\n", 1) if job.startswith("ip -n") else f"{job} &")
                    out.append('pids="$pids $!"')
                out.append('for p in $pids; do wait "$p"; done')
        return "\n".join(out) + "\n"

    def render_teardown(self) -> str:
        """End what runs inside the namespaces (TERM, then KILL), then remove them."""
        nss = " ".join(shlex.quote(ns) for ns in self.namespaces.values())
        inside = f"for ns in {nss}; do ip netns pids $ns 2>/dev/null; done"
        return (f"p=$({inside}); [ -z \"$p\" ] || {{ kill $p 2>/dev/null; sleep 0.3; "
                f"p=$({inside}); [ -z \"$p\" ] || kill -9 $p 2>/dev/null; }}\n") + "".join(
            f"ip netns del {shlex.quote(ns)} 2>/dev/null || true\n" for ns in self.namespaces.values()
        )  # fmt: skip


def _is_base(op: Sysctl) -> bool:
    return (op.key, op.value) in BASE_SYSCTLS or (op.key, op.value) in FORWARDING_SYSCTLS


def _sysctl_path(key: str) -> str:
    if ".." in key or not _TOKEN.match(key):
        raise LabError(f"refusing sysctl key {key!r} (validate the topology)")
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


# A lab's name: it prefixes namespaces, pin directories and VM names.
LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,23}$")

# What may stand in a line of an ip -batch script or a shell word we build:
# names and addresses, never a quote, a space or a newline.
_TOKEN = re.compile(r"^[A-Za-z0-9_.:/%-]+$")


def _safe(*tokens: object) -> None:
    for t in tokens:
        if t is not None and not _TOKEN.match(str(t)):
            raise LabError(f"refusing to render {str(t)!r} into a shell script (validate the topology)")


def _ip_line(op: Op) -> str:
    _safe(*(getattr(op, f) for f in ("ns", "ifname", "peer_ifname", "peer_ns", "bridge", "dev", "mtu")
            if hasattr(op, f)))  # fmt: skip
    match op:
        case Veth():
            _safe(op.mac or None, op.peer_mac or None)
            mac = f" address {op.mac}" if op.mac else ""
            pmac = f" address {op.peer_mac}" if op.peer_mac else ""
            return (
                f"link add {op.ifname}{mac} mtu {op.mtu} type veth "
                f"peer name {op.peer_ifname}{pmac} mtu {op.mtu} netns {op.peer_ns}"
            )
        case Bridge():
            return f"link add {op.ifname} type bridge"
        case Port():
            return f"link set {op.ifname} master {op.bridge}"
        case Up():
            return f"link set {op.ifname} up"
        case Addr():
            nodad = " nodad" if op.addr.version == 6 else ""
            return f"addr add {op.addr.with_prefixlen} dev {op.ifname}{nodad}"
        case RouteAdd():
            via = f" via {op.via}" if op.via is not None else ""
            dev = f" dev {op.dev}" if op.dev else ""
            return f"route add {op.dst}{via}{dev}"
    raise TypeError(f"no ip command for {op!r}")
