"""Gateway ping's data plane as the lab sees it: the seed's arithmetic, the
layout of bpf/gwping.c's maps and counters, and the programs phase that runs
it on a topology's ports (``params.xdp``).  The prober is lab/gwprobe.py.

The seed (seeds/004): operators ping a gateway's data plane with a TCP SYN
whose TCP Timestamps option carries TSval MAGIC = 0xdeadbeef, written
big-endian (wire bytes ``de ad be ef``).  A gateway's XDP program
(bpf/gwping.c) forwards such a SYN after the seed's ``topt->magic--`` on a
little-endian host -- the first wire byte loses one, ``dd ad be ef``, i.e.
TSval MAGIC_PASS = 0xddadbeef -- and a data plane that sees MAGIC_PASS hands
the SYN to its kernel, which answers with a SYN-ACK (or an RST).  So a node
running a gateway data plane *and* a business service (the co-located case)
still answers a ping that crossed another gateway first.

Gateway data-plane model (``forward`` made concrete; see bpf/include/gwping.h):
a gateway data plane owns its ports.  Every IP packet arriving on a port,
whatever its destination address, leaves through the port's configured
egress towards a fixed next hop (``bpf_redirect`` -> XDP_REDIRECT, or XDP_TX
when the egress is the ingress port: a one-armed gateway), MACs rewritten
and the TTL / hop limit one less (a packet it would bring to 0 is dropped);
beyond that hop, the ping's only change on the wire is the seed's.  Handed to
the kernel: MAGIC_PASS pings, non-IP frames (ARP), IPv6 neighbour discovery,
and everything on a port without configuration.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lab.checksum import ones_sum, pseudo_header
from lab.errors import LabError
from lab.kernel import KernelHandle
from lab.kinds import XdpPort, xdp_ports
from lab.programs import Attached, Blob, IfIndex, MapUpdate, ProgOp, TxCsumOff, XdpAttach

if TYPE_CHECKING:
    from lab.topology import Topology

MAGIC = 0xDEADBEEF
MAGIC_PASS = 0xDDADBEEF
TCPOPT_TIMESTAMP = 8
TCPOLEN_TIMESTAMP = 10

# bpf/include/gwping.h enum gw_counter, same order
COUNTERS = (
    "ping_fwd",
    "ping_pass",
    "syn_ts_other",
    "syn_no_ts",
    "tcp_not_syn",
    "tcp_trunc",
    "not_tcp",
    "not_ip",
    "malformed",
    "ctrl_pass",
    "fwd_redirect",
    "fwd_tx",
    "fwd_nocfg",
    "fwd_ttl",
)
CLASS_COUNTERS = COUNTERS[:10]  # exactly one of these per packet
FWD_COUNTERS = COUNTERS[10:]  # one of these per packet that went to forwarding

BPF_OBJ = "gwping"
BPF_PROG = "xdp_gwping"
BPF_SEC = "xdp"
PORTS_MAP = "gw_ports"
COUNTERS_MAP = "gw_counters"


def seed_decrement(tsval: int) -> int:
    """The seed's ``topt->magic--`` on a little-endian host, on a TSval given in
    network (big-endian) order: the u32 read from the wire bytes is byte
    swapped, decremented, written back.  For a first wire byte > 0 that is
    TSval - 0x01000000; for a first byte 0 the borrow runs into the *second*
    wire byte (00 ad be ef -> ff ac be ef).  The XDP program only ever applies
    it to MAGIC, whose first byte is 0xde."""
    le = int.from_bytes(tsval.to_bytes(4, "big"), "little")
    le = (le - 1) & 0xFFFFFFFF
    return int.from_bytes(le.to_bytes(4, "little"), "big")


def seed_csum_fix(check: int, delta: int = 0x0100) -> int:
    """The seed's checksum update (as ip_decrease_ttl): the field, read in
    network order, plus 0x0100 with end-around carry; 0xffff folds to 0.
    DELTA 0x0001 is the same fix for a TSval at an odd offset from the TCP
    header, where its first byte is the low byte of a 16-bit word."""
    c = check + delta
    return (c + (c >= 0xFFFF)) & 0xFFFF


def tcp_checksum_ok(frame: bytes) -> bool:
    """Does the TCP checksum of an Ethernet frame (IPv4/IPv6, no VLAN, no IPv6
    extension headers) verify?  A full recomputation over pseudo-header and
    segment must sum to 0xffff."""
    return tcp_checksum_expected(frame)[0] == 0xFFFF


def tcp_checksum_expected(frame: bytes) -> tuple[int, int]:
    """(sum over pseudo header + segment as found, the canonical checksum a
    full recomputation stores) for an Ethernet frame as in tcp_checksum_ok."""
    et = int.from_bytes(frame[12:14], "big")
    ip = frame[14:]
    if et == 0x0800:
        ihl = (ip[0] & 0x0F) * 4
        tot = int.from_bytes(ip[2:4], "big")
        seg = ip[ihl:tot]
        pseudo = pseudo_header(4, ip[12:16], ip[16:20], 6, len(seg))
    elif et == 0x86DD:
        plen = int.from_bytes(ip[4:6], "big")
        if ip[6] != 6:
            raise ValueError("IPv6 with extension headers: not handled here")
        seg = ip[40 : 40 + plen]
        pseudo = pseudo_header(6, ip[8:24], ip[24:40], 6, len(seg))
    else:
        raise ValueError(f"not IPv4/IPv6: ethertype {et:#06x}")
    found = ones_sum(pseudo + seg)
    zeroed = seg[:16] + b"\0\0" + seg[18:]
    canonical = (~ones_sum(pseudo + zeroed)) & 0xFFFF
    return found, canonical


# -- the data plane's forwarding table (map gw_ports) ----------------------------------


@dataclass(frozen=True)
class GwPort:
    """struct gw_port: where a port of the gateway forwards to."""

    egress_ifindex: int
    smac: bytes
    dmac: bytes

    def pack(self) -> bytes:
        if len(self.smac) != 6 or len(self.dmac) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        return self.egress_ifindex.to_bytes(4, sys.byteorder) + self.smac + self.dmac

    @staticmethod
    def key(ingress_ifindex: int) -> bytes:
        return ingress_ifindex.to_bytes(4, sys.byteorder)


# One XDP program on one port, as params.xdp declares it (lab/kinds.py):
#     eth0: {prog: gwping, forward: eth1}   # gateway port eth0 -> eth1
#     eth2: {prog: gwping, forward: eth2}   # one-armed: XDP_TX
#     eth3: {prog: xdp_pass}                # accepts redirected frames
#     eth4: {prog: gwping, mode: generic}   # no forward: to the kernel


def xdp_attachments(topo: Topology) -> list[XdpPort]:
    """The ``params.xdp`` ports of every node (checked by Topology.validate)."""
    return [p for node in topo.nodes.values() for p in xdp_ports(node)]


@dataclass
class DataPlane:
    """The XDP programs of a running lab, attached from the topology, in its kernel."""

    kernel: KernelHandle = field(default_factory=KernelHandle)
    attached: list[tuple[XdpPort, str, int]] = field(default_factory=list)  # (att, ns, prog id)

    def prog_id(self, node: str, ifname: str) -> int:
        for att, _ns, pid in self.attached:
            if att.node == node and att.ifname == ifname:
                return pid
        raise LabError(f"no XDP program attached to {node}:{ifname}")

    def counters(self, node: str, ifname: str) -> dict[str, int]:
        """The gwping counters of the program on node:ifname, by name."""
        from lab import bpf

        mid = self.kernel.map_id(self.prog_id(node, ifname), COUNTERS_MAP)
        raw = bpf.map_u64_counters(self.kernel.map_dump(mid))
        return {name: raw.get(i, 0) for i, name in enumerate(COUNTERS)}

    @classmethod
    def of(cls, topo: Topology, namespaces: dict[str, str], kernel: KernelHandle) -> DataPlane:
        """The data plane a running lab's engine attached from ``params.xdp``."""
        dp = cls(kernel)
        for att in xdp_attachments(topo):
            pid = kernel.xdp_prog_id(namespaces[att.node], att.ifname)
            if pid is None:
                raise LabError(f"{att.node}:{att.ifname}: no XDP program attached (is the lab up?)")
            dp.attached.append((att, namespaces[att.node], pid))
        return dp

def peer_of(topo: Topology, node: str, ifname: str) -> tuple[str, str]:
    for ep, other in topo.links_of(node):
        if ep.ifname == ifname:
            return other.node, other.ifname
    raise LabError(f"{node}:{ifname} is on no link")


def program_ops(topo: Topology, namespaces: dict[str, str]) -> list[ProgOp]:
    """The programs phase of every ``params.xdp`` port (node -> namespace as the
    plan names them): TX checksum offload off on both ends of every link with
    an XDP port (see KernelHandle.tx_checksum_off: a redirected
    CHECKSUM_PARTIAL skb would leave with a partial checksum), each port's
    program, and each forwarding port's entry in gw_ports: frames leave
    EGRESS from EGRESS's MAC to the MAC of EGRESS's link peer (both the
    plan's).  Peers of redirect targets need an XDP program (a veth accepts
    redirected frames only then): declare xdp_pass on them."""
    from lab.plan import mac_of  # here: the prober (toalab gwping) imports this module for its MAGIC alone

    atts = xdp_attachments(topo)
    ends = {(a.node, a.ifname) for a in atts} | {peer_of(topo, a.node, a.ifname) for a in atts}
    ops: list[ProgOp] = [TxCsumOff(namespaces[node], ifname) for node, ifname in sorted(ends)]
    ops += [XdpAttach(namespaces[a.node], a.ifname, a.prog, a.mode, a.sec) for a in atts]
    for att in atts:  # the tables once every program is attached
        if att.forward is None:
            continue
        ns = namespaces[att.node]
        pnode, pif = peer_of(topo, att.node, att.forward)
        smac, dmac = _mac(mac_of(att.node, att.forward)), _mac(mac_of(pnode, pif))
        value = Blob.of(IfIndex(ns, att.forward), smac, dmac)
        ops.append(MapUpdate(Attached(ns, att.ifname), PORTS_MAP, Blob.of(IfIndex(ns, att.ifname)), value))
    return ops


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))
