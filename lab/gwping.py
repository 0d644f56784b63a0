"""Gateway ping: the prober (``toalab gwping``) and the gateway data-plane model.

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
when the egress is the ingress port: a one-armed gateway), MACs rewritten,
nothing else touched (no TTL decrement: the ping's only change on the wire
is the seed's).  Handed to the kernel: MAGIC_PASS pings, non-IP frames (ARP),
IPv6 neighbour discovery, and everything on a port without configuration.

The prober sends one SYN per probe from its own source port, through a raw
socket of the kernel (so routing and neighbour resolution are the node's),
and matches the answer by addresses, ports and acknowledgement number; the
prober's kernel answers the SYN-ACK with an RST of its own (no socket owns
the port), which changes nothing for the measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import select
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from lab.checksum import ones_sum, pseudo_header
from lab.errors import LabError
from lab.kernel import KernelHandle
from lab.kinds import XdpPort, xdp_ports

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

    def detach(self) -> None:
        for att, ns, _pid in self.attached:
            with contextlib.suppress(LabError):
                self.kernel.detach_xdp(ns, att.ifname)
        self.attached.clear()


def peer_of(topo: Topology, node: str, ifname: str) -> tuple[str, str]:
    for ep, other in topo.links_of(node):
        if ep.ifname == ifname:
            return other.node, other.ifname
    raise LabError(f"{node}:{ifname} is on no link")


def apply_data_plane(topo: Topology, namespaces: dict[str, str], kernel: KernelHandle) -> DataPlane:
    """Attach every ``params.xdp`` program of TOPO to its interface (node ->
    namespace as the engine made them) and fill the gwping forwarding tables:
    port IF forwarding to EGRESS sends frames from EGRESS's MAC to the MAC of
    EGRESS's link peer.  Peers of redirect targets need an XDP program (a veth
    accepts redirected frames only then): declare xdp_pass on them.  Both
    ends of every link with an XDP port get TX checksum offload turned off
    (see KernelHandle.tx_checksum_off: a redirected CHECKSUM_PARTIAL skb would
    leave with a partial checksum).  Everything happens in KERNEL, the lab's
    (host or guest).  Returns what was attached; ``DataPlane.detach`` removes it."""
    from lab import bpf

    k = kernel
    dp = DataPlane(k)
    atts = xdp_attachments(topo)
    ends = {(a.node, a.ifname) for a in atts} | {peer_of(topo, a.node, a.ifname) for a in atts}
    for node, ifname in sorted(ends):
        k.tx_checksum_off(namespaces[node], ifname)
    try:
        for att in atts:
            ns = namespaces[att.node]
            obj = bpf.obj_path(att.prog)
            pid = k.attach_xdp(ns, att.ifname, obj, sec=att.sec, mode=att.mode)
            dp.attached.append((att, ns, pid))
            if att.forward is None:
                continue
            pnode, pif = peer_of(topo, att.node, att.forward)
            port = GwPort(
                egress_ifindex=k.ifindex(ns, att.forward),
                smac=k.mac(ns, att.forward),
                dmac=k.mac(namespaces[pnode], pif),
            )
            mid = k.map_id(pid, PORTS_MAP)
            k.map_update(mid, GwPort.key(k.ifindex(ns, att.ifname)), port.pack())
    except BaseException:
        dp.detach()
        raise
    return dp


# -- probe packets ----------------------------------------------------------------------


def probe_segment(
    sport: int,
    dport: int,
    seq: int,
    tsval: int = MAGIC,
    options: Sequence[tuple[str, Any]] | None = None,
) -> Any:
    """The seed's ping: a TCP SYN whose Timestamps option (first, as the
    seed's gopacket sender writes it) carries TSval (big-endian on the wire)
    and TSecr 0.  Returns a scapy TCP layer."""
    from scapy.layers.inet import TCP

    opts = list(options) if options is not None else [("Timestamp", (tsval, 0))]
    return TCP(sport=sport, dport=dport, seq=seq, flags="S", window=64240, options=opts)


def probe_packet(src: str, dst: str, sport: int, dport: int, seq: int, tsval: int = MAGIC) -> Any:
    """IPv4 or IPv6 (by address family) + probe_segment, as a scapy packet."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    ip = IPv6(src=src, dst=dst) if ipaddress.ip_address(dst).version == 6 else IP(src=src, dst=dst)
    return ip / probe_segment(sport, dport, seq, tsval)


# -- the prober -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeReply:
    seq: int  # probe number, from 0
    sport: int
    kind: str  # "SYN-ACK" | "RST" | "" (no answer)
    rtt_ms: float | None
    tsecr: int | None = None  # the TSecr of a SYN-ACK: the TSval its kernel saw


@dataclass
class ProbeStats:
    target: str
    port: int
    replies: list[ProbeReply] = field(default_factory=list)
    elapsed_ms: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.replies)

    @property
    def received(self) -> int:
        return sum(1 for r in self.replies if r.rtt_ms is not None)

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    def summary(self) -> str:
        lines = [
            f"--- {self.target} gwping statistics ---",
            f"{self.sent} probes transmitted, {self.received} received, "
            f"{self.loss_pct:.4g}% packet loss, time {self.elapsed_ms:.0f}ms",
        ]
        rtts = [r.rtt_ms for r in self.replies if r.rtt_ms is not None]
        if rtts:
            mdev = statistics.pstdev(rtts)
            lines.append(
                f"rtt min/avg/max/mdev = {min(rtts):.3f}/{statistics.fmean(rtts):.3f}/"
                f"{max(rtts):.3f}/{mdev:.3f} ms"
            )
        return "\n".join(lines)


def _source_for(dst: str, dport: int) -> str:
    """The source address the kernel picks towards dst (no packet is sent)."""
    fam = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, dport))
        except OSError as e:
            raise LabError(f"no route to {dst}: {e.strerror}") from None
        return str(s.getsockname()[0])


@contextlib.contextmanager
def _in_netns(name: str | None) -> Iterator[None]:
    if not name:
        yield
        return
    from lab import netns

    if not os.path.exists(netns.path(name)):
        raise LabError(f"no network namespace '{name}' (see 'ip netns list')")
    with netns.entered(name):
        yield


class Prober:
    """Raw TCP sockets of the current namespace: send probe SYNs, catch answers."""

    def __init__(self, target: str, port: int) -> None:
        try:
            addr = ipaddress.ip_address(target)
        except ValueError:
            try:
                addr = ipaddress.ip_address(socket.getaddrinfo(target, None)[0][4][0])
            except (OSError, IndexError):
                raise LabError(f"cannot resolve '{target}'") from None
        import scapy.layers.inet  # noqa: F401  (before any probe is timed)

        self.target = str(addr)
        self.port = port
        self.v6 = addr.version == 6
        self.src = _source_for(self.target, port)
        fam = socket.AF_INET6 if self.v6 else socket.AF_INET
        try:
            self.sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_TCP)
        except PermissionError:
            raise LabError("gwping needs CAP_NET_RAW (run it as root)") from None

    def close(self) -> None:
        self.sock.close()

    def send(self, sport: int, seq: int, tsval: int) -> float:
        """Send one probe; returns the send time (perf_counter, seconds)."""
        pkt = probe_packet(self.src, self.target, sport, self.port, seq, tsval)
        seg = bytes(pkt.payload)  # TCP with the checksum over our pseudo header
        t = time.perf_counter()
        self.sock.sendto(seg, (self.target, 0))
        return t

    def _parse(self, data: bytes, addr: Any) -> Any | None:
        from scapy.layers.inet import IP, TCP

        if self.v6:  # IPv6 raw sockets deliver the segment only
            if str(ipaddress.ip_address(addr[0])) != self.target:
                return None
            return TCP(data)
        ip = IP(data)
        if ip.src != self.target or not ip.haslayer(TCP):
            return None
        return ip[TCP]

    def wait(self, sport: int, seq: int, deadline: float) -> tuple[Any, float] | None:
        """The first answer to the probe (sport, seq) before deadline."""
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            data, addr = self.sock.recvfrom(65535)
            t = time.perf_counter()
            tcp = self._parse(data, addr)
            if tcp is None or tcp.sport != self.port or tcp.dport != sport:
                continue
            flags = int(tcp.flags)
            syn_ack = flags & 0x12 == 0x12
            rst = bool(flags & 0x04)
            if (syn_ack or rst) and (flags & 0x10) and tcp.ack == (seq + 1) & 0xFFFFFFFF:
                return tcp, t


def _tsecr(tcp: Any) -> int | None:
    for name, val in tcp.options:
        if name == "Timestamp":
            return int(val[1])
    return None


def run_probes(
    target: str,
    count: int,
    interval: float,
    *,
    port: int = 80,
    timeout: float = 1.0,
    tsval: int = MAGIC,
    out: TextIO | None = None,
    rng: random.Random | None = None,
) -> ProbeStats:
    """Send COUNT probes INTERVAL seconds apart; print a line per probe to OUT."""
    rng = rng or random.Random()
    pr = Prober(target, port)
    stats = ProbeStats(pr.target, port)
    say: Callable[[str], None] = (lambda s: print(s, file=out, flush=True)) if out else (lambda s: None)
    say(f"GWPING {pr.target} port {port} from {pr.src}: TCP SYN, TSval {tsval:#010x}")
    base_sport = rng.randrange(20000, 60000 - count) if count < 40000 else 20000
    start = time.perf_counter()
    try:
        for i in range(count):
            sport = base_sport + i  # a source port per probe
            seq = rng.getrandbits(32)
            t0 = pr.send(sport, seq, tsval)
            got = pr.wait(sport, seq, t0 + timeout)
            if got is None:
                rep = ProbeReply(i, sport, "", None)
                say(f"no answer from {pr.target}:{port}: probe={i} sport={sport}")
            else:
                tcp, t1 = got
                kind = "RST" if int(tcp.flags) & 0x04 else "SYN-ACK"
                rep = ProbeReply(i, sport, kind, (t1 - t0) * 1000.0, _tsecr(tcp))
                extra = f" tsecr={rep.tsecr:#010x}" if rep.tsecr is not None else ""
                say(
                    f"{kind} from {pr.target}:{port}: probe={i} sport={sport} "
                    f"time={rep.rtt_ms:.3f} ms{extra}"
                )
            stats.replies.append(rep)
            if i + 1 < count:
                time.sleep(max(0.0, t0 + interval - time.perf_counter()))
    finally:
        stats.elapsed_ms = (time.perf_counter() - start) * 1000.0
        pr.close()
    say("")
    say(stats.summary())
    return stats


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {s}")
    return v


def _tsval(s: str) -> int:
    v = int(s, 0)
    if not 0 <= v <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"TSval {s} is not a 32-bit value")
    return v


def cmd_gwping(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise LabError(f"gwping: -c wants at least 1 probe, not {args.count}")
    if not 1 <= args.port <= 65535:
        raise LabError(f"gwping: port {args.port} out of range 1-65535")
    tsval = MAGIC_PASS if args.pass_ else args.tsval
    with _in_netns(args.netns):
        stats = run_probes(
            args.target,
            args.count,
            args.interval,
            port=args.port,
            timeout=args.timeout,
            tsval=tsval,
            out=sys.stdout,
        )
    return 0 if stats.received == stats.sent else 1


def register(subparsers: Any) -> None:
    """Add ``toalab gwping`` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "gwping",
        help="ping a gateway data plane with TCP SYNs carrying the TSval magic",
        description=(
            "Send TCP SYN probes whose Timestamps option carries TSval 0xdeadbeef (the "
            "gateway-ping magic) to TARGET and report each answer (SYN-ACK or RST) with "
            "its round-trip time, then a ping(8)-style summary.  A gateway data plane "
            "on the way decrements the magic to 0xddadbeef and forwards the probe; the "
            "node that sees 0xddadbeef hands it to its kernel, which answers.  Exit "
            "status 1 if any probe went unanswered.  Run it on a lab node: "
            "'toalab exec prober -- toalab gwping TARGET' or '--netns NAME'."
        ),
    )
    p.add_argument("target", metavar="TARGET", help="IPv4 or IPv6 address to probe")
    p.add_argument("-c", "--count", type=int, default=4, help="probes to send (default 4)")
    p.add_argument(
        "-i", "--interval", type=_positive_float, default=1.0, help="seconds between probes (1)"
    )
    p.add_argument(
        "-W", "--timeout", type=_positive_float, default=1.0, help="seconds to wait per probe (1)"
    )
    p.add_argument("-p", "--port", type=int, default=80, help="destination TCP port (80)")
    p.add_argument("--netns", metavar="NAME", help="send from this network namespace")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tsval", type=_tsval, default=MAGIC, help="TSval to send (0xdeadbeef)")
    g.add_argument(
        "--pass", dest="pass_", action="store_true",
        help="send MAGIC_PASS (0xddadbeef): ping a node's kernel through its own data plane",
    )
    p.set_defaults(func=cmd_gwping)
