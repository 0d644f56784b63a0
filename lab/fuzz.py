"""A differential fuzzer for the XDP programs: generated and mutated frames
through the real objects under BPF_PROG_TEST_RUN, each verdict and each output
byte compared with a reference model written here from the programs' rules
(not from their code): bpf/gwping.c against `GwModel`, bpf/lb.c against
`LbModel`; and IPv4 datagrams through a raw socket into uoa.ko in a guest,
its counters against `UoaModel` (tests/test_kmod_vm.py drives that one).

Frames start from a pool of valid ones (TCP with the Timestamps option in
various places and with the ping's magic, UDP, ICMP, ARP, VLAN tags, IPv4
options and option 31, IPv6 extension headers and several Destination
Options headers, fragments, TTLs near 0; for the LB, whole flows both ways)
and are mutated: truncated, bytes flipped, length fields (IHL, total length,
payload length, data offset, option lengths, the option's family bit) set
wrong.  A disagreement is reported with the frame, both verdicts and both
outputs; `python -m lab.fuzz --frames N --seed S` runs it (`make fuzz`), and
`tests/test_fuzz.py` runs a short fixed-seed budget in `make test`.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import random
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab import bpf, gwping, lb, wire
from lab.checksum import ones_sum

BATCH = 4000  # frames per load of the object (xdp_test_run takes 4096)
ETH_IP, ETH_IP6, ETH_ARP, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8
EXT = {0, 43, 60, 44, 51}  # hop-by-hop, routing, destination options, fragment, AH


@dataclass(frozen=True)
class Verdict:
    action: str
    data: bytes


@dataclass
class Report:
    frames: int = 0
    disagreements: list[tuple[bytes, Verdict, Verdict]] = field(default_factory=list)
    crashes: int = 0  # runs the tool could not complete
    skipped: int = 0  # batches cut short where the model stops following (see LbModel.run)
    seconds: float = 0.0

    def line(self, name: str) -> str:
        return (f"{name}: {self.frames} frames, {len(self.disagreements)} disagreements, "
                f"{self.crashes} crashes, {self.seconds:.1f} s")  # fmt: skip


# -- what both programs read of a frame ---------------------------------------------------------


@dataclass
class Ip:
    """An IP header as the programs' parsers see it, or why it is not one."""

    family: int
    l3: int  # offset of the IP header in the frame
    l4: int  # offset of what follows the header chain
    proto: int  # first header that is not an extension
    frag: bool  # any fragment (IPv4 MF/offset, IPv6 Fragment header)
    frag_offset: int  # non-zero: no L4 header here
    total: int  # IPv4 total length / IPv6 40 + payload length
    opt31: bool  # option 31 among the IPv4 options / first in some Destination Options header


def eth_walk(f: bytes, vlans: int = 2) -> tuple[int, int] | None:
    """(ethertype, offset of what follows) after up to `vlans` tags, None if cut off."""
    if len(f) < 14:
        return None
    et, off = int.from_bytes(f[12:14], "big"), 14
    for _ in range(vlans):
        if et not in (ETH_VLAN, ETH_QINQ):
            break
        if len(f) < off + 4:
            return None
        et, off = int.from_bytes(f[off + 2 : off + 4], "big"), off + 4
    return et, off


def ipv4_opt31(f: bytes, start: int, olen: int) -> bool:
    """The LB's bounded walk of the options at `start`: type 31 at an option boundary
    before EOL or a bad length (the walk reads two bytes, as far as the frame goes)."""
    off = 0
    opts = f[start:]
    for _ in range(40):
        if off >= olen or off + 2 > len(opts):
            return False
        t = opts[off]
        if t == 31:
            return True
        if t == 0:
            return False
        if t == 1:
            off += 1
            continue
        if opts[off + 1] < 2:
            return False
        off += opts[off + 1]
    return False


def parse_ip(f: bytes, et: int, l3: int) -> Ip | str:
    """The IP header at l3, or 'trunc' / 'invalid'."""
    if et == ETH_IP:
        if len(f) < l3 + 20:
            return "trunc"
        v, ihl = f[l3] >> 4, (f[l3] & 0xF) * 4
        if v != 4 or ihl < 20:
            return "invalid"
        if len(f) < l3 + ihl:
            return "trunc"
        fo = int.from_bytes(f[l3 + 6 : l3 + 8], "big")
        return Ip(4, l3, l3 + ihl, f[l3 + 9], bool(fo & 0x3FFF), fo & 0x1FFF,
                  int.from_bytes(f[l3 + 2 : l3 + 4], "big"),
                  ihl > 20 and ipv4_opt31(f, l3 + 20, ihl - 20))  # fmt: skip
    if len(f) < l3 + 40:
        return "trunc"
    if f[l3] >> 4 != 6:
        return "invalid"
    nh, pos, frag, fo, o31 = f[l3 + 6], l3 + 40, False, 0, False
    for _ in range(6):
        if nh not in EXT:
            break
        if len(f) < pos + 8:
            return "trunc"
        if nh == 44:
            frag, fo, nh, pos = True, int.from_bytes(f[pos + 2 : pos + 4], "big") >> 3, f[pos], pos + 8
            if fo:
                break
            continue
        if nh == 60 and f[pos + 2] == 31:
            o31 = True
        n = (f[pos + 1] + 2) * 4 if nh == 51 else (f[pos + 1] + 1) * 8
        nh = f[pos]
        if len(f) < pos + n:
            return "trunc"
        pos += n
    if nh in EXT and not fo:
        return "invalid"
    return Ip(6, l3, pos, nh, frag, fo, 40 + int.from_bytes(f[l3 + 4 : l3 + 6], "big"), o31)


def find_tcp_option(f: bytes, th: int, kind: int, length: int) -> int | None:
    """tcp_find_option(): the offset of the first option `kind` if it has `length`."""
    doff = (f[th + 12] >> 4) * 4
    optlen, opts, off = doff - 20, th + 20, 0
    if optlen < 0 or opts + optlen > len(f):
        return None
    for _ in range(40):
        if off >= optlen or opts + off + 1 > len(f):
            return None
        k = f[opts + off]
        if k == 0:
            return None
        if k == 1:
            off += 1
            continue
        if off + 2 > optlen or opts + off + 2 > len(f):
            return None
        n = f[opts + off + 1]
        if n < 2 or off + n > optlen:
            return None
        if k == kind:
            return opts + off if n == length and opts + off + length <= len(f) else None
        off += n
    return None


def ipv4_hop(out: bytearray, l3: int) -> None:
    """TTL one less, the header checksum as ip_decrease_ttl() moves it."""
    out[l3 + 8] -= 1
    c = int.from_bytes(out[l3 + 10 : l3 + 12], "big")
    out[l3 + 10 : l3 + 12] = gwping.seed_csum_fix(c, 0x0100).to_bytes(2, "big")


# -- bpf/gwping.c -------------------------------------------------------------------------------


@dataclass
class GwModel:
    """The gateway data plane with one configured port (ingress 1, egress elsewhere)."""

    smac: bytes = bytes.fromhex("02aa00000001")
    dmac: bytes = bytes.fromhex("02bb00000002")
    egress: int = 7

    def updates(self) -> list[bpf.MapUpdate]:
        return [
            bpf.MapUpdate(
                gwping.PORTS_MAP,
                gwping.GwPort.key(1),
                gwping.GwPort(self.egress, self.smac, self.dmac).pack(),
            )
        ]

    def run(self, f: bytes) -> Verdict:
        walked = eth_walk(f)
        if walked is None:
            return Verdict("XDP_DROP", f)
        et, l3 = walked
        if et not in (ETH_IP, ETH_IP6):
            return Verdict("XDP_PASS", f)
        ip = parse_ip(f, et, l3)
        if isinstance(ip, str):
            return Verdict("XDP_DROP", f)
        out = bytearray(f)
        l4 = -1 if ip.frag else ip.proto
        if l4 == 58 and len(f) >= ip.l4 + 1 and 133 <= f[ip.l4] <= 137:
            return Verdict("XDP_PASS", f)
        if l4 == 6:
            ping = self._ping(out, ip.l4)
            if ping == "pass":
                return Verdict("XDP_PASS", bytes(out))
        # forward: one hop, the port's MACs
        if et == ETH_IP:
            if out[l3 + 8] <= 1:
                return Verdict("XDP_DROP", bytes(out))
            ipv4_hop(out, l3)
        else:
            if out[l3 + 7] <= 1:
                return Verdict("XDP_DROP", bytes(out))
            out[l3 + 7] -= 1
        out[0:12] = self.dmac + self.smac
        return Verdict("XDP_REDIRECT", bytes(out))

    @staticmethod
    def _ping(out: bytearray, th: int) -> str:
        if (
            th > 1024
            or len(out) < th + 20
            or out[th + 12] >> 4 < 5
            or th + (out[th + 12] >> 4) * 4 > len(out)
        ):
            return "none"
        flags = out[th + 13]
        if not flags & 0x02 or flags & (0x10 | 0x04 | 0x01):
            return "none"
        ts = find_tcp_option(bytes(out), th, 8, 10)
        if ts is None:
            return "none"
        tsval = int.from_bytes(out[ts + 2 : ts + 6], "big")
        if tsval == gwping.MAGIC_PASS:
            return "pass"
        if tsval != gwping.MAGIC:
            return "none"
        delta = 0x0001 if (ts + 2 - th) % 2 else 0x0100
        c = int.from_bytes(out[th + 16 : th + 18], "big")
        out[th + 16 : th + 18] = gwping.seed_csum_fix(c, delta).to_bytes(2, "big")
        out[ts + 2] -= 1
        return "fwd"


# -- bpf/lb.c -------------------------------------------------------------------------------------

LB_ADDR = {
    4: {"cip": "198.51.100.10", "vip": "203.0.113.10", "lip": "192.0.2.2", "rip": "192.0.2.11"},
    6: {"cip": "2001:db8:c::10", "vip": "2001:db8:f::10", "lip": "2001:db8:5::2", "rip": "2001:db8:5::11"},
}
VPORT, RPORT, LPORT, CPORT = 80, 8080, 40000, 33333
CLIENT_MAC, LB0_MAC = bytes.fromhex("020000000c01"), bytes.fromhex("020000001b00")
LB1_MAC, RS_MAC = bytes.fromhex("020000001b01"), bytes.fromhex("020000000511")
CLIENT_PORT, RS_PORT, RS_EGRESS = 1, 2, 7
OPT_PKTS = 3

FlowKey = tuple[bytes, bytes, int, int, int, int]  # src, dst, sport, dport, proto, family


@dataclass
class Pkt:
    """What lb.c's parser learns (struct pkt)."""

    family: int
    src: bytes
    dst: bytes
    proto: int
    tos: int
    ttl: int
    flow: int
    l4off: int
    l4len: int
    opt31: bool
    sport: int = 0
    dport: int = 0
    flags: int = 0

    def key(self) -> FlowKey:
        return (self.src, self.dst, self.sport, self.dport, self.proto, self.family)


def lb_parse(f: bytes) -> Pkt | str:
    """parse_pkt(): a Pkt, or 'pass' (not plain IP), 'malformed', ('frag', Pkt), ('other', Pkt)."""
    walked = eth_walk(f)
    if walked is None or walked[0] not in (ETH_IP, ETH_IP6) or walked[1] != 14:
        return "pass"
    ip = parse_ip(f, walked[0], 14)
    if isinstance(ip, str):
        return "malformed"
    l3len = ip.l4 - 14
    if ip.total < l3len or 14 + ip.total > len(f):
        return "malformed"
    if ip.family == 4:
        src, dst, tos, ttl, flow = f[26:30], f[30:34], f[15], f[22], 0
    else:
        src, dst, ttl = f[22:38], f[38:54], f[21]
        tos = (f[14] & 0x0F) << 4 | f[15] >> 4
        flow = (f[15] & 0x0F) << 16 | f[16] << 8 | f[17]
    p = Pkt(
        ip.family,
        src,
        dst,
        ip.proto,
        tos,
        ttl,
        flow,
        ip.l4,
        ip.total - l3len,
        l3len > (20 if ip.family == 4 else 40) and ip.opt31,
    )
    if ip.frag:
        return ("frag", p)  # type: ignore[return-value]
    if l3len > 256:
        return "malformed"
    t = ip.l4
    if p.proto == 6:
        if (
            len(f) < t + 20
            or f[t + 12] >> 4 < 5
            or t + (f[t + 12] >> 4) * 4 > len(f)
            or p.l4len < (f[t + 12] >> 4) * 4
        ):
            return "malformed"
        p.flags = f[t + 13]
    elif p.proto == 17:
        if len(f) < t + 8 or p.l4len < 8:
            return "malformed"
    else:
        return ("other", p)  # type: ignore[return-value]
    p.sport, p.dport = struct.unpack("!HH", f[t : t + 4])
    return p


def _a(fam: int, name: str) -> bytes:
    return ipaddress.ip_address(LB_ADDR[fam][name]).packed


def fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def l4_update(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3 over the words that changed (addresses and ports)."""
    acc = (~check & 0xFFFF) + sum(~w & 0xFFFF for w in _words(old)) + sum(_words(new))
    return ~fold(acc) & 0xFFFF


def _words(b: bytes) -> list[int]:
    return [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]


@dataclass
class LbModel:
    """The fullnat LB with a TCP and a UDP service on the VIP (family cfam), one real
    server and one local address (family rfam), one local port: every new flow but
    the first of each protocol finds no port, so that every choice is predictable."""

    cfam: int
    rfam: int
    fwd: dict[FlowKey, dict] = field(default_factory=dict)
    rev: dict[FlowKey, dict] = field(default_factory=dict)

    def updates(self) -> list[bpf.MapUpdate]:
        rs = lb.Rs(LB_ADDR[self.rfam]["rip"], RPORT, RS_EGRESS, LB1_MAC.hex(":"), RS_MAC.hex(":"))
        vip, lip = LB_ADDR[self.cfam]["vip"], LB_ADDR[self.rfam]["lip"]
        svcs = [(lb.Svc(vip, VPORT, proto, id=0, n_rs=1, n_local=1, rs_family=self.rfam, opt_pkts=OPT_PKTS),
                 [rs], [lip]) for proto in (6, 17)]  # fmt: skip
        cfg = lb.Cfg(tcp_idle_s=1e9, udp_idle_s=1e9, lport_min=LPORT, lport_max=LPORT, hash_key=0x5EED)
        return lb.tables(svcs, cfg, {CLIENT_PORT: lb.PORT_CLIENT, RS_PORT: lb.PORT_RS})

    def reset(self) -> None:
        self.fwd.clear()
        self.rev.clear()

    def run(self, f: bytes, port: int) -> Verdict | None:
        """The verdict and output, None where the model does not follow (an ICMP
        error about one of its flows: tests/test_lb_icmp_bpf.py has those)."""
        p = lb_parse(f)
        if p == "malformed":
            return Verdict("XDP_DROP", f)
        if p == "pass":
            return Verdict("XDP_PASS", f)
        role = {CLIENT_PORT: lb.PORT_CLIENT, RS_PORT: lb.PORT_RS}.get(port, 0)
        if isinstance(p, Pkt):
            vip = _a(self.cfam, "vip")
            if p.family == self.cfam and p.dst == vip and p.dport == VPORT and p.proto in (6, 17):
                if role != lb.PORT_CLIENT or p.ttl <= 1:
                    return Verdict("XDP_DROP", f)
                return self._forward(f, p)
            rv = self.rev.get(p.key())
            if rv is not None:
                if role != lb.PORT_RS or p.ttl <= 1:
                    return Verdict("XDP_DROP", f)
                return self._reverse(f, p, rv)
        else:
            kind, p = p  # type: ignore[misc]
            if (
                kind == "other"
                and p.proto == (1 if p.family == 4 else 58)
                and self._icmp_about_ours(f, p, role)
            ):
                return None
            if kind == "frag" and p.family == self.cfam and p.dst == _a(self.cfam, "vip"):
                return Verdict("XDP_DROP", f)
        if p.opt31 and role != lb.PORT_RS:
            return Verdict("XDP_DROP", f)
        return Verdict("XDP_PASS", f)

    def _icmp_about_ours(self, f: bytes, p: Pkt, role: int) -> bool:
        t = p.l4off
        if len(f) < t + 8:
            return False
        err = {4: (3, 11, 12), 6: (1, 2, 3, 4)}[p.family]
        if f[t] not in err:
            return False
        q = parse_ip(f, ETH_IP if p.family == 4 else ETH_IP6, t + 8)
        if isinstance(q, str) or q.frag or q.proto not in (6, 17) or q.l4 + 8 > len(f):
            return False
        src, dst = (f[q.l3 + 12 : q.l3 + 16], f[q.l3 + 16 : q.l3 + 20]) if q.family == 4 else (
            f[q.l3 + 8 : q.l3 + 24], f[q.l3 + 24 : q.l3 + 40])  # fmt: skip
        sport, dport = struct.unpack("!HH", f[q.l4 : q.l4 + 4])
        key = (dst, src, dport, sport, q.proto, q.family)
        table = self.rev if role == lb.PORT_RS else self.fwd if role == lb.PORT_CLIENT else {}
        return key in table

    def _forward(self, f: bytes, p: Pkt) -> Verdict:
        k = p.key()
        fl = self.fwd.get(k)
        lip, rip = _a(self.rfam, "lip"), _a(self.rfam, "rip")
        if fl is None:
            rk = (rip, lip, RPORT, LPORT, p.proto, self.rfam)
            if rk in self.rev:
                return Verdict("XDP_DROP", f)  # no free local port
            fl = {"state": 0, "pkts": 0}
            self.fwd[k] = fl
            self.rev[rk] = {"cip": p.src, "vip": p.dst, "cport": p.sport, "vport": p.dport,
                            "cmac": f[6:12], "lmac": f[0:6], "state": 0, "fwd": k}  # fmt: skip
        if p.proto == 6:
            if p.flags & 0x12 == 0x02:
                fl["state"] = 0
            insert = not fl["state"]
        else:
            insert = fl["pkts"] < OPT_PKTS
        fl["pkts"] += 1
        opt = b""
        if insert:
            o = wire.AddrOption(ipaddress.ip_address(p.src), p.sport, ipaddress.ip_address(p.dst), p.dport)
            opt = o.pack_ipv4() if self.rfam == 4 else o.pack_ipv6(p.proto)
        return self._emit(f, p, self.rfam, lip, rip, LPORT, RPORT, LB1_MAC, RS_MAC, opt)

    def _reverse(self, f: bytes, p: Pkt, rv: dict) -> Verdict:
        if p.proto == 6 and not p.flags & 0x02 and not rv["state"]:
            fl = self.fwd.get(rv["fwd"])
            if fl is not None:
                fl["state"] = 1
            rv["state"] = 1
        return self._emit(
            f, p, self.cfam, rv["vip"], rv["cip"], rv["vport"], rv["cport"], rv["lmac"], rv["cmac"], b""
        )

    @staticmethod
    def _emit(f: bytes, p: Pkt, fam: int, src: bytes, dst: bytes, sport: int, dport: int,
              smac: bytes, dmac: bytes, opt: bytes) -> Verdict:  # fmt: skip
        t = p.l4off
        l4 = bytearray(f[t:])
        coff = 16 if p.proto == 6 else 6
        check = int.from_bytes(l4[coff : coff + 2], "big")
        if p.proto != 17 or check:
            new = l4_update(check, p.src + p.dst + l4[0:4], src + dst + struct.pack("!HH", sport, dport))
            if p.proto == 17 and new == 0:
                new = 0xFFFF
            l4[coff : coff + 2] = new.to_bytes(2, "big")
        elif fam == 6:
            return Verdict("XDP_DROP", f)
        l4[0:4] = struct.pack("!HH", sport, dport)
        ttl = p.ttl - 1
        if fam == 4:
            h = 20 + len(opt)
            ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | h // 4, p.tos, h + p.l4len, 0, 0x4000, ttl,
                                       p.proto, 0, src, dst) + opt)  # fmt: skip
            ip[10:12] = (0xFFFF - ones_sum(bytes(ip))).to_bytes(2, "big")
            et = ETH_IP
        else:
            ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28 | p.tos << 20 | p.flow, len(opt) + p.l4len,
                                       60 if opt else p.proto, ttl, src, dst) + opt)  # fmt: skip
            et = ETH_IP6
        return Verdict("XDP_REDIRECT", dmac + smac + et.to_bytes(2, "big") + bytes(ip) + bytes(l4))


def lb_pool(cfam: int, rfam: int) -> list[tuple[bytes, int]]:
    """Frames of whole flows both ways and what else reaches an LB's two ports."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrRouting, PadN
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import Raw

    from lab import scapy_toa

    a_c, a_r = LB_ADDR[cfam], LB_ADDR[rfam]
    ce = Ether(src=CLIENT_MAC.hex(":"), dst=LB0_MAC.hex(":"))
    re_ = Ether(src=RS_MAC.hex(":"), dst=LB1_MAC.hex(":"))

    def l3(fam: int, src: str, dst: str, ttl: int = 61) -> object:
        return (
            IP(src=src, dst=dst, ttl=ttl, tos=0x28)
            if fam == 4
            else IPv6(src=src, dst=dst, hlim=ttl, tc=0x28, fl=0x12345)
        )

    cl = l3(cfam, a_c["cip"], a_c["vip"])
    rs = l3(rfam, a_r["rip"], a_r["lip"])
    forged = wire.AddrOption(ipaddress.ip_address(a_c["cip"]), 1, ipaddress.ip_address(a_c["vip"]), 2)
    out: list[tuple[bytes, int]] = []
    for flags in ("S", "A", "PA", "FA", "R", "SA"):
        out.append(
            (
                bytes(
                    ce
                    / cl
                    / TCP(sport=CPORT, dport=VPORT, flags=flags, options=[("MSS", 1460)])
                    / Raw(b"x" * 3)
                ),
                CLIENT_PORT,
            )
        )
        out.append((bytes(re_ / rs / TCP(sport=RPORT, dport=LPORT, flags=flags) / Raw(b"y")), RS_PORT))
    for payload in (b"", b"q", b"q" * 100):
        out.append((bytes(ce / cl / UDP(sport=CPORT, dport=VPORT) / Raw(payload)), CLIENT_PORT))
        out.append((bytes(re_ / rs / UDP(sport=RPORT, dport=LPORT) / Raw(payload)), RS_PORT))
    u0 = bytearray(bytes(ce / cl / UDP(sport=CPORT, dport=VPORT) / Raw(b"nocsum")))
    if cfam == 4:
        u0[14 + 20 + 6 : 14 + 20 + 8] = b"\0\0"  # IPv4 UDP without checksum
    out.append((bytes(u0), CLIENT_PORT))
    out.append(
        (
            bytes(ce / l3(cfam, a_c["cip"], a_c["vip"], 1) / TCP(sport=CPORT, dport=VPORT, flags="S")),
            CLIENT_PORT,
        )
    )
    out.append(
        (bytes(re_ / l3(rfam, a_r["rip"], a_r["lip"], 1) / TCP(sport=RPORT, dport=LPORT, flags="A")), RS_PORT)
    )
    out.append((bytes(ce / cl / TCP(sport=CPORT, dport=22, flags="S")), CLIENT_PORT))
    out.append((bytes(re_ / cl / UDP(sport=CPORT, dport=VPORT)), RS_PORT))  # service packet on the RS side
    out.append(
        (bytes(ce / rs / UDP(sport=RPORT, dport=LPORT)), CLIENT_PORT)
    )  # a reply spoofed from the client side
    if cfam == 4:
        opts = [IPOption(b"\x01"), IPOption(forged.pack_ipv4())]
        forged_ip = IP(src=a_c["cip"], dst=a_c["vip"], options=opts)
        out.append((bytes(ce / forged_ip / UDP(sport=CPORT, dport=VPORT)), CLIENT_PORT))
        out.append(
            (
                bytes(
                    ce
                    / IP(src=a_c["cip"], dst="198.51.100.1", options=[IPOption(forged.pack_ipv4())])
                    / UDP()
                ),
                CLIENT_PORT,
            )
        )
        out.append(
            (
                bytes(ce / IP(src=a_c["cip"], dst=a_c["vip"], flags="MF") / UDP(sport=CPORT, dport=VPORT)),
                CLIENT_PORT,
            )
        )
        out.append(
            (
                bytes(
                    ce
                    / IP(src=a_c["cip"], dst=a_c["vip"])
                    / ICMP(type=3, code=3)
                    / IP(src=a_c["vip"], dst=a_c["cip"])
                    / UDP(sport=VPORT, dport=CPORT)
                ),
                CLIENT_PORT,
            )
        )
    else:
        d = scapy_toa.ipv6_dstopt(forged, 17)
        pad = IPv6ExtHdrDestOpt(nh=60, options=[PadN(optdata=b"\0" * 4)])
        out.append(
            (
                bytes(ce / IPv6(src=a_c["cip"], dst=a_c["vip"]) / d / UDP(sport=CPORT, dport=VPORT)),
                CLIENT_PORT,
            )
        )
        out.append((bytes(ce / IPv6(src=a_c["cip"], dst="2001:db8:c::1") / pad / d / UDP()), CLIENT_PORT))
        out.append(
            (
                bytes(
                    ce
                    / IPv6(src=a_c["cip"], dst=a_c["vip"])
                    / IPv6ExtHdrRouting()
                    / UDP(sport=CPORT, dport=VPORT)
                ),
                CLIENT_PORT,
            )
        )
        out.append(
            (
                bytes(
                    ce
                    / IPv6(src=a_c["cip"], dst=a_c["vip"])
                    / IPv6ExtHdrFragment(m=1)
                    / UDP(sport=CPORT, dport=VPORT)
                ),
                CLIENT_PORT,
            )
        )
    if rfam == 4:
        out.append(
            (
                bytes(
                    re_
                    / IP(src=a_r["rip"], dst=a_r["lip"], options=[IPOption(forged.pack_ipv4())])
                    / TCP(sport=22)
                ),
                RS_PORT,
            )
        )
        out.append(
            (
                bytes(
                    re_
                    / IP(src=a_r["rip"], dst=a_r["lip"])
                    / UDP(sport=51000, dport=4789)
                    / Raw(b"\x08" + bytes(7))
                    / ce
                    / cl
                    / UDP()
                ),
                RS_PORT,
            )
        )
    out.append((bytes(ce / Dot1Q(vlan=3) / cl / UDP(sport=CPORT, dport=VPORT)), CLIENT_PORT))
    out.append((bytes(ce / ARP()), CLIENT_PORT))
    return out


# -- uoa.ko -----------------------------------------------------------------------------------------

UOA_SRC, UOA_DST, UOA_PORT = "192.0.2.1", "192.0.2.11", 9003  # the LB and rs1 of a 4to4 lab
UOA_SPORTS = 400  # flows: few enough that the table never fills


def kernel_accepts(opts: bytes) -> bytes | None:
    """ip_options_compile() on receive, for the option types we generate (EOL, NOP
    and types the kernel does not know): the options as the stack hands them on
    (after an EOL, zeroed), or None when it drops the packet."""
    out, i = bytearray(opts), 0
    while i < len(out):
        if out[i] == 0:
            out[i + 1 :] = bytes(len(out) - i - 1)
            return bytes(out)
        if out[i] == 1:
            i += 1
            continue
        if len(out) - i < 2 or out[i + 1] < 2 or out[i + 1] > len(out) - i:
            return None
        i += out[i + 1]
    return bytes(out)


def uoa_parse(opts: bytes) -> tuple[str, wire.AddrOption | None]:
    """toa_parse_v4(): ('absent', None), ('found', option) or (error kind, None)."""
    i = 0
    while i < len(opts):
        if opts[i] == 0:
            break
        if opts[i] == 1:
            i += 1
            continue
        if len(opts) - i < 2:
            break
        if opts[i] == wire.IPV4_OPTION_TYPE:
            try:
                return "found", wire.unpack_ipv4(opts[i:])
            except wire.WireError as e:
                return e.kind, None
        if opts[i + 1] < 2 or opts[i + 1] > len(opts) - i:
            break
        i += opts[i + 1]
    return "absent", None


@dataclass
class UoaModel:
    """What uoa.ko counts for each IPv4 datagram from a trusted source (uoa_in4,
    uoa_learn, uoa_store, uoa_keepalive), with the table it keeps."""

    table: dict[int, wire.AddrOption] = field(default_factory=dict)
    counts: collections.Counter = field(default_factory=collections.Counter)

    def datagram(self, pkt: bytes) -> None:
        ihl = (pkt[0] & 0xF) * 4
        opts = kernel_accepts(pkt[20:ihl])
        if opts is None:
            return  # the stack dropped it: uoa never sees it
        sport = int.from_bytes(pkt[ihl : ihl + 2], "big")
        rc, opt = uoa_parse(opts) if ihl > 20 else ("absent", None)
        if rc == "found":
            if not udp_ok(pkt, ihl):
                self.counts["bad_csum"] += 1
                return
            assert opt is not None
            self.counts[f"parsed_v4_in{opt.inner}"] += 1
            old = self.table.get(sport)
            self.counts["inserted" if old is None else "refreshed" if old == opt else "updated"] += 1
            self.table[sport] = opt
            return
        self.counts["missing" if rc == "absent" else f"malformed_{rc}"] += 1
        if sport in self.table:
            self.counts["kept_alive"] += 1


def udp_ok(pkt: bytes, ihl: int) -> bool:
    """uoa_csum_ok(): a checksum (IPv4 0 is none) that verifies over pseudo-header and datagram."""
    u = pkt[ihl:]
    ulen = int.from_bytes(u[4:6], "big")
    if u[6:8] == b"\0\0" or ulen < 8 or ulen > len(u):
        return False
    return ones_sum(pkt[12:20] + bytes([0, 17]) + ulen.to_bytes(2, "big") + u[:ulen]) == 0xFFFF


def uoa_datagram(sport: int, opts: bytes, payload: bytes = b"fuzz", bad_csum: bool = False) -> bytes:
    """IPv4 + options (padded with EOL to a multiple of 4) + UDP to rs1, checksum right
    unless asked; the sending kernel fills in the IP checksum and ID."""
    opts += bytes(-len(opts) % 4)
    ihl = 20 + len(opts)
    src, dst = ipaddress.ip_address(UOA_SRC).packed, ipaddress.ip_address(UOA_DST).packed
    udp = struct.pack("!HHHH", sport, UOA_PORT, 8 + len(payload), 0) + payload
    c = 0xFFFF - ones_sum(src + dst + bytes([0, 17]) + len(udp).to_bytes(2, "big") + udp) or 0xFFFF
    if bad_csum:
        c ^= 0x5A5A
    udp = udp[:6] + c.to_bytes(2, "big") + udp[8:]
    return (
        struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, 0, ihl + len(udp), 0, 0, 64, 17, 0, src, dst)
        + opts
        + udp
    )


_IP4 = [ipaddress.ip_address(f"10.{i}.0.1") for i in range(4)]
_IP6 = [ipaddress.ip_address(f"2001:db8::{i + 1}") for i in range(4)]


def fuzzed_options(rng: random.Random) -> bytes:
    """IPv4 option bytes: none, or the option in either form after NOPs or another
    option, often with a wrong field (length, operation, type), a cut list or a
    second option after it; never an option type the stack validates itself."""
    if rng.random() < 0.1:
        return b""
    pool = _IP6 if rng.random() < 0.4 else _IP4
    o = wire.AddrOption(rng.choice(pool), rng.randrange(1, 4), rng.choice(pool), 80)
    opt = bytearray(o.pack_ipv4())
    if rng.random() < 0.4:  # a wrong field of the option
        i = rng.choice([1, 1, 2, 0, 3, rng.randrange(len(opt))])
        opt[i] = rng.choice([0, 1, 2, 12, 15, 16, 17, 31, 39, 40, 41, 0x80, 0x7F, 0xFF, opt[i] ^ 0x80])
    pre = rng.choice([b"", b"\x01", b"\x01\x01\x01", b"\x1e\x04\x00\x00", b"\x1e\x02"])
    post = rng.choice([b"", b"\x00", b"\x01\x1e\x02", bytes(o.pack_ipv4())[:16]])
    opts = pre + bytes(opt) + post
    if rng.random() < 0.1:
        opts = opts[: rng.randrange(1, len(opts))]
    return opts[:40]


def uoa_frames(rng: random.Random, n: int) -> Iterator[bytes]:
    """Datagrams of a few hundred flows with fuzzed_options(), some with a bad checksum."""
    for _ in range(n):
        sport = 20000 + rng.randrange(UOA_SPORTS)
        opts = fuzzed_options(rng)
        yield uoa_datagram(sport, opts, bad_csum=bool(opts) and rng.random() < 0.05)


# what runs in the LB's namespace of the guest: the datagrams of a file (u16 length, bytes...)
# through a raw socket to rs1 (argv: file, destination)
UOA_SENDER = r"""
import socket, struct, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
i = n = 0
while i < len(data):
    (m,) = struct.unpack_from("!H", data, i)
    s.sendto(data[i + 2 : i + 2 + m], (sys.argv[2], 0))
    i, n = i + 2 + m, n + 1
print(n)
"""


def uoa_batch(path: Path, n: int, seed: int) -> dict[str, int]:
    """n datagrams into `path` for UOA_SENDER; returns the uoa_stats deltas the model
    expects of them (entries included)."""
    model = UoaModel()
    with path.open("wb") as out:
        for f in uoa_frames(random.Random(seed), n):
            model.datagram(f)
            out.write(len(f).to_bytes(2, "big") + f)
    want = dict(model.counts)
    if model.table:
        want["entries"] = len(model.table)
    return want


# toa.ko the same way, over real connections: the LB's side sets fuzzed options on
# its sockets (IP_OPTIONS; the stack refuses what it would not send), rs1 accepts.
TOA_CLIENT = r"""
import json, socket, sys
data, dst, port = open(sys.argv[1], "rb").read(), sys.argv[2], int(sys.argv[3])
i = done = refused = 0
while i < len(data):
    m = data[i]
    opts, i = data[i + 1 : i + 1 + m], i + 1 + m
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if opts:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opts)
    except OSError:
        refused += 1
        s.close()
        continue
    s.connect((dst, port))
    s.close()
    done += 1
print(json.dumps({"connected": done, "refused": refused}))
"""
TOA_SERVER = r"""
import json, socket, sys
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", int(sys.argv[1])))
ls.listen(128)
print(json.dumps({"event": "listening"}), flush=True)
for _ in range(int(sys.argv[2])):
    c, _ = ls.accept()
    c.close()
print(json.dumps({"event": "done"}), flush=True)
"""


def toa_batch(path: Path, n: int, seed: int) -> tuple[int, dict[str, int]]:
    """n option sets into `path` for TOA_CLIENT; returns how many connections the
    stack lets through and the toa_stats deltas the model expects of them: a
    handshake each, the parse's verdict on its third packet, an entry when found,
    freed when the sockets are gone.  (Not the getname counters, which count the
    application's calls and skip the table while it is empty, nor
    syn_recv_not_owned: two vCPUs racing for one request, the loser's count.)"""
    counts: collections.Counter = collections.Counter()
    rng = random.Random(seed)
    connected = 0
    with path.open("wb") as out:
        for _ in range(n):
            opts = fuzzed_options(rng)
            out.write(bytes([len(opts)]) + opts)
            padded = opts + bytes(-len(opts) % 4)
            sent = kernel_accepts(padded) if opts else b""
            if sent is None:
                continue
            connected += 1
            counts["syn_recv_v4"] += 1
            rc, opt = uoa_parse(sent) if sent else ("absent", None)
            if rc == "found":
                assert opt is not None
                counts[f"parsed_v4_in{opt.inner}"] += 1
                counts["inserted"] += 1
                counts["freed"] += 1
            else:
                counts["missing" if rc == "absent" else f"malformed_{rc}"] += 1
    return connected, dict(counts)


# -- frames ---------------------------------------------------------------------------------------


def mutate(rng: random.Random, f: bytes, hot: Sequence[int] = ()) -> bytes:
    """One to three mutations: cut, flip, a length field or an option byte set wrong."""
    b = bytearray(f)
    for _ in range(rng.randint(1, 3)):
        m = rng.random()
        if m < 0.25 and len(b) > 14:
            del b[rng.randrange(14, len(b)) :]
        elif m < 0.55 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif m < 0.85 and hot:
            i = rng.choice(hot)
            if i < len(b):
                b[i] = rng.choice(
                    [0, 1, 2, 4, 5, 6, 8, 15, 16, 31, 39, 40, 0x45, 0x4F, 0x80, 0xFF, b[i] ^ 0x80]
                )
        elif b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def hot_bytes(f: bytes) -> list[int]:
    """Offsets of the fields whose wrong values matter most: IHL/version, lengths,
    TTL, protocol / next header, TCP data offset and flags, option kinds and
    lengths, the TOA option's operation byte."""
    out = list(range(12, 14))
    walked = eth_walk(f)
    if walked is None:
        return out
    et, l3 = walked
    out += [l3, l3 + 2, l3 + 3, l3 + 4, l3 + 5, l3 + 6, l3 + 7, l3 + 8, l3 + 9]
    ip = parse_ip(f, et, l3)
    if isinstance(ip, str):
        return out
    out += list(range(l3 + (20 if ip.family == 4 else 40), ip.l4))[:48]
    out += [ip.l4 + 12, ip.l4 + 13, ip.l4 + 4, ip.l4 + 5, *range(ip.l4 + 20, min(ip.l4 + 40, len(f)))]
    return [i for i in out if i < len(f)]


def gw_pool(rng: random.Random) -> list[bytes]:
    """Valid frames the gateway meets: pings, other SYNs, segments, UDP, ICMP, ND, ARP, VLAN."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
    from scapy.layers.inet6 import (
        ICMPv6ND_NS,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
    )
    from scapy.layers.l2 import ARP, Dot1Q, Ether

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    pool: list[bytes] = []
    before = [[], [("NOP", None)], [("MSS", 1460)], [("MSS", 1460), ("NOP", None), ("WScale", 7)],
              [("SAckOK", b""), ("NOP", None)], [("MSS", 1460), ("SAckOK", b""), ("WScale", 2)]]  # fmt: skip
    for fam in (4, 6):
        for ttl in (0, 1, 2, 64):
            l3 = IP(src="192.0.2.1", dst="198.51.100.7", ttl=ttl) if fam == 4 else IPv6(
                src="2001:db8::1", dst="2001:db8:1::7", hlim=ttl)  # fmt: skip
            for tsval in (gwping.MAGIC, gwping.MAGIC_PASS, 0x12345678):
                for b in before:
                    for flags in ("S", "SA", "A"):
                        seg = TCP(sport=40000, dport=80, flags=flags, options=[*b, ("Timestamp", (tsval, 0))])
                        pool.append(bytes(eth / l3 / seg))
            pool.append(bytes(eth / l3 / UDP(sport=5, dport=53) / b"q"))
            pool.append(bytes(eth / l3 / (ICMP() if fam == 4 else ICMPv6ND_NS(tgt="2001:db8::7"))))
    ts = [("Timestamp", (gwping.MAGIC, 0))]
    pool.append(bytes(eth / IP(options=[IPOption(b"\x01\x01\x00\x00")]) / TCP(flags="S", options=ts)))
    pool.append(bytes(eth / IP(flags="MF") / TCP(flags="S", options=ts)))
    pool.append(bytes(eth / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(flags="S", options=ts)))
    pool.append(bytes(eth / IPv6() / IPv6ExtHdrFragment(offset=0, m=1) / TCP(flags="S", options=ts)))
    pool.append(bytes(eth / IPv6() / IPv6ExtHdrFragment(offset=3) / TCP(flags="S", options=ts)))
    pool.append(bytes(eth / Dot1Q(vlan=5) / IP() / TCP(flags="S", options=ts)))
    pool.append(bytes(eth / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IPv6() / TCP(flags="S", options=ts)))
    pool.append(bytes(eth / Dot1Q() / Dot1Q() / Dot1Q() / IP() / TCP(flags="S", options=ts)))
    pool.append(bytes(eth / ARP()))
    rng.shuffle(pool)
    return pool


def fuzz_lb(n: int, seed: int) -> Report:
    """Each batch one family combination, a fresh load and a fresh model; the frames
    in order, so that state carries from packet to packet in both."""
    rng = random.Random(seed)
    obj = bpf.obj_path(lb.BPF_OBJ)
    rep = Report()
    t0 = time.monotonic()
    pools = {fams: lb_pool(*fams) for fams in ((4, 4), (6, 6), (6, 4), (4, 6))}
    hots = {fams: [hot_bytes(f) for f, _ in pool] for fams, pool in pools.items()}
    while rep.frames < n:
        fams = rng.choice(list(pools))
        pool = pools[fams]
        model = LbModel(*fams)
        batch, ports = [], []
        for _ in range(min(BATCH, n - rep.frames)):
            i = rng.randrange(len(pool))
            f, port = pool[i]
            batch.append(f if rng.random() < 0.4 else mutate(rng, f, hots[fams][i]))
            ports.append(port)
        try:
            got = run_batch(obj, lb.BPF_PROG, batch, model.updates(), ports)
        except bpf.BpfError:
            rep.crashes += 1
            break
        for f, port, g in zip(batch, ports, got, strict=True):
            want = model.run(f, port)
            if want is None:
                rep.skipped += 1
                break  # the model's state no longer follows the program's: next batch
            if want != g:
                rep.disagreements.append((f, want, g))
            rep.frames += 1
    rep.seconds = time.monotonic() - t0
    return rep


def frames(rng: random.Random, pool: list[bytes], n: int) -> Iterator[bytes]:
    """n frames: a quarter as they are, the rest mutated."""
    hots = {f: hot_bytes(f) for f in pool}
    for _ in range(n):
        f = rng.choice(pool)
        yield f if rng.random() < 0.25 else mutate(rng, f, hots[f])


# -- running ----------------------------------------------------------------------------------


def run_batch(obj: Path, prog: str, batch: Sequence[bytes], updates: Sequence[bpf.MapUpdate],
              ingress: Sequence[int] | None = None) -> list[Verdict]:  # fmt: skip
    res = bpf.run_xdp_many(obj, prog, batch, map_updates=updates, ingress=ingress, as_file=True)
    return [Verdict(r.action, r.data_out) for r in res]


def fuzz_gwping(n: int, seed: int) -> Report:
    rng = random.Random(seed)
    model = GwModel()
    obj = bpf.obj_path(gwping.BPF_OBJ)
    rep = Report()
    t0 = time.monotonic()
    gen = frames(rng, gw_pool(rng), n)
    while rep.frames < n:
        batch = [next(gen) for _ in range(min(BATCH, n - rep.frames))]
        try:
            got = run_batch(obj, gwping.BPF_PROG, batch, model.updates())
        except bpf.BpfError:
            rep.crashes += 1
            break
        for f, g in zip(batch, got, strict=True):
            want = model.run(f)
            if want != g:
                rep.disagreements.append((f, want, g))
        rep.frames += len(batch)
    rep.seconds = time.monotonic() - t0
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000, help="per program (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--program", choices=["gwping", "lb", "all"], default="all")
    args = ap.parse_args(argv)
    bad = 0
    for name, fn in PROGRAMS.items():
        if args.program not in (name, "all"):
            continue
        rep = fn(args.frames, args.seed)
        print(rep.line(name), flush=True)
        for f, want, got in rep.disagreements[:5]:
            print(f"  frame {f.hex()}\n    model {want.action} {want.data.hex()}\n    "
                  f"prog  {got.action} {got.data.hex()}")  # fmt: skip
        bad += len(rep.disagreements) + rep.crashes
    return 1 if bad else 0


PROGRAMS: dict[str, Callable[[int, int], Report]] = {"gwping": fuzz_gwping, "lb": fuzz_lb}

if __name__ == "__main__":
    sys.exit(main())
