"""Control plane of the fullnat XDP load balancer (bpf/lb.c).

The lb node of a fullnat topology stands in for the production DPDK LB.
``ops(topo, namespaces, lab)`` says, as programs-phase data
(lab/programs.py), how to run it: load bpf/build/lb.o once (program and
maps pinned under /sys/fs/bpf/toalab/<lab>/), attach it natively to the
lb's client-side and RS-side ports, and fill its maps from the topology's
``services:`` section -- services (VIP:vport/proto -> real servers
ip:port), local address pools, next-hop MACs from the plan (mac_of).  The
plan carries these ops and every engine runs them at ``up``;
``attach(lab)`` runs them on a lab that is already up and
``LbHandle.detach()`` undoes them.

Map layouts are those of bpf/include/lb.h (see the struct comments there);
the ``pack`` methods here are their only Python spelling.  The insertion
rule, the MSS rule and the flow-state lifetime are documented at the top of
bpf/lb.c.

The ops run through the lab's kernel handle (lab/kernel.py): the host's on
the host engine, the guest's on the VM engine, so the program, its pins
(that kernel's own bpffs) and the maps live in the kernel the lab's
namespaces are in.

Per-node settings: ``params.fullnat`` of the lb node and ``params.vxlan`` of
the real servers of a VXLAN service, typed and checked at load time in
lab/kinds.py (``Fullnat``, ``Vxlan``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lab import bpf, kinds, programs, sched
from lab.errors import LabError
from lab.kernel import KernelHandle
from lab.plan import mac_of
from lab.programs import (
    Blob,
    IfIndex,
    MapUpdate,
    ProgLoad,
    ProgOp,
    TxCsumOff,
    VxlanDev,
    XdpAttach,
    XdpAttachPinned,
    pin_dir,
)
from lab.topology import MAX_RS

if TYPE_CHECKING:
    from lab.net import Lab
    from lab.topology import Service, Topology

IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

BPF_OBJ = "lb"
BPF_PROG = "xdp_lb"
BASELINE_OBJ = "lb_mactx"
BASELINE_PROG = "xdp_mactx"

MAX_LOCAL = 8
SVC_VXLAN = 0x0001
RS_DOWN = 0x0001
PORT_CLIENT, PORT_RS = 1, 2
PROTO = {"tcp": 6, "udp": 17}
OPT_LEN = {4: 16, 6: 40}  # option bytes by inner (client) family
IP_HDR = {4: 20, 6: 40}
TCP_HDR = 20
VXLAN_OVERHEAD = {4: 50, 6: 70}  # by underlay family: outer IP + UDP + VXLAN + inner Ethernet
VXLAN_PORT = 4789

# bpf/include/lb.h enum lb_counter, same order
COUNTERS = (
    "fwd",
    "fwd_opt",
    "rev",
    "new_flow",
    "pass",
    "malformed",
    "frag",
    "no_rs",
    "no_port",
    "opt31_drop",
    "client_ipopt",
    "mss_clamp",
    "udp_nocsum",
    "adjust_fail",
    "vxlan",
    "expired",
    "decap",
    "decap_fail",
    "ttl_expired",
    "persist",
    "resched",
    "udp_opt_mtu",
    "wrong_port",
    "icmp",
    "icmp_drop",
    "pair_broken",
)

# map names (the kernel keeps 15 characters)
M_SERVICES, M_VIPS, M_RS, M_LOCAL, M_CFG, M_PORTS = (
    "lb_services",
    "lb_vips",
    "lb_rs",
    "lb_local",
    "lb_cfg",
    "lb_ports",
)
M_FWD, M_REV, M_COUNTERS = "lb_fwd", "lb_rev", "lb_counters"
M_VTEPS, M_SELF = "lb_vteps", "lb_self"  # the LB's VTEPs; the program itself (prog array, key 0)
M_RING, M_PERSIST, M_RS_FLOWS = "lb_ring", "lb_persist", "lb_rs_flows"


class LbError(LabError):
    """The load balancer could not be configured, attached or read."""


def addr16(ip: IpAddr | str) -> bytes:
    """An address as union lb_addr: 16 bytes, IPv4 in the first four."""
    a = ipaddress.ip_address(ip)
    return a.packed.ljust(16, b"\0")


def _mac(m: bytes | str) -> bytes:
    if isinstance(m, str):
        m = bytes.fromhex(m.replace(":", ""))
    if len(m) != 6:
        raise LbError(f"bad MAC {m!r}")
    return m


def vtep_key(addr: IpAddr | str, vni: int) -> bytes:
    """struct lb_vtep_key: one of the LB's VTEP addresses and a VNI it decapsulates."""
    a = ipaddress.ip_address(addr)
    return addr16(a) + struct.pack("<I", vni) + bytes([a.version, 0, 0, 0])


def svc_key(vip: IpAddr | str, vport: int, proto: int) -> bytes:
    a = ipaddress.ip_address(vip)
    return addr16(a) + struct.pack("!H", vport) + bytes([proto, a.version])


def u32(i: int) -> bytes:
    return struct.pack("<I", i)


def _u32(i: int | IfIndex) -> bytes | IfIndex:
    return i if isinstance(i, IfIndex) else u32(i)


def _no_placeholder(ns: str, ifname: str) -> int:
    raise LbError(f"the ifindex of {ns}:{ifname} is known only in a running lab (programs.apply)")


@dataclass(frozen=True)
class Cfg:
    tcp_idle_s: float = 300.0
    udp_idle_s: float = 60.0
    lport_min: int = 1024
    lport_max: int = 65535
    hash_key: int = 0  # flow_hash's key: ops() draws a random one per attach

    def pack(self) -> bytes:
        if not 0 < self.lport_min <= self.lport_max <= 0xFFFF:
            raise LbError(f"local port range {self.lport_min}-{self.lport_max} is not valid")
        return struct.pack(
            "<QQHHI",
            int(self.tcp_idle_s * 1e9),
            int(self.udp_idle_s * 1e9),
            self.lport_min,
            self.lport_max,
            self.hash_key & 0xFFFFFFFF,
        )


@dataclass(frozen=True)
class Svc:
    vip: IpAddr | str
    vport: int
    proto: int
    id: int
    n_rs: int
    n_local: int
    rs_family: int
    flags: int = 0
    opt_pkts: int = 1
    mss_syn: int = 0
    mss_synack: int = 0
    scheduler: str = sched.DEFAULT
    persist_s: int = 0
    mtu_rs: int = 0  # the RS side's path MTU: UDP's room for the option (0: no guard)

    def key(self) -> bytes:
        return svc_key(self.vip, self.vport, self.proto)

    @classmethod
    def parse(cls, key: bytes, value: bytes) -> tuple[Svc, int]:
        """An lb_services entry: the service and its ring_len."""
        vport, proto, fam = struct.unpack("!H", key[16:18])[0], key[18], key[19]
        sid, n_rs, n_local, flags, opt_pkts, mss_syn, mss_synack, rfam, sch, ring_len, persist, mtu, _ = (
            struct.unpack("<IIIHHHHBBHIHH", value[:32])
        )
        svc = cls(_addr(key[:16], fam), vport, proto, sid, n_rs, n_local, rfam, flags, opt_pkts, mss_syn,
                  mss_synack, sched.name_of(sch), persist, mtu)  # fmt: skip
        return svc, ring_len

    def pack(self, ring_len: int = 0) -> bytes:
        """struct lb_svc; ring_len: the slots of its ring in use (entries() knows)."""
        return struct.pack(
            "<IIIHHHHBBHIHH",
            self.id,
            self.n_rs,
            self.n_local,
            self.flags,
            self.opt_pkts,
            self.mss_syn,
            self.mss_synack,
            self.rs_family,
            sched.number(self.scheduler),
            ring_len,
            self.persist_s,
            self.mtu_rs,
            0,
        )


@dataclass(frozen=True)
class Rs:
    rip: IpAddr | str
    rport: int
    ifindex: int | IfIndex
    smac: bytes | str
    dmac: bytes | str
    vtep_src: str = "0.0.0.0"  # VXLAN: the LB's VTEP and the RS's, of one family (the underlay)
    vtep_dst: str = "0.0.0.0"
    inner_smac: bytes | str = b"\0" * 6
    inner_dmac: bytes | str = b"\0" * 6
    vni: int = 0
    weight: int = 1
    down: bool = False
    name: str = ""  # stable identity in the Maglev ring (the node's name); rip when empty

    def server(self) -> sched.Server:
        return sched.Server(self.name or str(self.rip), self.weight, not self.down)

    def blob(self) -> Blob:
        """struct lb_rs; the ifindex may be a placeholder filled in when the ops run."""
        a = ipaddress.ip_address(self.rip)
        src, dst = ipaddress.ip_address(self.vtep_src), ipaddress.ip_address(self.vtep_dst)
        if src.version != dst.version:
            raise LbError(f"VTEPs {src} and {dst} are not of one family")
        return Blob.of(
            addr16(a) + struct.pack("!H", self.rport) + bytes([a.version, src.version]),
            _u32(self.ifindex),
            _mac(self.smac)
            + _mac(self.dmac)
            + struct.pack("<I", self.vni)
            + addr16(src)
            + addr16(dst)
            + _mac(self.inner_smac)
            + _mac(self.inner_dmac)
            + struct.pack("<HH", self.weight, RS_DOWN if self.down else 0),
        )

    def pack(self) -> bytes:
        return self.blob().resolve(_no_placeholder)

    @classmethod
    def parse(cls, value: bytes, name: str = "") -> Rs:
        """An lb_rs entry (as the kernel holds it: the ifindex resolved)."""
        fam, vfam = value[18], value[19]
        (ifindex,) = struct.unpack("<I", value[20:24])
        (vni,) = struct.unpack("<I", value[36:40])
        weight, flags = struct.unpack("<HH", value[84:88])
        return cls(
            str(_addr(value[:16], fam)), struct.unpack("!H", value[16:18])[0], ifindex, value[24:30],
            value[30:36], str(_addr(value[40:56], vfam or 4)), str(_addr(value[56:72], vfam or 4)),
            value[72:78], value[78:84], vni, weight, bool(flags & RS_DOWN), name,
        )  # fmt: skip


def mss_rules(
    client_family: int, rs_family: int, mtu_client: int, mtu_rs: int, vxlan: bool
) -> tuple[int, int]:
    """(mss_syn, mss_synack) -- the MSS rule of bpf/lb.c: the SYN-ACK's MSS bounds
    client->RS segments, which may carry the option (and VXLAN, whose underlay
    is the RS side's family); the SYN's MSS bounds RS->client segments, which
    change family in NAT64."""
    synack = mtu_rs - IP_HDR[rs_family] - OPT_LEN[client_family] - TCP_HDR
    if vxlan:
        synack -= VXLAN_OVERHEAD[rs_family]
    syn = mtu_client - IP_HDR[client_family] - TCP_HDR
    return syn, synack


def ring_value(table: list[int]) -> bytes:
    """struct lb_ring: the ring's slots, the unused tail zero."""
    if len(table) > sched.RING:
        raise LbError(f"a ring of {len(table)} slots (at most {sched.RING})")
    return bytes(table).ljust(sched.RING, b"\0")


def entries(
    svcs: list[tuple[Svc, list[Rs], list[IpAddr | str]]],
    cfg: Cfg,
    ports: dict[int | IfIndex, int] | None = None,
) -> list[tuple[str, Blob, Blob]]:
    """Every map entry that configures the program, as (map, key, value): each
    service with its real servers and local addresses, the VIPs, the config,
    the port roles.  Interface indexes may be placeholders (a plan's)."""
    out = [(M_CFG, Blob.of(u32(0)), Blob.of(cfg.pack()))]
    vips: set[bytes] = set()
    vteps: set[bytes] = set()
    rings: set[int] = set()  # a service's TCP and UDP share its id, real servers and ring
    for svc, rss, locals_ in svcs:
        if not 0 < len(rss) <= MAX_RS or not 0 < len(locals_) <= MAX_LOCAL:
            raise LbError(
                f"service {svc.vip}:{svc.vport}: 1..{MAX_RS} real servers and 1..{MAX_LOCAL} local addresses"
            )
        for r in rss:
            if ipaddress.ip_address(r.rip).version != svc.rs_family:
                raise LbError(f"real server {r.rip} is not IPv{svc.rs_family} like the local addresses")
        table = sched.ring(svc.scheduler, [r.server() for r in rss])
        out.append((M_SERVICES, Blob.of(svc.key()), Blob.of(svc.pack(len(table)))))
        if svc.id not in rings:
            rings.add(svc.id)
            out.append((M_RING, Blob.of(u32(svc.id)), Blob.of(ring_value(table))))
        vips.add(svc_key(svc.vip, 0, 0))
        for i, r in enumerate(rss):
            out.append((M_RS, Blob.of(u32(svc.id * MAX_RS + i)), r.blob()))
            if svc.flags & SVC_VXLAN:
                vteps.add(vtep_key(r.vtep_src, r.vni))
        for i, la in enumerate(locals_):
            out.append((M_LOCAL, Blob.of(u32(svc.id * MAX_LOCAL + i)), Blob.of(addr16(la))))
    out.extend((M_VIPS, Blob.of(k), Blob.of(u32(1))) for k in sorted(vips))
    out.extend((M_VTEPS, Blob.of(k), Blob.of(u32(1))) for k in sorted(vteps))
    out.extend((M_PORTS, Blob.of(_u32(ifx)), Blob.of(u32(role))) for ifx, role in (ports or {}).items())
    return out


def tables(
    svcs: list[tuple[Svc, list[Rs], list[IpAddr | str]]],
    cfg: Cfg,
    ports: dict[int, int] | None = None,
) -> list[bpf.MapUpdate]:
    """entries() with every ifindex known (BPF_PROG_TEST_RUN fixtures, benches)."""
    return [
        bpf.MapUpdate(m, k.resolve(_no_placeholder), v.resolve(_no_placeholder))
        for m, k, v in entries(svcs, cfg, dict(ports or {}))
    ]


# -- flow state as the maps hold it ------------------------------------------------------


def flow_key(src: IpAddr | str, dst: IpAddr | str, sport: int, dport: int, proto: int) -> bytes:
    """struct lb_flow_key: a flow as one packet names it."""
    a = ipaddress.ip_address(src)
    return addr16(a) + addr16(dst) + struct.pack("!HH", sport, dport) + bytes([proto, a.version, 0, 0])


def fwd_value(
    lip: IpAddr | str, rip: IpAddr | str, lport: int, rport: int, rs_idx: int, *, established: bool = False
) -> bytes:
    """struct lb_fwd (last_ns 0: give the Cfg an idle lifetime longer than the uptime)."""
    fam = ipaddress.ip_address(lip).version
    return (
        addr16(lip)
        + addr16(rip)
        + struct.pack("!HH", lport, rport)
        + struct.pack("<IQI", rs_idx, 0, 0)
        + bytes([fam, 1 if established else 0, 0, 0])
    )


def rev_value(
    cip: IpAddr | str, vip: IpAddr | str, cport: int, vport: int, ifindex: int, *, established: bool = False
) -> bytes:
    """struct lb_rev (MACs zero, last_ns 0)."""
    fam = ipaddress.ip_address(cip).version
    return (
        addr16(cip)
        + addr16(vip)
        + struct.pack("!HH", cport, vport)
        + struct.pack("<I", ifindex)
        + bytes(12)
        + bytes([fam, 1 if established else 0, 0, 0])
        + bytes(8)
    )


def flow_entries(
    cip: IpAddr | str, vip: IpAddr | str, cport: int, vport: int, proto: int,
    lip: IpAddr | str, rip: IpAddr | str, lport: int, rport: int, rs_idx: int,
    *, ifindex: int = 1, established: bool = False,
) -> list[bpf.MapUpdate]:  # fmt: skip
    """Both halves of a flow, naming each other (the program uses a forward entry only
    with its reverse half): what a new flow's first packet would have left."""
    return [
        bpf.MapUpdate(M_FWD, flow_key(cip, vip, cport, vport, proto),
                      fwd_value(lip, rip, lport, rport, rs_idx, established=established)),
        bpf.MapUpdate(M_REV, flow_key(rip, lip, rport, lport, proto),
                      rev_value(cip, vip, cport, vport, ifindex, established=established)),
    ]  # fmt: skip


def persist_key(cip: IpAddr | str, svc_id: int) -> bytes:
    """struct lb_persist_key: a client of a service."""
    a = ipaddress.ip_address(cip)
    return addr16(a) + struct.pack("<I", svc_id) + bytes([a.version, 0, 0, 0])


def persist_value(last_ns: int, rs_idx: int) -> bytes:
    """struct lb_persist."""
    return struct.pack("<QII", last_ns, rs_idx, 0)


def _addr(b: bytes, family: int) -> IpAddr:
    return ipaddress.ip_address(b[:4] if family == 4 else b[:16])


@dataclass(frozen=True)
class Flow:
    """One lb_fwd entry: client view -> RS view."""

    cip: IpAddr
    vip: IpAddr
    cport: int
    vport: int
    proto: int
    lip: IpAddr
    rip: IpAddr
    lport: int
    rport: int
    pkts: int
    rs_established: bool
    rs_idx: int = 0
    last_ns: int = 0

    @classmethod
    def parse(cls, key: bytes, value: bytes) -> Flow:
        cfam = key[37]
        sport, dport = struct.unpack("!HH", key[32:36])
        lip, rip, vals = value[:16], value[16:32], value[32:]
        lport, rport = struct.unpack("!HH", vals[:4])
        rs_idx, last_ns, pkts = struct.unpack("<IQI", vals[4:20])
        rfam, state = vals[20], vals[21]
        return cls(
            _addr(key[:16], cfam),
            _addr(key[16:32], cfam),
            sport,
            dport,
            key[36],
            _addr(lip, rfam),
            _addr(rip, rfam),
            lport,
            rport,
            pkts,
            bool(state & 1),
            rs_idx,
            last_ns,
        )


def flows(entries: list[bpf.MapEntry]) -> list[Flow]:
    return [Flow.parse(e.key, e.value) for e in entries]


def counters(entries: list[bpf.MapEntry]) -> dict[str, int]:
    raw = bpf.map_u64_counters(entries)
    return {name: raw.get(i, 0) for i, name in enumerate(COUNTERS)}


# -- the LB in a lab: the programs phase --------------------------------------------------


def enabled(topo: Topology) -> bool:
    """Whether ``toalab up`` runs the XDP LB: a topology with services does,
    unless its lb node says ``params.fullnat.xdp: false`` (a plain router)."""
    lbs = {s.lb for s in topo.services.values()}
    return bool(lbs) and all(kinds.fullnat(topo.node(n)).xdp for n in lbs)


def program_ops(topo: Topology, namespaces: dict[str, str], lab: str) -> list[ProgOp]:
    """The LB's part of the programs phase, when the topology wants it (enabled)."""
    return ops(topo, namespaces, lab) if enabled(topo) else []


def ops(topo: Topology, namespaces: dict[str, str], lab: str, *, lb: str | None = None) -> list[ProgOp]:
    """Load bpf/lb.c once (pinned), attach it to the lb node's client-side and
    RS-side ports, and fill its maps from the topology's services: pure data,
    next-hop MACs from the plan (mac_of), interface indexes as placeholders.
    Both ends of both lb links compute checksums in software and the peers run
    xdp_pass, which a veth needs to accept redirected frames; VXLAN services get
    a vxlan device on each real server, which decapsulates the LB's packets."""
    svcs = [s for s in topo.services.values() if lb is None or s.lb == lb]
    if not svcs:
        raise LbError(f"{topo.name}: no services to load balance")
    lb_node = svcs[0].lb
    fn = kinds.fullnat(topo.node(lb_node))
    # a new secret per attach: which local port a flow gets is not computable outside
    cfg = Cfg(float(fn.tcp_idle), float(fn.udp_idle), fn.lport_min, fn.lport_max, secrets.randbits(32))
    lb_ns = namespaces[lb_node]
    pin = str(pin_dir(lab))
    out: list[ProgOp] = [ProgLoad(pin, BPF_OBJ, self_map=M_SELF)]
    out += _vxlan_devices(topo, namespaces, svcs)
    for ifname in (fn.client_if, fn.rs_if):
        pnode, pif = _peer(topo, lb_node, ifname)
        peer_ns = namespaces[pnode]
        out += [TxCsumOff(lb_ns, ifname), TxCsumOff(peer_ns, pif), XdpAttach(peer_ns, pif, "xdp_pass")]
    out += [XdpAttachPinned(lb_ns, ifname, pin) for ifname in (fn.client_if, fn.rs_if)]
    ids = service_ids(topo, lb)
    configs = [service_config(topo, s, ids[s.name], lb_ns, fn, namespaces) for s in svcs]
    flat = [(sv, rss, locs) for svl, rss, locs in configs for sv in svl]
    ports: dict[int | IfIndex, int] = {
        IfIndex(lb_ns, fn.client_if): PORT_CLIENT,
        IfIndex(lb_ns, fn.rs_if): PORT_RS,
    }
    out += [MapUpdate(pin, m, k, v) for m, k, v in entries(flat, cfg, ports)]
    return out


def service_ids(topo: Topology, lb: str | None = None) -> dict[str, int]:
    """Service name -> its id in the maps (lb_svc.id: its real servers, ring, persistence)."""
    return {s.name: i for i, s in enumerate(s for s in topo.services.values() if lb is None or s.lb == lb)}


def _link_mtu(topo: Topology, node: str, ifname: str) -> int:
    for link in topo.links:
        for end in (link.a, link.b):
            if end.node == node and end.ifname == ifname:
                return link.mtu
    return 1500


def rs_side_mtu(
    topo: Topology, svc: Service, rs_if: str, mtus: dict[tuple[str, str], int] | None = None
) -> int:
    """The smallest MTU between the LB and any of the service's real servers: its
    RS-side port's link and each real server's own link (``mtus``: measured ones,
    node:if -> MTU, of a running lab, where they may have changed)."""
    def mtu(node: str, ifname: str) -> int:
        peer = _peer(topo, node, ifname)
        if mtus is None:
            return _link_mtu(topo, node, ifname)
        return min(mtus.get((node, ifname), 1500), mtus.get(peer, 1500))

    return min([mtu(svc.lb, rs_if), *(mtu(rs, _rs_ifname(topo, rs)) for rs in svc.real_servers)])


def _rs_ifname(topo: Topology, rs: str) -> str:
    for ifname in topo.node(rs).interfaces:
        if ifname != "lo":
            return ifname
    raise LbError(f"real server {rs} has no interface")


def peer_of(topo: Topology, node: str, ifname: str) -> tuple[str, str]:
    """The other end of node:ifname's link."""
    return _peer(topo, node, ifname)


def _peer(topo: Topology, node: str, ifname: str) -> tuple[str, str]:
    for a, b in topo.links_of(node):
        if a.ifname == ifname:
            return b.node, b.ifname
    raise LbError(f"{node}:{ifname} has no link in {topo.name}")


def service_config(
    topo: Topology, svc: Service, sid: int, lb_ns: str, fn: kinds.Fullnat, namespaces: dict[str, str]
) -> tuple[list[Svc], list[Rs], list[IpAddr | str]]:
    """The map entries of one service: next hops from the plan's MACs, the egress
    port's ifindex a placeholder."""
    if not svc.local:
        raise LbError(f"service {svc.name}: no local addresses")
    rs_family = svc.local[0].version
    lb_mac = mac_of(svc.lb, fn.rs_if)
    rss = []
    for name in svc.real_servers:
        node = topo.node(name)
        rs = Rs(
            rip=node.address(rs_family),
            rport=svc.rs_port,
            ifindex=IfIndex(lb_ns, fn.rs_if),
            smac=lb_mac,
            dmac=mac_of(name, _rs_ifname(topo, name)),
            weight=svc.weight(name),
            name=name,
        )
        vx = kinds.vxlan(node) if svc.vxlan else None
        if vx is not None:
            rs = dataclasses.replace(
                rs,
                vtep_src=lb_vtep(topo, svc),
                vtep_dst=str(node.address(rs_family)),
                inner_smac=lb_mac,
                inner_dmac=mac_of(name, vx.dev),
                vni=vx.vni,
            )
        rss.append(rs)
    mtu_rs = rs_side_mtu(topo, svc, fn.rs_if)
    client_mtu = _link_mtu(topo, svc.lb, fn.client_if)
    syn, synack = mss_rules(svc.vip.version, rs_family, client_mtu, mtu_rs, svc.vxlan)
    out = [
        Svc(
            vip=svc.vip,
            vport=svc.port,
            proto=PROTO[proto],
            id=sid,
            n_rs=len(rss),
            n_local=len(svc.local),
            rs_family=rs_family,
            flags=SVC_VXLAN if svc.vxlan else 0,
            opt_pkts=fn.udp_opt_pkts,
            mss_syn=syn,
            mss_synack=synack,
            scheduler=svc.scheduler,
            persist_s=svc.persistence,
            mtu_rs=mtu_rs,
        )
        for proto in svc.protocols
    ]
    return out, rss, list(svc.local)


def lb_vtep(topo: Topology, svc: Service) -> str:
    """The LB's VTEP: its first address of the RS side's family on its RS-side port."""
    fam = svc.local[0].version
    port = kinds.fullnat(topo.node(svc.lb)).rs_if
    for a in topo.node(svc.lb).interfaces.get(port, []):
        if a.version == fam:
            return str(a.ip)
    raise LbError(f"service {svc.name}: {svc.lb}:{port} has no IPv{fam} address for the VXLAN underlay")


def _vxlan_devices(topo: Topology, namespaces: dict[str, str], svcs: list[Service]) -> list[ProgOp]:
    """A Linux vxlan device on each real server of a vxlan service (the seed's
    XRS): it decapsulates the LB's packets; the inner packet, option and all, is
    then received as if it had come in on the wire.  The device's remote is the
    LB's VTEP and the LB's local addresses are routed into it: replies go back
    through the tunnel, where the LB unwraps them."""
    out: list[ProgOp] = []
    done: set[str] = set()
    for svc in svcs:
        for name in svc.real_servers if svc.vxlan else ():
            if name in done:
                continue
            done.add(name)
            node = topo.node(name)
            vx = kinds.vxlan(node)
            if vx is None:
                raise LbError(f"service {svc.name} is vxlan but real server {name} has no params.vxlan")
            fam = svc.local[0].version  # the underlay is the RS side's family
            fn = kinds.fullnat(topo.node(svc.lb))
            out.append(VxlanDev(namespaces[name], vx.dev, vx.vni, str(node.address(fam)), VXLAN_PORT,
                                _rs_ifname(topo, name), mac_of(name, vx.dev),
                                remote=lb_vtep(topo, svc),
                                peers=tuple(str(a) for a in svc.local),
                                peer_mac=mac_of(svc.lb, fn.rs_if)))  # fmt: skip
    return out


@dataclass
class LbHandle:
    """The LB of a running lab: its maps, and detach (what ``ops`` did, undone)."""

    lab_name: str
    lb_ns: str
    prog_id: int
    ops: list[ProgOp]
    kernel: KernelHandle = field(default_factory=KernelHandle)  # the kernel it lives in
    _map_ids: dict[str, int] = field(default_factory=dict, repr=False)  # a program's maps stay its own

    def map_id(self, name: str) -> int:
        if not self._map_ids:
            self._map_ids = self.kernel.prog_map_ids(self.prog_id)
        if name[:15] not in self._map_ids:  # the kernel keeps 15 characters of a name
            have = ", ".join(self._map_ids)
            raise LbError(f"program {self.prog_id} uses no map named {name} (maps: {have})")
        return self._map_ids[name[:15]]

    def counters(self) -> dict[str, int]:
        return counters(self.kernel.map_dump(self.map_id(M_COUNTERS)))

    def flows(self) -> list[Flow]:
        return flows(self.kernel.map_dump(self.map_id(M_FWD)))

    def detach(self) -> None:
        programs.undo(self.kernel, self.ops, self.lab_name)


def attached(lab: Lab) -> LbHandle:
    """The handle of the LB the engine attached when the lab came up."""
    topo = lab.topology
    if topo is None or not topo.services:
        raise LbError(f"lab '{lab.name}' has no services: no XDP LB")
    node = topo.node(next(iter(topo.services.values())).lb)
    fn = kinds.fullnat(node)
    k = lab.kernel()
    pid = k.xdp_prog_id(lab.ns(node.name), fn.client_if)
    if pid is None:
        raise LbError(f"lab '{lab.name}': no XDP LB on {node.name}:{fn.client_if}")
    nsmap = {n: lab.ns(n) for n in topo.nodes}
    return LbHandle(lab.name, lab.ns(node.name), pid, ops(topo, nsmap, lab.name), kernel=k)


def attach(lab: Lab, topo: Topology | None = None, *, lb: str | None = None) -> LbHandle:
    """Run the LB's ops on a running lab (whether or not its topology enables the
    LB at up); returns the handle whose ``detach`` undoes them."""
    topo = topo or lab.topology
    if topo is None:
        raise LbError("attach: the lab has no topology (pass one)")
    nsmap = {n: lab.ns(n) for n in topo.nodes}
    todo = ops(topo, nsmap, lab.name, lb=lb)  # raises when no service matches
    lb_node = next(s.lb for s in topo.services.values() if lb is None or s.lb == lb)
    k = lab.kernel()
    try:
        programs.apply(k, todo)
    except BaseException:
        programs.undo(k, todo, lab.name)
        raise
    pid = k.xdp_prog_id(nsmap[lb_node], kinds.fullnat(topo.node(lb_node)).client_if)
    if pid is None:
        raise LbError(f"{lb_node}: no XDP program after attach")
    return LbHandle(lab.name, nsmap[lb_node], pid, todo, kernel=k)
