"""Control plane of the fullnat XDP load balancer (bpf/lb.c).

The lb node of a fullnat topology stands in for the production DPDK LB:
``attach(lab)`` loads bpf/build/lb.o once with bpftool (program and maps
pinned under /sys/fs/bpf/toalab/<lab>/), attaches it natively to the lb's
client-side and RS-side ports, and fills its maps from the topology's
``services:`` section -- services (VIP:vport/proto -> real servers
ip:port), local address pools, next-hop MACs read from the running lab.
``LbHandle.detach()`` removes the programs and the pins.

Map layouts are those of bpf/include/lb.h (see the struct comments there);
the ``pack`` methods here are their only Python spelling.  The insertion
rule, the MSS rule and the flow-state lifetime are documented at the top of
bpf/lb.c.

Every command (ip, nsenter, bpftool, ethtool, mount) goes through the lab's
kernel handle (``lab.kernel()``, lab/kernel.py): the host's on the host
engine, the guest's on the VM engine, so the program, its pins (that
kernel's own bpffs) and the maps live in the kernel the lab's namespaces
are in.

Per-node settings: ``params.fullnat`` of the lb node and ``params.vxlan`` of
the real servers of a VXLAN service, typed and checked at load time in
lab/kinds.py (``Fullnat``, ``Vxlan``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lab import bpf, kinds
from lab.errors import LabError
from lab.kernel import KernelHandle

if TYPE_CHECKING:
    from lab.kernel import LabView
    from lab.net import Lab
    from lab.topology import Service, Topology

IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

BPF_OBJ = "lb"
BPF_PROG = "xdp_lb"
BASELINE_OBJ = "lb_mactx"
BASELINE_PROG = "xdp_mactx"
PIN_ROOT = Path("/sys/fs/bpf/toalab")

MAX_RS = 16
MAX_LOCAL = 8
SVC_VXLAN = 0x0001
PORT_CLIENT, PORT_RS = 1, 2
PROTO = {"tcp": 6, "udp": 17}
OPT_LEN = {4: 16, 6: 40}  # option bytes by inner (client) family
IP_HDR = {4: 20, 6: 40}
TCP_HDR = 20
VXLAN_OVERHEAD = 50
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


def svc_key(vip: IpAddr | str, vport: int, proto: int) -> bytes:
    a = ipaddress.ip_address(vip)
    return addr16(a) + struct.pack("!H", vport) + bytes([proto, a.version])


def u32(i: int) -> bytes:
    return struct.pack("<I", i)


@dataclass(frozen=True)
class Cfg:
    tcp_idle_s: float = 300.0
    udp_idle_s: float = 60.0
    lport_min: int = 1024
    lport_max: int = 65535

    def pack(self) -> bytes:
        if not 0 < self.lport_min <= self.lport_max <= 0xFFFF:
            raise LbError(f"local port range {self.lport_min}-{self.lport_max} is not valid")
        return struct.pack(
            "<QQHHI",
            int(self.tcp_idle_s * 1e9),
            int(self.udp_idle_s * 1e9),
            self.lport_min,
            self.lport_max,
            0,
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

    def key(self) -> bytes:
        return svc_key(self.vip, self.vport, self.proto)

    def pack(self) -> bytes:
        return struct.pack(
            "<IIIHHHHB3x",
            self.id,
            self.n_rs,
            self.n_local,
            self.flags,
            self.opt_pkts,
            self.mss_syn,
            self.mss_synack,
            self.rs_family,
        )


@dataclass(frozen=True)
class Rs:
    rip: IpAddr | str
    rport: int
    ifindex: int
    smac: bytes | str
    dmac: bytes | str
    vtep_src: str = "0.0.0.0"
    vtep_dst: str = "0.0.0.0"
    inner_smac: bytes | str = b"\0" * 6
    inner_dmac: bytes | str = b"\0" * 6
    vni: int = 0

    def pack(self) -> bytes:
        a = ipaddress.ip_address(self.rip)
        return (
            addr16(a)
            + struct.pack("!H", self.rport)
            + bytes([a.version, 0])
            + struct.pack("<I", self.ifindex)
            + _mac(self.smac)
            + _mac(self.dmac)
            + ipaddress.IPv4Address(self.vtep_src).packed
            + ipaddress.IPv4Address(self.vtep_dst).packed
            + _mac(self.inner_smac)
            + _mac(self.inner_dmac)
            + struct.pack("<I", self.vni)
        )


def mss_rules(
    client_family: int, rs_family: int, mtu_client: int, mtu_rs: int, vxlan: bool
) -> tuple[int, int]:
    """(mss_syn, mss_synack) -- the MSS rule of bpf/lb.c: the SYN-ACK's MSS bounds
    client->RS segments, which may carry the option (and VXLAN); the SYN's MSS
    bounds RS->client segments, which change family in NAT64."""
    synack = mtu_rs - IP_HDR[rs_family] - OPT_LEN[client_family] - TCP_HDR
    if vxlan:
        synack -= VXLAN_OVERHEAD
    syn = mtu_client - IP_HDR[client_family] - TCP_HDR
    return syn, synack


def tables(
    svcs: list[tuple[Svc, list[Rs], list[IpAddr | str]]],
    cfg: Cfg,
    ports: dict[int, int] | None = None,
) -> list[bpf.MapUpdate]:
    """Every map update that configures the program: each service with its
    real servers and local addresses, the VIPs, the config, the port roles."""
    out = [bpf.MapUpdate(M_CFG, u32(0), cfg.pack())]
    vips: set[bytes] = set()
    for svc, rss, locals_ in svcs:
        if not 0 < len(rss) <= MAX_RS or not 0 < len(locals_) <= MAX_LOCAL:
            raise LbError(
                f"service {svc.vip}:{svc.vport}: 1..{MAX_RS} real servers and 1..{MAX_LOCAL} local addresses"
            )
        for r in rss:
            if ipaddress.ip_address(r.rip).version != svc.rs_family:
                raise LbError(f"real server {r.rip} is not IPv{svc.rs_family} like the local addresses")
        out.append(bpf.MapUpdate(M_SERVICES, svc.key(), svc.pack()))
        vips.add(svc_key(svc.vip, 0, 0))
        for i, r in enumerate(rss):
            out.append(bpf.MapUpdate(M_RS, u32(svc.id * MAX_RS + i), r.pack()))
        for i, la in enumerate(locals_):
            out.append(bpf.MapUpdate(M_LOCAL, u32(svc.id * MAX_LOCAL + i), addr16(la)))
    for k in sorted(vips):
        out.append(bpf.MapUpdate(M_VIPS, k, u32(1)))
    for ifx, role in (ports or {}).items():
        out.append(bpf.MapUpdate(M_PORTS, u32(ifx), u32(role)))
    return out


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

    @classmethod
    def parse(cls, key: bytes, value: bytes) -> Flow:
        cfam = key[37]
        sport, dport = struct.unpack("!HH", key[32:36])
        lip, rip, vals = value[:16], value[16:32], value[32:]
        lport, rport = struct.unpack("!HH", vals[:4])
        (pkts,) = struct.unpack("<I", vals[16:20])
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
        )


def flows(entries: list[bpf.MapEntry]) -> list[Flow]:
    return [Flow.parse(e.key, e.value) for e in entries]


def counters(entries: list[bpf.MapEntry]) -> dict[str, int]:
    raw = bpf.map_u64_counters(entries)
    return {name: raw.get(i, 0) for i, name in enumerate(COUNTERS)}


# -- attaching to a lab ------------------------------------------------------------------


@dataclass
class LbHandle:
    lab_name: str
    lb_ns: str
    ifnames: list[str]
    prog_id: int
    pin_dir: Path
    peers: list[tuple[str, str]] = field(default_factory=list)  # (ns, ifname) with xdp_pass
    vxlan_devs: list[tuple[str, str]] = field(default_factory=list)
    kernel: KernelHandle = field(default_factory=KernelHandle)  # the kernel it lives in

    def map_id(self, name: str) -> int:
        return self.kernel.map_id(self.prog_id, name)

    def counters(self) -> dict[str, int]:
        return counters(self.kernel.map_dump(self.map_id(M_COUNTERS)))

    def flows(self) -> list[Flow]:
        return flows(self.kernel.map_dump(self.map_id(M_FWD)))

    def detach(self) -> None:
        k = self.kernel
        for ifname in self.ifnames:
            k.detach_xdp(self.lb_ns, ifname)
        for ns, ifname in self.peers:
            k.detach_xdp(ns, ifname)
        for ns, dev in self.vxlan_devs:
            k.exec(["ip", "-n", ns, "link", "del", dev])
        k.exec(["rm", "-rf", str(self.pin_dir)])
        k.exec(["rmdir", str(PIN_ROOT)])  # when empty


def enabled(topo: Topology) -> bool:
    """Whether ``toalab up`` runs the XDP LB: a topology with services does,
    unless its lb node says ``params.fullnat.xdp: false`` (a plain router)."""
    lbs = {s.lb for s in topo.services.values()}
    return bool(lbs) and all(kinds.fullnat(topo.node(n)).xdp for n in lbs)


def attached(lab: Lab) -> LbHandle:
    """The handle of the LB the engine attached when the lab came up."""
    topo = lab.topology
    if topo is None or not topo.services:
        raise LbError(f"lab '{lab.name}' has no services: no XDP LB")
    node = topo.node(next(iter(topo.services.values())).lb)
    fn = kinds.fullnat(node)
    ns = lab.ns(node.name)
    ifnames = [fn.client_if, fn.rs_if]
    k = lab.kernel()
    pid = k.xdp_prog_id(ns, ifnames[0])
    if pid is None:
        raise LbError(f"lab '{lab.name}': no XDP LB on {node.name}:{ifnames[0]}")
    return LbHandle(lab.name, ns, ifnames, pid, PIN_ROOT / lab.name, kernel=k)


def remove_pins(lab_name: str | None = None) -> list[str]:
    """Remove a lab's pinned maps (all labs' with None); what was removed."""
    dirs = [PIN_ROOT / lab_name] if lab_name else sorted(PIN_ROOT.glob("*")) if PIN_ROOT.is_dir() else []
    removed = []
    for d in dirs:
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    _rmdir_empty(PIN_ROOT)
    return removed


def _rmdir_empty(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.rmdir()


def _peer(topo: Topology, node: str, ifname: str) -> tuple[str, str]:
    for a, b in topo.links_of(node):
        if a.ifname == ifname:
            return b.node, b.ifname
    raise LbError(f"{node}:{ifname} has no link in {topo.name}")


def _link_mtu(topo: Topology, node: str, ifname: str) -> int:
    for link in topo.links:
        for end in (link.a, link.b):
            if end.node == node and end.ifname == ifname:
                return link.mtu
    return 1500


def _rs_ifname(topo: Topology, rs: str) -> str:
    for ifname in topo.node(rs).interfaces:
        if ifname != "lo":
            return ifname
    raise LbError(f"real server {rs} has no interface")


def service_config(
    lab: LabView, topo: Topology, svc: Service, sid: int, lb_ns: str, rs_if: str, client_if: str,
    opt_pkts: int, k: KernelHandle | None = None,
) -> tuple[Svc, list[Rs], list[IpAddr | str]]:  # fmt: skip
    """The map entries of one service, next hops read from the running lab."""
    k = k or lab.kernel()
    if not svc.local:
        raise LbError(f"service {svc.name}: no local addresses")
    rs_family = svc.local[0].version
    rss = []
    for name in svc.real_servers:
        node = topo.node(name)
        rip = node.address(rs_family)
        ifname = _rs_ifname(topo, name)
        rs = Rs(
            rip=rip,
            rport=svc.rs_port,
            ifindex=k.ifindex(lb_ns, rs_if),
            smac=k.mac(lb_ns, rs_if),
            dmac=k.mac(lab.ns(name), ifname),
        )
        vx = kinds.vxlan(node) if svc.vxlan else None
        if vx is not None:
            dev = vx.dev
            rs = Rs(
                rip=rip,
                rport=svc.rs_port,
                ifindex=rs.ifindex,
                smac=rs.smac,
                dmac=rs.dmac,
                vtep_src=str(topo.node(svc.lb).address(4)),
                vtep_dst=str(node.address(4)),
                inner_smac=k.mac(lb_ns, rs_if),
                inner_dmac=k.mac(lab.ns(name), dev),
                vni=vx.vni,
            )
        rss.append(rs)
    syn, synack = mss_rules(
        svc.vip.version,
        rs_family,
        _link_mtu(topo, svc.lb, client_if),
        _link_mtu(topo, svc.lb, rs_if),
        svc.vxlan,
    )
    out = []
    for proto in svc.protocols:
        out.append(
            Svc(
                vip=svc.vip,
                vport=svc.port,
                proto=PROTO[proto],
                id=sid,
                n_rs=len(rss),
                n_local=len(svc.local),
                rs_family=rs_family,
                flags=SVC_VXLAN if svc.vxlan else 0,
                opt_pkts=opt_pkts,
                mss_syn=syn,
                mss_synack=synack,
            )
        )
    return out, rss, list(svc.local)  # type: ignore[return-value]


def _vxlan_devices(lab: LabView, topo: Topology, handle: LbHandle) -> None:
    """A Linux vxlan device on each real server of a vxlan service (the
    seed's XRS): it decapsulates the LB's packets; the inner packet, option
    and all, is then received as if it had come in on the wire."""
    run = handle.kernel.run
    done: set[str] = set()
    for svc in topo.services.values():
        if not svc.vxlan:
            continue
        for name in svc.real_servers:
            if name in done:
                continue
            done.add(name)
            node = topo.node(name)
            vx = kinds.vxlan(node)
            if vx is None:
                raise LbError(f"service {svc.name} is vxlan but real server {name} has no params.vxlan")
            dev = vx.dev
            ns = lab.ns(name)
            ifname = _rs_ifname(topo, name)
            run(
                [
                    "ip",
                    "-n",
                    ns,
                    "link",
                    "add",
                    dev,
                    "type",
                    "vxlan",
                    "id",
                    str(vx.vni),
                    "local",
                    str(node.address(4)),
                    "dstport",
                    str(VXLAN_PORT),
                    "dev",
                    ifname,
                ],
                f"creating {dev} on {name}",
            )
            handle.vxlan_devs.append((ns, dev))
            run(["ip", "-n", ns, "link", "set", dev, "up"], f"bringing {dev} up on {name}")
            for conf in ("all", dev, ifname):
                run(
                    ["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0"],
                    f"rp_filter on {name}",
                )


def attach(lab: LabView, topo: Topology | None = None, *, lb: str | None = None) -> LbHandle:
    """Load bpf/lb.c on the lab's lb node and configure it from the topology's
    services.  LAB is a running Lab, or the engine bringing one up (with TOPO).
    Returns the handle whose ``detach`` undoes it all."""
    topo = topo or getattr(lab, "topology", None)
    if topo is None:
        raise LbError("attach: the lab has no topology (pass one)")
    svcs = [s for s in topo.services.values() if lb is None or s.lb == lb]
    if not svcs:
        raise LbError(f"{topo.name}: no services to load balance")
    lb_node = svcs[0].lb
    node = topo.node(lb_node)
    fn = kinds.fullnat(node)
    client_if, rs_if = fn.client_if, fn.rs_if
    cfg = Cfg(
        tcp_idle_s=float(fn.tcp_idle),
        udp_idle_s=float(fn.udp_idle),
        lport_min=fn.lport_min,
        lport_max=fn.lport_max,
    )
    opt_pkts = fn.udp_opt_pkts
    lb_ns = lab.ns(lb_node)
    obj = bpf.obj_path(BPF_OBJ)  # built on the host; a VM guest reads it over its 9p root
    pass_obj = bpf.obj_path("xdp_pass")
    k = lab.kernel()
    k.provide([obj, pass_obj])
    k.ensure_bpffs()
    pin_dir = PIN_ROOT / lab.name
    k.exec(["rm", "-rf", str(pin_dir)])
    k.run(["mkdir", "-p", str(pin_dir)], f"creating {pin_dir}")
    handle = LbHandle(lab.name, lb_ns, [], 0, pin_dir, kernel=k)
    try:
        k.run(["mkdir", str(pin_dir / "maps")], f"creating {pin_dir / 'maps'}")
        prog_pin = pin_dir / "prog"
        k.run(
            [
                "bpftool",
                "prog",
                "load",
                str(obj),
                str(prog_pin),
                "type",
                "xdp",
                "pinmaps",
                str(pin_dir / "maps"),
            ],
            f"loading {obj}",
        )
        if any(s.vxlan for s in svcs):
            _vxlan_devices(lab, topo, handle)
        # both ends of both lb links compute checksums in software; the peers
        # need an XDP program to accept redirected frames (KernelHandle.tx_checksum_off)
        for ifname in (client_if, rs_if):
            pnode, pif = _peer(topo, lb_node, ifname)
            k.tx_checksum_off(lb_ns, ifname)
            k.tx_checksum_off(lab.ns(pnode), pif)
            k.attach_xdp(lab.ns(pnode), pif, pass_obj)
            handle.peers.append((lab.ns(pnode), pif))
        for ifname in (client_if, rs_if):
            k.run(
                [
                    "nsenter",
                    f"--net={os.path.join('/run/netns', lb_ns)}",
                    "bpftool",
                    "net",
                    "attach",
                    "xdpdrv",
                    "pinned",
                    str(prog_pin),
                    "dev",
                    ifname,
                    "overwrite",
                ],
                f"attaching {BPF_PROG} to {lb_node}:{ifname}",
            )
            handle.ifnames.append(ifname)
        pid = k.xdp_prog_id(lb_ns, client_if)
        if pid is None:
            raise LbError(f"{lb_node}:{client_if}: no XDP program after attach")
        handle.prog_id = pid
        entries = [
            service_config(lab, topo, s, sid, lb_ns, rs_if, client_if, opt_pkts, k)
            for sid, s in enumerate(svcs)
        ]
        flat = [(sv, rss, locs) for svl, rss, locs in entries for sv in svl]  # type: ignore[union-attr]
        ports = {k.ifindex(lb_ns, client_if): PORT_CLIENT, k.ifindex(lb_ns, rs_if): PORT_RS}
        ids = k.prog_map_ids(pid)
        for u in tables(flat, cfg, ports):
            mid = ids.get(u.map[:15])
            if mid is None:
                raise LbError(f"program {pid} has no map {u.map}")
            k.map_update(mid, u.key, u.value)
    except BaseException:
        handle.detach()
        raise
    return handle
