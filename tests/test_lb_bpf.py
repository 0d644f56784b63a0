"""bpf/lb.c under BPF_PROG_TEST_RUN: fullnat forward with option insertion,
the reverse path, NAT64, option stripping, MSS clamping, malformed input.

Each test loads the real object into the running kernel, configures its maps
as lab/lb.py does (lab.lb.tables), runs scapy-built frames through it -- a
whole exchange in one load, so flow state carries over from packet to
packet -- and checks the frames that come out: MACs, addresses, ports, IP
and L4 checksums by full recomputation, and the option bytes against the
reference codec (lab/wire.py) and the scapy layer (lab/scapy_toa.py).
A one-port local range makes the allocated local port predictable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, PadN
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from lab import bpf, lb, scapy_toa, wire
from lab.checksum import ones_sum, pseudo_header

pytestmark = pytest.mark.bpf

RS_IFINDEX = 7  # where the LB redirects RS-bound frames (the test run resolves no egress)
CLIENT_PORT, RS_PORT = 1, 2  # ingress ports: lo and a device of xdp_test_run --ports
PORTS = {CLIENT_PORT: lb.PORT_CLIENT, RS_PORT: lb.PORT_RS}
CLIENT_MAC, LB0_MAC = "02:00:00:00:0c:01", "02:00:00:00:1b:00"
LB1_MAC, RS_MAC = "02:00:00:00:1b:01", "02:00:00:00:05:11"
ADDR = {
    4: {"cip": "198.51.100.10", "vip": "203.0.113.10", "lip": "192.0.2.2", "rip": "192.0.2.11"},
    6: {"cip": "2001:db8:c::10", "vip": "2001:db8:f::10", "lip": "2001:db8:5::2", "rip": "2001:db8:5::11"},
}
VPORT, RPORT, LPORT, CPORT = 80, 8080, 40000, 33333
FAMILIES = [(4, 4), (6, 6), (6, 4), (4, 6)]  # (client side, RS side)
PROTOS = {"tcp": 6, "udp": 17}


@pytest.fixture(scope="module")
def obj() -> Path:
    return bpf.obj_path(lb.BPF_OBJ)


@dataclass(frozen=True)
class Scenario:
    cfam: int
    rfam: int
    opt_pkts: int = 1
    mss_syn: int = 0
    mss_synack: int = 0
    lport_max: int = LPORT

    @property
    def cip(self) -> str:
        return ADDR[self.cfam]["cip"]

    @property
    def vip(self) -> str:
        return ADDR[self.cfam]["vip"]

    @property
    def lip(self) -> str:
        return ADDR[self.rfam]["lip"]

    @property
    def rip(self) -> str:
        return ADDR[self.rfam]["rip"]

    def updates(self) -> list[bpf.MapUpdate]:
        svcs = []
        rs = lb.Rs(self.rip, RPORT, RS_IFINDEX, LB1_MAC, RS_MAC)
        for proto in PROTOS.values():
            svc = lb.Svc(
                self.vip,
                VPORT,
                proto,
                id=0,
                n_rs=1,
                n_local=1,
                rs_family=self.rfam,
                opt_pkts=self.opt_pkts,
                mss_syn=self.mss_syn,
                mss_synack=self.mss_synack,
            )
            svcs.append((svc, [rs], [self.lip]))
        cfg = lb.Cfg(lport_min=LPORT, lport_max=self.lport_max)
        return lb.tables(svcs, cfg, PORTS)

    def option(self, cport: int = CPORT) -> wire.AddrOption:
        return wire.AddrOption(self.cip, cport, self.vip, VPORT)

    def l3(self, fam: int, src: str, dst: str) -> IP | IPv6:
        return IP(src=src, dst=dst, ttl=61) if fam == 4 else IPv6(src=src, dst=dst, hlim=61)

    def client(self, l4: object, cport: int = CPORT, l3: object = None) -> bytes:
        ip = l3 if l3 is not None else self.l3(self.cfam, self.cip, self.vip)
        return bytes(Ether(src=CLIENT_MAC, dst=LB0_MAC) / ip / l4)

    def rs(self, l4: object, lport: int = LPORT, l3: object = None) -> FromRs:
        ip = l3 if l3 is not None else self.l3(self.rfam, self.rip, self.lip)
        return FromRs(bytes(Ether(src=RS_MAC, dst=LB1_MAC) / ip / l4))


class FromRs(bytes):
    """A frame that comes in on the LB's RS-side port (RS_PORT); plain bytes come
    in on the client side (CLIENT_PORT)."""


def ingress_of(frames: list[bytes]) -> list[int]:
    return [RS_PORT if isinstance(f, FromRs) else CLIENT_PORT for f in frames]


def run(obj: Path, sc: Scenario, frames: list[bytes]) -> tuple[list[bpf.XdpResult], dict[str, int]]:
    res = bpf.run_xdp_many(
        obj, lb.BPF_PROG, frames, map_updates=sc.updates(), dump_maps=[lb.M_COUNTERS, lb.M_FWD],
        ingress=ingress_of(frames),
    )
    return res, lb.counters(res[0].maps[lb.M_COUNTERS])


# -- independent checks -------------------------------------------------------------------


@dataclass
class Out:
    family: int
    src: str
    dst: str
    l3: bytes  # the IP header with options / extension headers
    proto: int
    l4: bytes  # header + payload, as long as the IP length fields say


def dissect(frame: bytes, l2: int = 14, udp_zero_ok: bool = False) -> Out:
    """The L3/L4 of a frame by hand, checking the IP header checksum and
    that the L4 checksum verifies over pseudo-header + segment."""
    et = int.from_bytes(frame[l2 - 2 : l2], "big")
    ip = frame[l2:]
    if et == 0x0800:
        ihl = (ip[0] & 0x0F) * 4
        tot = int.from_bytes(ip[2:4], "big")
        assert ones_sum(ip[:ihl]) == 0xFFFF, "IPv4 header checksum"
        src, dst, proto = ip[12:16], ip[16:20], ip[9]
        l4 = ip[ihl:tot]
        pseudo = pseudo_header(4, src, dst, proto, len(l4))
        out = Out(4, str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst)), ip[:ihl], proto, l4)
    else:
        assert et == 0x86DD
        plen = int.from_bytes(ip[4:6], "big")
        nh, off = ip[6], 40
        while nh == 60:
            nh, off = ip[off], off + (ip[off + 1] + 1) * 8
        src, dst = ip[8:24], ip[24:40]
        l4 = ip[off : 40 + plen]
        pseudo = pseudo_header(6, src, dst, nh, len(l4))
        out = Out(6, str(ipaddress.IPv6Address(src)), str(ipaddress.IPv6Address(dst)), ip[:off], nh, l4)
    if out.proto == 17 and l4[6:8] == b"\0\0":
        assert udp_zero_ok, "UDP checksum missing"  # a tunnel's: RFC 7348 (IPv4), RFC 6935 (IPv6)
        return out
    assert ones_sum(pseudo + l4) == 0xFFFF, "L4 checksum does not verify"
    return out


def _ttl(o: Out) -> int:
    return o.l3[8] if o.family == 4 else o.l3[7]


def ports(o: Out) -> tuple[int, int]:
    return struct.unpack("!HH", o.l4[:4])


def l4seg(proto: str, flags: str = "S", payload: bytes = b"", **kw: object) -> object:
    if proto == "tcp":
        seg = TCP(sport=kw.pop("sport", CPORT), dport=kw.pop("dport", VPORT), flags=flags, seq=1000, **kw)
    else:
        seg = UDP(sport=kw.pop("sport", CPORT), dport=kw.pop("dport", VPORT), **kw)
    return seg / Raw(payload) if payload else seg


def check_forward(
    sc: Scenario, r: bpf.XdpResult, proto: str, with_opt: bool, payload: bytes = b"", ttl_in: int = 61
) -> Out:
    assert r.action == "XDP_REDIRECT", r.action
    eth = Ether(r.data_out)
    assert (eth.dst, eth.src) == (RS_MAC, LB1_MAC)
    o = dissect(r.data_out)
    assert (o.family, o.src, o.dst, o.proto) == (sc.rfam, sc.lip, sc.rip, PROTOS[proto])
    assert ports(o) == (LPORT, RPORT)
    assert _ttl(o) == ttl_in - 1, f"TTL / hop limit decremented ({ttl_in} in)"
    found = scapy_toa.extract(eth)
    if with_opt:
        assert found is not None, "no option inserted"
        opt, form = found
        assert opt == sc.option()
        assert form == ("ipv4" if sc.rfam == 4 else "ipv6")
        exp = sc.option().pack_ipv4() if sc.rfam == 4 else sc.option().pack_ipv6(PROTOS[proto])
        assert o.l3[(20 if sc.rfam == 4 else 40) :] == exp, "option bytes"
    else:
        assert found is None, "option where none was due"
        assert len(o.l3) == (20 if sc.rfam == 4 else 40)
    if payload:
        assert o.l4.endswith(payload)
    return o


def check_reverse(sc: Scenario, r: bpf.XdpResult, proto: str) -> Out:
    assert r.action == "XDP_REDIRECT", r.action
    eth = Ether(r.data_out)
    assert (eth.dst, eth.src) == (CLIENT_MAC, LB0_MAC)
    o = dissect(r.data_out)
    assert (o.family, o.src, o.dst, o.proto) == (sc.cfam, sc.vip, sc.cip, PROTOS[proto])
    assert ports(o) == (VPORT, CPORT)
    assert _ttl(o) == 60, "TTL / hop limit decremented (61 in)"
    assert len(o.l3) == (20 if sc.cfam == 4 else 40)
    return o


# -- forward + reverse, every family combination ----------------------------------------------


@pytest.mark.parametrize("cfam,rfam", FAMILIES, ids=[f"{c}to{r}" for c, r in FAMILIES])
def test_tcp_handshake_forward_and_reverse(obj: Path, cfam: int, rfam: int) -> None:
    """SYN, SYN-ACK, ACK (third packet), RS data, client data: the option
    rides on the SYN and on the third packet; after the RS's first non-SYN
    segment the client's segments carry none."""
    sc = Scenario(cfam, rfam)
    frames = [
        sc.client(l4seg("tcp", "S")),
        sc.rs(TCP(sport=RPORT, dport=LPORT, flags="SA", seq=5000, ack=1001)),
        sc.client(l4seg("tcp", "A", ack=5001)),
        sc.client(l4seg("tcp", "PA", b"GET / HTTP/1.0\r\n\r\n", ack=5001)),
        sc.rs(TCP(sport=RPORT, dport=LPORT, flags="A", seq=5001, ack=1019)),
        sc.client(l4seg("tcp", "PA", b"more", ack=5001)),
    ]
    res, c = run(obj, sc, frames)
    check_forward(sc, res[0], "tcp", True)
    check_reverse(sc, res[1], "tcp")
    check_forward(sc, res[2], "tcp", True)
    check_forward(sc, res[3], "tcp", True, b"GET / HTTP/1.0\r\n\r\n")
    check_reverse(sc, res[4], "tcp")
    check_forward(sc, res[5], "tcp", False, b"more")
    assert c["fwd"] == 4 and c["fwd_opt"] == 3 and c["rev"] == 2 and c["new_flow"] == 1
    (flow,) = lb.flows(res[0].maps[lb.M_FWD])
    assert (str(flow.cip), flow.cport, str(flow.vip), flow.vport) == (sc.cip, CPORT, sc.vip, VPORT)
    assert (str(flow.lip), flow.lport, str(flow.rip), flow.rport) == (sc.lip, LPORT, sc.rip, RPORT)
    assert flow.pkts == 4 and flow.rs_established


@pytest.mark.parametrize("cfam,rfam", FAMILIES, ids=[f"{c}to{r}" for c, r in FAMILIES])
@pytest.mark.parametrize("opt_pkts", [1, 3])
def test_udp_first_n_packets(obj: Path, cfam: int, rfam: int, opt_pkts: int) -> None:
    sc = Scenario(cfam, rfam, opt_pkts=opt_pkts)
    frames = [sc.client(l4seg("udp", payload=b"dgram%d" % i)) for i in range(4)]
    frames.append(sc.rs(UDP(sport=RPORT, dport=LPORT) / Raw(b"reply")))
    res, c = run(obj, sc, frames)
    for i in range(4):
        check_forward(sc, res[i], "udp", i < opt_pkts, b"dgram%d" % i)
    o = check_reverse(sc, res[4], "udp")
    assert o.l4.endswith(b"reply")
    assert c["fwd_opt"] == opt_pkts and c["fwd"] == 4 and c["rev"] == 1


def test_new_syn_restarts_insertion(obj: Path) -> None:
    sc = Scenario(4, 4)
    frames = [
        sc.client(l4seg("tcp", "S")),
        sc.rs(TCP(sport=RPORT, dport=LPORT, flags="A")),
        sc.client(l4seg("tcp", "A")),
        sc.client(l4seg("tcp", "S")),
    ]
    res, _ = run(obj, sc, frames)
    check_forward(sc, res[2], "tcp", False)
    check_forward(sc, res[3], "tcp", True)


def test_two_flows_get_two_local_ports(obj: Path) -> None:
    sc = Scenario(4, 4, lport_max=LPORT + 100)
    res, c = run(obj, sc, [sc.client(l4seg("udp", sport=p)) for p in (1111, 2222, 1111)])
    a, b, a2 = (ports(dissect(r.data_out))[0] for r in res)
    assert a != b and a == a2 and all(LPORT <= p <= LPORT + 100 for p in (a, b))
    assert c["new_flow"] == 2


def test_flows_spread_over_real_servers(obj: Path) -> None:
    """Two real servers: each flow goes to one of them, with that one's MAC."""
    sc = Scenario(4, 4, lport_max=LPORT + 1000)
    macs = {"192.0.2.11": "02:00:00:00:05:11", "192.0.2.12": "02:00:00:00:05:12"}
    rss = [lb.Rs(ip, RPORT, RS_IFINDEX, LB1_MAC, mac) for ip, mac in macs.items()]
    svc = lb.Svc(sc.vip, VPORT, 17, id=0, n_rs=2, n_local=1, rs_family=4)
    updates = lb.tables([(svc, rss, [sc.lip])], lb.Cfg(lport_min=LPORT, lport_max=LPORT + 1000), PORTS)
    frames = [sc.client(l4seg("udp", sport=p)) for p in range(2000, 2016)]
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=updates)
    seen = set()
    for r in res:
        o = dissect(r.data_out)
        assert Ether(r.data_out).dst == macs[o.dst]
        seen.add(o.dst)
    assert seen == set(macs)


def test_local_ports_exhausted(obj: Path) -> None:
    sc = Scenario(4, 4)  # one local port
    res, c = run(obj, sc, [sc.client(l4seg("udp", sport=p)) for p in (1111, 2222)])
    assert res[0].action == "XDP_REDIRECT" and res[1].action == "XDP_DROP"
    assert c["no_port"] == 1


# -- not ours ----------------------------------------------------------------------------


def test_non_service_traffic_passes(obj: Path) -> None:
    sc = Scenario(4, 4)
    frames = [
        sc.client(l4seg("tcp", dport=22)),  # another port of the VIP
        bytes(Ether(src=CLIENT_MAC, dst=LB0_MAC) / IP(src=sc.cip, dst="198.51.100.1") / UDP()),
        bytes(Ether(src=CLIENT_MAC) / ARP(pdst=sc.vip)),
        sc.rs(TCP(sport=RPORT, dport=LPORT + 1, flags="A")),  # no such flow
        sc.client(b"\x01\x02", l3=IP(src=sc.cip, dst=sc.vip, proto=132)),  # SCTP: unknown protocol
    ]
    res, c = run(obj, sc, frames)
    for r, f in zip(res, frames, strict=True):
        assert r.action == "XDP_PASS" and r.data_out == f
    assert c["pass"] == 5 and c["fwd"] == 0


# -- option stripping ------------------------------------------------------------------------


def _ipopt31(opt: wire.AddrOption) -> IPOption:
    return IPOption(opt.pack_ipv4())


def test_client_option31_removed_ipv4(obj: Path) -> None:
    """A client forging its own option 31 (and other options): the header is
    rebuilt, only the LB's option reaches the RS."""
    sc = Scenario(4, 4)
    forged = wire.AddrOption("10.6.6.6", 666, "10.7.7.7", 777)
    ip = IP(src=sc.cip, dst=sc.vip, ttl=61,
            options=[IPOption(b"\x01"), _ipopt31(forged), IPOption(b"\x01\x00\x00")])  # fmt: skip
    assert ip.ihl is None and len(bytes(ip)) > 20
    res, c = run(obj, sc, [sc.client(l4seg("tcp", "S"), l3=ip)])
    o = check_forward(sc, res[0], "tcp", True)
    assert forged.pack_ipv4() not in o.l3
    assert c["client_ipopt"] == 1


def test_client_option31_removed_ipv6(obj: Path) -> None:
    sc = Scenario(6, 6)
    forged = wire.AddrOption("2001:db8::666", 666, "2001:db8::777", 777)
    ip = IPv6(src=sc.cip, dst=sc.vip, hlim=61) / scapy_toa.ipv6_dstopt(forged, 6)
    res, c = run(obj, sc, [sc.client(l4seg("tcp", "S"), l3=ip)])
    o = check_forward(sc, res[0], "tcp", True)
    assert forged.pack_ipv6(6)[4:] not in o.l3
    assert c["client_ipopt"] == 1


def test_client_option31_to_non_service_dropped(obj: Path) -> None:
    sc = Scenario(4, 4)
    opt = sc.option()
    frames = [
        sc.client(l4seg("tcp", dport=22), l3=IP(src=sc.cip, dst="198.51.100.1", options=[_ipopt31(opt)])),
        sc.client(
            l4seg("udp", dport=53),
            l3=IPv6(src=ADDR[6]["cip"], dst="2001:db8:c::1")
            / scapy_toa.ipv6_dstopt(wire.AddrOption(ADDR[6]["cip"], 1, ADDR[6]["vip"], 2), 17),
        ),
    ]
    # the modules accept the option in any Destination Options header: the second one too
    pad = IPv6ExtHdrDestOpt(nh=60, options=[PadN(optdata=b"\0" * 4)])
    second = scapy_toa.ipv6_dstopt(wire.AddrOption(ADDR[6]["cip"], 1, ADDR[6]["vip"], 2), 17)
    l3 = IPv6(src=ADDR[6]["cip"], dst="2001:db8:c::1") / pad / second
    frames.append(sc.client(l4seg("udp", dport=53), l3=l3))
    res, c = run(obj, sc, frames)
    assert [r.action for r in res] == ["XDP_DROP"] * 3
    assert c["opt31_drop"] == 3


def test_option31_from_rs_port_passes(obj: Path) -> None:
    """On a port configured as RS side, option-carrying traffic for the lb
    itself is the kernel's business (the lab's RS never sends any)."""
    sc = Scenario(4, 4)
    f = sc.rs(l4seg("tcp", dport=22), l3=IP(src=sc.rip, dst=sc.lip, options=[_ipopt31(sc.option())]))
    (r,), c = run(obj, sc, [f])
    assert r.action == "XDP_PASS" and c["pass"] == 1


# -- MSS -----------------------------------------------------------------------------------


def _mss(frame: bytes, l2: int = 14) -> int | None:
    o = dissect(frame, l2)
    for kind, val in TCP(o.l4).options:
        if kind == "MSS":
            return int(val)
    return None


@pytest.mark.parametrize("cfam,rfam", FAMILIES, ids=[f"{c}to{r}" for c, r in FAMILIES])
def test_mss_clamped_in_syn_and_synack(obj: Path, cfam: int, rfam: int) -> None:
    syn_c, synack_c = lb.mss_rules(cfam, rfam, 1500, 1500, vxlan=False)
    sc = Scenario(cfam, rfam, mss_syn=syn_c, mss_synack=synack_c)
    opts = [("NOP", None), ("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]  # MSS at an odd offset
    frames = [
        sc.client(l4seg("tcp", "S", options=opts)),
        sc.rs(TCP(sport=RPORT, dport=LPORT, flags="SA", options=[("MSS", 1460), ("NOP", None)])),
        sc.client(l4seg("tcp", "S", options=[("MSS", 100)])),  # already small: untouched
    ]
    res, c = run(obj, sc, frames)
    assert _mss(res[0].data_out) == min(1460, syn_c)
    assert _mss(res[1].data_out) == min(1460, synack_c)
    assert _mss(res[2].data_out) == 100
    # the clamped SYN-ACK MSS lets a full client segment carry the option within 1500
    assert synack_c + 20 + (20 if rfam == 4 else 40) + (16 if cfam == 4 else 40) <= 1500
    assert c["mss_clamp"] == (1 if syn_c < 1460 else 0) + (1 if synack_c < 1460 else 0)


def test_full_size_segment_with_option_fits_mtu(obj: Path) -> None:
    """6to4 worst case: a full client segment per the clamped MSS, optioned, is
    exactly within 1500 bytes on the RS side."""
    _, synack = lb.mss_rules(6, 4, 1500, 1500, vxlan=False)
    sc = Scenario(6, 4, mss_synack=synack)
    res, _ = run(obj, sc, [sc.client(l4seg("tcp", "PA", b"x" * synack))])
    assert len(res[0].data_out) - 14 == 1500


# -- malformed input -------------------------------------------------------------------------


def test_malformed_input(obj: Path) -> None:
    sc = Scenario(4, 4)
    syn = sc.client(l4seg("tcp", "S"))
    bad_ihl = bytearray(syn)
    bad_ihl[14] = 0x4F  # IHL 15: header runs into the TCP header, past the end
    frames = [
        syn[: 14 + 10],  # truncated IPv4 header
        syn[: 14 + 20 + 10],  # truncated TCP header
        bytes(bad_ihl[: 14 + 40]),
        sc.client(b"", l3=IP(src=sc.cip, dst=sc.vip, proto=17)) + b"\0\x50",  # 2 bytes of UDP
        bytes(
            Ether(src=CLIENT_MAC, dst=LB0_MAC) / IPv6(src=ADDR[6]["cip"], dst=ADDR[6]["vip"], nh=6, plen=20)
        ),
    ]
    bad_len = bytearray(syn)
    bad_len[16:18] = (2000).to_bytes(2, "big")  # tot_len past the frame
    frames.append(bytes(bad_len))
    bad_doff = bytearray(syn)
    bad_doff[14 + 20 + 12] = 0x30  # TCP doff 3
    frames.append(bytes(bad_doff))
    res, c = run(obj, sc, frames)
    assert [r.action for r in res] == ["XDP_DROP"] * len(frames)
    assert c["malformed"] == len(frames) and c["fwd"] == 0


def test_fragments_to_vip_dropped(obj: Path) -> None:
    sc = Scenario(4, 4)
    first = sc.client(l4seg("udp", payload=b"a" * 64), l3=IP(src=sc.cip, dst=sc.vip, flags="MF"))
    later = sc.client(Raw(b"b" * 64), l3=IP(src=sc.cip, dst=sc.vip, proto=17, frag=9))
    f6 = bytes(
        Ether(src=CLIENT_MAC, dst=LB0_MAC)
        / IPv6(src=ADDR[6]["cip"], dst=ADDR[6]["vip"])
        / IPv6ExtHdrFragment(nh=17, m=1)
        / UDP(sport=CPORT, dport=VPORT)
        / Raw(b"c" * 64)
    )
    other = sc.client(Raw(b"d" * 8), l3=IP(src=sc.cip, dst="198.51.100.1", proto=17, frag=9))
    sc6 = Scenario(6, 6)
    res, c = run(obj, sc, [first, later, other])
    assert [r.action for r in res] == ["XDP_DROP", "XDP_DROP", "XDP_PASS"]
    assert c["frag"] == 2
    res6, c6 = run(obj, sc6, [f6])
    assert res6[0].action == "XDP_DROP" and c6["frag"] == 1


def test_ipv4_udp_without_checksum(obj: Path) -> None:
    """UDP checksum 0 stays 0 towards IPv4; towards IPv6 it cannot (mandatory there)."""
    sc = Scenario(4, 4)
    f = bytearray(sc.client(l4seg("udp", payload=b"zero")))
    f[14 + 20 + 6 : 14 + 20 + 8] = b"\0\0"
    res, _ = run(obj, sc, [bytes(f)])
    assert res[0].action == "XDP_REDIRECT"
    out = Ether(res[0].data_out)
    assert out[UDP].chksum == 0 and bytes(out[UDP].payload) == b"zero"
    res6, c6 = run(obj, Scenario(4, 6), [bytes(f)])
    assert res6[0].action == "XDP_DROP" and c6["udp_nocsum"] == 1


def test_ipv6_dstopt_header_form(obj: Path) -> None:
    """Outer IPv6: a Destination Options header, nexthdr 60 -> 60 -> L4,
    exactly as scapy's reference layer builds it."""
    sc = Scenario(4, 6)
    res, _ = run(obj, sc, [sc.client(l4seg("udp", payload=b"p"))])
    pkt = Ether(res[0].data_out)
    assert pkt[IPv6].nh == 60
    assert bytes(pkt[IPv6ExtHdrDestOpt])[:16] == bytes(scapy_toa.ipv6_dstopt(sc.option(), 17))[:16]
    assert isinstance(pkt[IPv6ExtHdrDestOpt].payload, UDP)


def test_bench_steady_state_and_verifier(obj: Path) -> None:
    """bench/bench_lb.py's mirrored flows make every repetition take its path
    (it checks the counters itself), and both programs pass the verifier."""
    import json
    import subprocess
    import sys

    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_lb.py"
    p = subprocess.run(
        [sys.executable, str(bench), "--repeat", "1000", "--runs", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["figures"]) == 4
    for o, prog in ((obj, lb.BPF_PROG), (bpf.obj_path(lb.BASELINE_OBJ), lb.BASELINE_PROG)):
        info = bpf.load_check(o, prog)
        assert info.xlated_insns > 0


@pytest.mark.parametrize("cfam,rfam", FAMILIES, ids=[f"{c}to{r}" for c, r in FAMILIES])
def test_vxlan_encapsulation(obj: Path, cfam: int, rfam: int) -> None:
    """A VXLAN service: Ethernet/IPv4/UDP 4789/VXLAN(VNI) towards the RS's VTEP,
    then the inner frame exactly as without VXLAN (option included)."""
    sc = Scenario(cfam, rfam)
    inner_mac = "02:00:00:00:0a:11"
    rs = lb.Rs(sc.rip, RPORT, RS_IFINDEX, LB1_MAC, RS_MAC, "192.0.2.1", "192.0.2.11", LB1_MAC, inner_mac, 42)
    svc = lb.Svc(sc.vip, VPORT, 17, id=0, n_rs=1, n_local=1, rs_family=rfam, flags=lb.SVC_VXLAN)
    updates = lb.tables([(svc, [rs], [sc.lip])], lb.Cfg(lport_min=LPORT, lport_max=LPORT), PORTS)
    res = bpf.run_xdp_many(
        obj,
        lb.BPF_PROG,
        [sc.client(l4seg("udp", payload=b"vx"))],
        map_updates=updates,
        dump_maps=[lb.M_COUNTERS],
    )
    r = res[0]
    assert r.action == "XDP_REDIRECT"
    outer = dissect(r.data_out, udp_zero_ok=True)  # RFC 7348: outer UDP checksum 0
    assert (outer.family, outer.src, outer.dst, outer.proto) == (4, "192.0.2.1", "192.0.2.11", 17)
    assert Ether(r.data_out).dst == RS_MAC
    assert outer.l4[2:4] == (4789).to_bytes(2, "big")
    assert int.from_bytes(outer.l4[4:6], "big") == len(outer.l4)
    vx = outer.l4[8:16]
    assert vx[0] == 0x08 and int.from_bytes(vx[4:7], "big") == 42
    inner_frame = outer.l4[16:]
    assert Ether(inner_frame).dst == inner_mac
    # the inner frame is what a non-VXLAN service would send, but for its MACs
    as_plain = bytes.fromhex((RS_MAC + LB1_MAC).replace(":", "")) + inner_frame[12:]
    check_forward(sc, bpf.XdpResult(r.retval, r.action, as_plain, 0, 1), "udp", True, b"vx")
    assert lb.counters(r.maps[lb.M_COUNTERS])["vxlan"] == 1


# -- VXLAN both ways: IPv4 and IPv6 underlays, replies through the tunnel ---------------------
UNDERLAY = {4: ("192.0.2.1", "192.0.2.11"), 6: ("2001:db8:5::1", "2001:db8:5::11")}  # (LB, RS) VTEPs
VNI, RS_VX_MAC = 42, "02:00:00:00:0a:11"


def _vx_updates(sc: Scenario, under: int) -> list[bpf.MapUpdate]:
    """A VXLAN service."""
    lbv, rsv = UNDERLAY[under]
    rs = lb.Rs(sc.rip, RPORT, RS_IFINDEX, LB1_MAC, RS_MAC, lbv, rsv, LB1_MAC, RS_VX_MAC, VNI)
    svcs = [(lb.Svc(sc.vip, VPORT, p, id=0, n_rs=1, n_local=1, rs_family=sc.rfam, flags=lb.SVC_VXLAN),
             [rs], [sc.lip]) for p in PROTOS.values()]  # fmt: skip
    return lb.tables(svcs, lb.Cfg(lport_min=LPORT, lport_max=LPORT), PORTS)


def _vx_reply(sc: Scenario, under: int, l4: object, vni: int = VNI, to: str | None = None) -> FromRs:
    """What the RS's vxlan device sends back: its reply inside VXLAN to the LB's VTEP."""
    lbv, rsv = UNDERLAY[under]
    outer = IP(src=rsv, dst=to or lbv) if under == 4 else IPv6(src=rsv, dst=to or lbv)
    inner = Ether(src=RS_VX_MAC, dst=LB1_MAC) / sc.l3(sc.rfam, sc.rip, sc.lip) / l4
    vx = UDP(sport=51000, dport=4789) / VXLAN(vni=vni)
    return FromRs(bytes(Ether(src=RS_MAC, dst=LB1_MAC) / outer / vx / inner))


VX_CASES = [(c, r, u) for c, r in FAMILIES for u in (4, 6) if u == r or (c, r) == (4, 4)]


@pytest.mark.parametrize(("cfam", "rfam", "under"), VX_CASES,
                         ids=[f"{c}to{r}-underlay{u}" for c, r, u in VX_CASES])  # fmt: skip
def test_vxlan_both_ways(obj: Path, cfam: int, rfam: int, under: int) -> None:
    """Client SYN out in VXLAN over the underlay's family; the RS's SYN-ACK back in
    VXLAN to the LB's VTEP is unwrapped and goes the reverse way; then the third
    packet (option) and a UDP datagram and its reply the same way."""
    sc = Scenario(cfam, rfam)
    lbv, rsv = UNDERLAY[under]
    frames = [
        sc.client(l4seg("tcp", "S")),
        _vx_reply(sc, under, TCP(sport=RPORT, dport=LPORT, flags="SA", seq=5000, ack=1001)),
        sc.client(l4seg("tcp", "A", ack=5001)),
        sc.client(l4seg("udp", payload=b"q", sport=CPORT + 1)),
        _vx_reply(sc, under, UDP(sport=RPORT, dport=LPORT + 0) / Raw(b"r")),
    ]
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=_vx_updates(sc, under),
                           dump_maps=[lb.M_COUNTERS], self_map=lb.M_SELF,
                           ingress=ingress_of(frames))  # fmt: skip
    for i in (0, 2):
        outer = dissect(res[i].data_out, udp_zero_ok=True)
        assert (outer.family, outer.src, outer.dst, outer.proto) == (under, lbv, rsv, 17), i
        assert Ether(outer.l4[16:]).dst == RS_VX_MAC
        inner = outer.l4[16:]
        as_plain = bytes.fromhex((RS_MAC + LB1_MAC).replace(":", "")) + inner[12:]
        check_forward(sc, bpf.XdpResult(0, "XDP_REDIRECT", as_plain, 0, 1), "tcp", True)
    check_reverse(sc, res[1], "tcp")
    c = lb.counters(res[0].maps[lb.M_COUNTERS])
    assert c["decap"] == 2 and c["rev"] == 2 and c["vxlan"] == 3 and c["decap_fail"] == 0, c
    assert res[4].action == "XDP_REDIRECT"
    o = dissect(res[4].data_out)
    assert (o.src, o.dst, ports(o)) == (sc.vip, sc.cip, (VPORT, CPORT + 1))


def test_vxlan_not_for_us_is_left_alone(obj: Path) -> None:
    """VXLAN to another address, with another VNI, or on the client-side port is
    not unwrapped (the kernel gets it as it came); without the program in lb_self
    an unwrapped reply is dropped and counted."""
    sc = Scenario(4, 4)
    reply = TCP(sport=RPORT, dport=LPORT, flags="SA", seq=5000, ack=1001)
    frames = [
        sc.client(l4seg("tcp", "S")),
        _vx_reply(sc, 4, reply, to="192.0.2.99"),
        _vx_reply(sc, 4, reply, vni=43),
    ]
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=_vx_updates(sc, 4),
                           dump_maps=[lb.M_COUNTERS], self_map=lb.M_SELF,
                           ingress=ingress_of(frames))  # fmt: skip
    assert [r.action for r in res[1:]] == ["XDP_PASS", "XDP_PASS"]
    assert [r.data_out for r in res[1:]] == frames[1:]
    assert lb.counters(res[0].maps[lb.M_COUNTERS])["decap"] == 0
    # on a client-side port: not unwrapped
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, [frames[0], bytes(_vx_reply(sc, 4, reply))],
                           map_updates=_vx_updates(sc, 4), dump_maps=[lb.M_COUNTERS],
                           self_map=lb.M_SELF)  # fmt: skip
    assert res[1].action == "XDP_PASS" and lb.counters(res[0].maps[lb.M_COUNTERS])["decap"] == 0
    # lb_self empty: unwrapped, then dropped
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, [frames[0], _vx_reply(sc, 4, reply)],
                           map_updates=_vx_updates(sc, 4), dump_maps=[lb.M_COUNTERS],
                           ingress=[CLIENT_PORT, RS_PORT])  # fmt: skip
    c = lb.counters(res[0].maps[lb.M_COUNTERS])
    assert res[1].action == "XDP_DROP" and (c["decap"], c["decap_fail"]) == (1, 1)


@pytest.mark.parametrize("cfam,rfam", FAMILIES, ids=[f"{c}to{r}" for c, r in FAMILIES])
def test_ttl_that_would_reach_zero_is_dropped(obj: Path, cfam: int, rfam: int) -> None:
    """The LB is a hop: TTL / hop limit 1 is not forwarded either way (a loop ends)."""
    sc = Scenario(cfam, rfam)
    l3 = IP(src=sc.cip, dst=sc.vip, ttl=1) if cfam == 4 else IPv6(src=sc.cip, dst=sc.vip, hlim=1)
    rs_l3 = IP(src=sc.rip, dst=sc.lip, ttl=1) if rfam == 4 else IPv6(src=sc.rip, dst=sc.lip, hlim=1)
    frames = [
        sc.client(l4seg("tcp", "S"), l3=l3),
        sc.client(l4seg("tcp", "S")),
        sc.rs(TCP(sport=RPORT, dport=LPORT, flags="SA", ack=1001), l3=rs_l3),
        sc.rs(TCP(sport=RPORT, dport=LPORT, flags="SA", seq=5000, ack=1001)),
    ]
    res, c = run(obj, sc, frames)
    assert [r.action for r in res] == ["XDP_DROP", "XDP_REDIRECT", "XDP_DROP", "XDP_REDIRECT"]
    assert c["ttl_expired"] == 2 and c["fwd"] == 1 and c["rev"] == 1


def test_the_local_port_depends_on_the_secret_hash_key(obj: Path) -> None:
    """Which local port a flow gets is keyed (lb_cfg.hash_key): the same flow under
    two keys gets two ports, under one key always the same."""
    sc = Scenario(4, 4)

    def lport(key: int) -> int:
        rs = lb.Rs(sc.rip, RPORT, RS_IFINDEX, LB1_MAC, RS_MAC)
        svc = lb.Svc(sc.vip, VPORT, 6, id=0, n_rs=1, n_local=1, rs_family=4)
        ups = lb.tables([(svc, [rs], [sc.lip])], lb.Cfg(lport_min=1024, lport_max=65535, hash_key=key), PORTS)
        r = bpf.run_xdp(obj, lb.BPF_PROG, sc.client(l4seg("tcp", "S")), map_updates=ups)
        return ports(dissect(r.data_out))[0]

    assert lport(0x1234) == lport(0x1234)
    assert len({lport(k) for k in (0x1234, 0x5678, 0x9ABC)}) == 3


# -- scheduling: which real server a new flow gets (lab/sched.py builds the rings) ---------------

RS_ADDRS = [f"192.0.2.{11 + i}" for i in range(8)]


def _sched_updates(
    weights: list[int], scheduler: str = "maglev", persist_s: int = 0, down: tuple[int, ...] = (),
    extra: list[bpf.MapUpdate] | None = None,
) -> list[bpf.MapUpdate]:  # fmt: skip
    """A TCP and a UDP service to len(weights) real servers (rs1, rs2, ...), a fixed
    hash key so that two loads hash alike, flow state that never idles out."""
    sc = Scenario(4, 4)
    rss = [lb.Rs(RS_ADDRS[i], RPORT, RS_IFINDEX, LB1_MAC, RS_MAC, weight=w, down=i in down, name=f"rs{i + 1}")
           for i, w in enumerate(weights)]  # fmt: skip
    svcs = [(lb.Svc(sc.vip, VPORT, p, id=0, n_rs=len(rss), n_local=1, rs_family=4, scheduler=scheduler,
                    persist_s=persist_s), rss, [sc.lip]) for p in PROTOS.values()]  # fmt: skip
    cfg = lb.Cfg(tcp_idle_s=1e9, udp_idle_s=1e9, lport_min=1024, lport_max=65535, hash_key=0x5EED)
    return lb.tables(svcs, cfg, PORTS) + list(extra or [])


def _flows(n: int, clients: int = 250, proto: str = "udp", flags: str = "S") -> list[bytes]:
    """n new flows from `clients` client addresses (distinct ports)."""
    sc = Scenario(4, 4)
    return [sc.client(l4seg(proto, flags, sport=10000 + i),
                      l3=IP(src=f"198.51.{100 + (i % clients) // 250}.{1 + (i % clients) % 250}", dst=sc.vip))
            for i in range(n)]  # fmt: skip


def _servers_of(res: list[bpf.XdpResult]) -> list[int]:
    out = []
    for r in res:
        assert r.action == "XDP_REDIRECT", r.action
        out.append(RS_ADDRS.index(dissect(r.data_out).dst))
    return out


def _run_sched(
    obj: Path, updates: list[bpf.MapUpdate], frames: list[bytes]
) -> tuple[list[int], dict[str, int]]:
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=updates, dump_maps=[lb.M_COUNTERS])
    return _servers_of(res), lb.counters(res[0].maps[lb.M_COUNTERS])


@pytest.mark.parametrize(("scheduler", "tol"), [("maglev", 0.04), ("wrr", 0.01)])
def test_distribution_follows_the_weights(obj: Path, scheduler: str, tol: float) -> None:
    """2,000 new flows from 250 clients over weights 1:2:3:2: each server's share is
    its weight's, within 4 points for Maglev (hashing), 1 point for wrr (a counter)."""
    weights = [1, 2, 3, 2]
    got, c = _run_sched(obj, _sched_updates(weights, scheduler), _flows(2000))
    assert c["new_flow"] == 2000
    for i, w in enumerate(weights):
        share = got.count(i) / len(got)
        assert share == pytest.approx(w / sum(weights), abs=tol), (scheduler, i, share)


def test_round_robin_takes_turns(obj: Path) -> None:
    got, _ = _run_sched(obj, _sched_updates([1, 7, 1], "rr"), _flows(300))
    assert [got.count(i) for i in range(3)] == [100, 100, 100] or max(got.count(i) for i in range(3)) <= 102


def test_source_hashing_keeps_each_client_on_one_server(obj: Path) -> None:
    got, _ = _run_sched(obj, _sched_updates([1, 1, 1, 1], "sh"), _flows(400, clients=40))
    by_client: dict[int, set[int]] = {}
    for i, rs in enumerate(got):
        by_client.setdefault(i % 40, set()).add(rs)
    assert all(len(s) == 1 for s in by_client.values())
    assert len({next(iter(s)) for s in by_client.values()}) == 4


@pytest.mark.parametrize("persist_s", [0, 300])
def test_persistence_sends_a_clients_flows_to_one_server(obj: Path, persist_s: int) -> None:
    """One client, 40 connections (TCP SYNs) and 40 UDP flows: with persistence
    all 80 go where the first went, TCP and UDP alike (iperf3's control and data
    connections); without it they spread."""
    frames = _flows(40, clients=1, proto="tcp") + _flows(40, clients=1, proto="udp")
    got, c = _run_sched(obj, _sched_updates([1, 1, 1], persist_s=persist_s), frames)
    if persist_s:
        assert set(got) == {got[0]} and c["persist"] == 79
    else:
        assert len(set(got)) == 3 and c["persist"] == 0


def test_down_server_drains_and_gets_no_new_flows(obj: Path) -> None:
    """rs1 is down: its established flow keeps going to it, 100 new flows go to the
    others, a persistent client of rs1 is moved, and a new SYN on rs1's flow's
    tuple is scheduled again."""
    sc = Scenario(4, 4)
    est = [*lb.flow_entries(sc.cip, sc.vip, CPORT, VPORT, 6, sc.lip, RS_ADDRS[0], LPORT, RPORT, 0,
                            established=True),
           bpf.MapUpdate(lb.M_PERSIST, lb.persist_key("198.51.100.1", 0),
                         lb.persist_value(0, 0))]  # fmt: skip
    ups = _sched_updates([1, 1, 1], persist_s=10**6, down=(0,), extra=est)
    frames = [sc.client(l4seg("tcp", "A", b"data")), *_flows(100), sc.client(l4seg("tcp", "S"))]
    got, c = _run_sched(obj, ups, frames)
    assert got[0] == 0, "the established flow stays on its (down) server"
    assert 0 not in got[1:], "a down server got a new flow"
    assert {1, 2} <= set(got[1:-1])
    assert c["resched"] == 1 and c["new_flow"] == 101


def test_weight_zero_keeps_persistent_clients_only(obj: Path) -> None:
    """LVS's quiescing: weight 0 takes no new client, but its persistent ones stay."""
    keep = [bpf.MapUpdate(lb.M_PERSIST, lb.persist_key("198.51.100.1", 0), lb.persist_value(0, 0))]
    got, c = _run_sched(obj, _sched_updates([0, 1], persist_s=10**6, extra=keep), _flows(60, clients=30))
    assert all(rs == 0 for i, rs in enumerate(got) if i % 30 == 0)
    assert all(rs == 1 for i, rs in enumerate(got) if i % 30)
    assert c["persist"] == 60 - 30 + 1


def test_consistent_hashing_moves_about_one_nth(obj: Path) -> None:
    """Maglev, 5 servers, 2,000 flows; rs3 leaves: the flows it had move (about 1/5),
    the others' stay put but for a few."""
    frames = _flows(2000)
    before, _ = _run_sched(obj, _sched_updates([1] * 5), frames)
    after, _ = _run_sched(obj, _sched_updates([1] * 5, down=(2,)), frames)
    moved = [b != a for b, a in zip(before, after, strict=True)]
    assert 2 not in after
    assert sum(moved) / len(frames) == pytest.approx(1 / 5, abs=0.05)
    stayers = [m for m, b in zip(moved, before, strict=True) if b != 2]
    assert sum(stayers) / len(stayers) < 0.03


# -- UDP's MTU guard ------------------------------------------------------------------------------


@pytest.mark.parametrize("cfam,rfam", FAMILIES, ids=[f"{c}to{r}" for c, r in FAMILIES])
def test_udp_datagram_the_option_would_push_past_the_mtu_goes_bare(obj: Path, cfam: int, rfam: int) -> None:
    """RS side MTU 1500: a datagram that fits with the option gets it; one that fits
    only without goes without (counted), so that it arrives at all; the frames
    that leave are never above the MTU."""
    sc = Scenario(cfam, rfam, opt_pkts=3, lport_max=LPORT + 10)
    opt = lb.OPT_LEN[cfam]
    room = 1500 - lb.IP_HDR[rfam] - 8  # UDP payload that fills the RS side's MTU without the option
    ups = [u for u in sc.updates() if u.map != lb.M_SERVICES]
    for u in sc.updates():
        if u.map == lb.M_SERVICES:
            svc, n = lb.Svc.parse(u.key, u.value)
            ups.append(bpf.MapUpdate(u.map, u.key, dataclasses.replace(svc, mtu_rs=1500).pack(n)))
    frames = [sc.client(l4seg("udp", payload=b"x" * (room - opt))),  # fits with the option
              sc.client(l4seg("udp", payload=b"y" * (room - opt + 1))),  # one byte too many for it
              sc.client(l4seg("udp", payload=b"z" * 10))]  # the third: the option again  # fmt: skip
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=ups, dump_maps=[lb.M_COUNTERS])
    c = lb.counters(res[0].maps[lb.M_COUNTERS])
    outs = [dissect(r.data_out) for r in res]
    assert [scapy_toa.extract(Ether(r.data_out)) is not None for r in res] == [True, False, True]
    assert all(len(r.data_out) - 14 <= 1500 for r in res)
    assert len(res[0].data_out) - 14 == 1500 and outs[1].l4.endswith(b"y" * 100)
    assert c["udp_opt_mtu"] == 1 and c["fwd"] == 3 and c["fwd_opt"] == 2


# -- the two halves of a flow name each other ------------------------------------------------------


def _forever(sc: Scenario, extra: list[bpf.MapUpdate]) -> list[bpf.MapUpdate]:
    cfg = lb.Cfg(tcp_idle_s=1e9, udp_idle_s=1e9, lport_min=LPORT, lport_max=sc.lport_max)
    return [*sc.updates(), bpf.MapUpdate(lb.M_CFG, lb.u32(0), cfg.pack()), *extra]


def test_a_forward_entry_whose_reverse_half_is_another_flows_is_not_used(obj: Path) -> None:
    """LRU pressure evicted client A's reverse half and client B took its local port:
    A's next packet must not go out on B's port (the RS would mix the two); it
    starts a new flow on a free port."""
    sc = Scenario(4, 4, lport_max=LPORT + 100)
    fwd_a, _ = lb.flow_entries(sc.cip, sc.vip, CPORT, VPORT, 17, sc.lip, sc.rip, LPORT, RPORT, 0)
    _, rev_b = lb.flow_entries("198.51.100.99", sc.vip, 44444, VPORT, 17, sc.lip, sc.rip, LPORT, RPORT, 0)
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, [sc.client(l4seg("udp", payload=b"a"))],
                           map_updates=_forever(sc, [fwd_a, rev_b]), dump_maps=[lb.M_COUNTERS])  # fmt: skip
    c = lb.counters(res[0].maps[lb.M_COUNTERS])
    lport, _ = ports(dissect(res[0].data_out))
    assert lport != LPORT and LPORT < lport <= LPORT + 100
    assert c["pair_broken"] == 1 and c["new_flow"] == 1


def test_a_reply_on_an_old_port_does_not_end_the_new_flows_insertion(obj: Path) -> None:
    """Client A's flow moved to a new local port while the old reverse entry lives
    on: the RS's segment on the old port must not mark the new flow established,
    or A's third packet there would go without the option."""
    sc = Scenario(4, 4, lport_max=LPORT + 100)
    new = lb.flow_entries(sc.cip, sc.vip, CPORT, VPORT, 6, sc.lip, sc.rip, LPORT + 7, RPORT, 0)
    _, old_rev = lb.flow_entries(sc.cip, sc.vip, CPORT, VPORT, 6, sc.lip, sc.rip, LPORT, RPORT, 0)
    frames = [sc.rs(TCP(sport=RPORT, dport=LPORT, flags="A")), sc.client(l4seg("tcp", "A"))]
    res = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=_forever(sc, [*new, old_rev]),
                           ingress=ingress_of(frames))  # fmt: skip
    assert res[0].action == "XDP_REDIRECT"
    o = dissect(res[1].data_out)
    assert ports(o) == (LPORT + 7, RPORT)
    assert scapy_toa.extract(Ether(res[1].data_out)) is not None, "the option is still due"
