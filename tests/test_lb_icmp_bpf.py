"""bpf/lb.c under BPF_PROG_TEST_RUN: ICMP errors about a flow cross the LB as the
flow does (to the client about its own packet, to the RS about its own), in every
family combination, with the MTU of a Packet Too Big less what the LB adds; and
each direction is accepted only on its own side's port.

Cases are data: the error as the RS side or the client side sends it (quoting
the frame the LB really emitted, option included), and the frame that must come
out, built here from scratch (ICMP checksums by full computation), compared
byte for byte.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from test_lb_bpf import (
    CLIENT_MAC,
    FAMILIES,
    LB0_MAC,
    LB1_MAC,
    LPORT,
    RPORT,
    RS_MAC,
    FromRs,
    Scenario,
    l4seg,
    run,
)

from lab import bpf, lb
from lab.checksum import ones_sum, pseudo_header

pytestmark = pytest.mark.bpf

HDR = lb.IP_HDR


@pytest.fixture(scope="module")
def obj() -> Path:
    return bpf.obj_path(lb.BPF_OBJ)


def icmp(fam: int, type_: int, code: int, rest: bytes, body: bytes, src: str, dst: str) -> bytes:
    """An ICMP / ICMPv6 message with its checksum computed over all of it."""
    msg = bytes([type_, code, 0, 0]) + rest + body
    if fam == 6:
        a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        s = ones_sum(pseudo_header(6, a, b, 58, len(msg)) + msg)
    else:
        s = ones_sum(msg)
    return msg[:2] + (0xFFFF - s).to_bytes(2, "big") + msg[4:]


def ip_of(fam: int, src: str, dst: str, ttl: int, proto: int, payload: bytes) -> bytes:
    """IPv4 as the LB writes it (ID 0, DF), or IPv6."""
    if fam == 4:
        return bytes(IP(src=src, dst=dst, ttl=ttl, proto=proto, id=0, flags="DF") / Raw(payload))
    return bytes(IPv6(src=src, dst=dst, hlim=ttl, nh=proto) / Raw(payload))


def eth(src: str, dst: str, fam: int) -> bytes:
    return bytes(Ether(src=src, dst=dst, type=0x0800 if fam == 4 else 0x86DD))


def l3_of(frame: bytes) -> bytes:
    """A frame's IP packet, as long as its length fields say."""
    ip = frame[14:]
    n = int.from_bytes(ip[2:4], "big") if ip[0] >> 4 == 4 else 40 + int.from_bytes(ip[4:6], "big")
    return ip[:n]


def l4_of(l3: bytes) -> bytes:
    if l3[0] >> 4 == 4:
        return l3[(l3[0] & 0xF) * 4 :]
    nh, off = l3[6], 40
    while nh == 60:
        nh, off = l3[off], off + (l3[off + 1] + 1) * 8
    return l3[off:]


@dataclass(frozen=True)
class Kind:
    """One ICMP error, as each family says it: (type, code) and the 4 bytes after the checksum."""

    name: str
    v4: tuple[int, int]
    v6: tuple[int, int]

    def rest(self, fam: int, mtu: int = 0) -> bytes:
        if self.name == "too-big":
            return (0).to_bytes(2, "big") + mtu.to_bytes(2, "big") if fam == 4 else mtu.to_bytes(4, "big")
        return bytes(4)

    def of(self, fam: int) -> tuple[int, int]:
        return self.v4 if fam == 4 else self.v6


PORT_UNREACH = Kind("port-unreachable", (3, 3), (1, 4))
TOO_BIG = Kind("too-big", (3, 4), (2, 0))
TIME = Kind("time-exceeded", (11, 0), (3, 0))
KINDS = [PORT_UNREACH, TOO_BIG, TIME]


def _mtu_to_client(sc: Scenario, reported: int) -> int:
    """What the client may send when a hop towards the RS allows `reported`: its
    packets grow by the RS family's header over its own and by the option."""
    return reported - (HDR[sc.rfam] - HDR[sc.cfam] + lb.OPT_LEN[sc.cfam])


def _mtu_to_rs(sc: Scenario, reported: int) -> int:
    """What the RS may send when a hop towards the client allows `reported`."""
    return reported - (HDR[sc.cfam] - HDR[sc.rfam])


CASES = [(c, r, p, k) for c, r in FAMILIES for p in ("tcp", "udp") for k in KINDS]
IDS = [f"{c}to{r}-{p}-{k.name}" for c, r, p, k in CASES]


def flow(sc: Scenario, proto: str) -> list[bytes]:
    """A client packet (the flow, the option on it) and the RS's reply."""
    if proto == "tcp":
        return [
            sc.client(l4seg("tcp", "S")),
            sc.rs(TCP(sport=RPORT, dport=LPORT, flags="SA", seq=5000, ack=1001)),
        ]
    return [
        sc.client(l4seg("udp", payload=b"question")),
        sc.rs(UDP(sport=RPORT, dport=LPORT) / Raw(b"answer")),
    ]


def rs_error(sc: Scenario, quote: bytes, t: int, c: int, rest: bytes = bytes(4)) -> FromRs:
    """An ICMP error from the RS side (the RS itself, say) to the local address."""
    err = icmp(sc.rfam, t, c, rest, quote, sc.rip, sc.lip)
    return FromRs(
        eth(RS_MAC, LB1_MAC, sc.rfam) + ip_of(sc.rfam, sc.rip, sc.lip, 64, 1 if sc.rfam == 4 else 58, err)
    )


def client_error(sc: Scenario, quote: bytes, t: int, c: int, rest: bytes = bytes(4)) -> bytes:
    """An ICMP error from the client side (the client itself, say) to the VIP."""
    err = icmp(sc.cfam, t, c, rest, quote, sc.cip, sc.vip)
    return eth(CLIENT_MAC, LB0_MAC, sc.cfam) + ip_of(
        sc.cfam, sc.cip, sc.vip, 64, 1 if sc.cfam == 4 else 58, err
    )


@pytest.mark.parametrize(("cfam", "rfam", "proto", "kind"), CASES, ids=IDS)
def test_error_from_the_rs_side_reaches_the_client(
    obj: Path, cfam: int, rfam: int, proto: str, kind: Kind
) -> None:
    """A hop on the RS side (or the RS) reports on the packet the LB sent it; the
    client gets the error about the packet it sent: from the VIP, in its family,
    quoting cip:cport -> vip:vport without the option."""
    sc = Scenario(cfam, rfam)
    first, _ = flow(sc, proto)
    sent, _ = run(obj, sc, [first])
    quote = l3_of(sent[0].data_out)  # what the RS side received, option included
    t, c = kind.of(rfam)
    res, counts = run(obj, sc, [first, rs_error(sc, quote, t, c, kind.rest(rfam, 1400))])

    client_l3 = l3_of(first)
    orig = ip_of(cfam, sc.cip, sc.vip, 60, 6 if proto == "tcp" else 17, l4_of(client_l3))  # as the RS saw it
    t, c = kind.of(cfam)
    want = icmp(cfam, t, c, kind.rest(cfam, _mtu_to_client(sc, 1400)), orig, sc.vip, sc.cip)
    want_frame = eth(LB0_MAC, CLIENT_MAC, cfam) + ip_of(cfam, sc.vip, sc.cip, 63,
                                                                    1 if cfam == 4 else 58, want)  # fmt: skip
    assert res[1].action == "XDP_REDIRECT", (res[1].action, counts)
    assert res[1].data_out.hex() == want_frame.hex()
    assert counts["icmp"] == 1


@pytest.mark.parametrize(("cfam", "rfam", "proto", "kind"), CASES, ids=IDS)
def test_error_from_the_client_side_reaches_the_rs(
    obj: Path, cfam: int, rfam: int, proto: str, kind: Kind
) -> None:
    """A hop on the client side (or the client) reports on a reply the LB sent
    it; the RS gets the error about the reply it sent: from the local address, in
    its family, quoting rip:rport -> lip:lport."""
    sc = Scenario(cfam, rfam)
    first, reply = flow(sc, proto)
    sent, _ = run(obj, sc, [first, reply])
    quote = l3_of(sent[1].data_out)  # what the client received
    t, c = kind.of(cfam)
    res, counts = run(obj, sc, [first, reply, client_error(sc, quote, t, c, kind.rest(cfam, 1400))])

    orig = ip_of(rfam, sc.rip, sc.lip, 60, 6 if proto == "tcp" else 17, l4_of(l3_of(reply)))
    t, c = kind.of(rfam)
    want = icmp(rfam, t, c, kind.rest(rfam, _mtu_to_rs(sc, 1400)), orig, sc.lip, sc.rip)
    want_frame = eth(LB1_MAC, RS_MAC, rfam) + ip_of(rfam, sc.lip, sc.rip, 63,
                                                                1 if rfam == 4 else 58, want)  # fmt: skip
    assert res[2].action == "XDP_REDIRECT", (res[2].action, counts)
    assert res[2].data_out.hex() == want_frame.hex()
    assert counts["icmp"] == 1


def test_too_big_never_asks_for_less_than_the_family_minimum(obj: Path) -> None:
    """4to6: an IPv6 hop's 1280 less 36 would be 1244, fine for IPv4; 6to4: an
    IPv4 hop's 576 less 20 is below IPv6's 1280, which is what the client gets."""
    for (cfam, rfam, reported), expect in [((4, 6, 1280), 1244), ((6, 4, 576), 1280)]:
        sc = Scenario(cfam, rfam)
        first, _ = flow(sc, "udp")
        sent, _ = run(obj, sc, [first])
        t, c = TOO_BIG.of(rfam)
        res, _ = run(
            obj, sc, [first, rs_error(sc, l3_of(sent[0].data_out), t, c, TOO_BIG.rest(rfam, reported))]
        )
        icmp_out = l4_of(l3_of(res[1].data_out))
        got = int.from_bytes(icmp_out[6:8] if cfam == 4 else icmp_out[4:8], "big")
        assert got == expect, (cfam, rfam, got)


def test_errors_without_an_equivalent_are_dropped(obj: Path) -> None:
    """Nothing the client side cannot say (IPv4's precedence cutoff in 6to4) or
    that points into what it never sent (a parameter problem in our option)."""
    sc64 = Scenario(6, 4)
    first, _ = flow(sc64, "udp")
    sent, _ = run(obj, sc64, [first])
    res, c = run(obj, sc64, [first, rs_error(sc64, l3_of(sent[0].data_out), 3, 14)])
    assert res[1].action == "XDP_DROP" and c["icmp_drop"] == 1
    sc44 = Scenario(4, 4)
    first, _ = flow(sc44, "udp")
    sent, _ = run(obj, sc44, [first])
    res, c = run(obj, sc44, [first, rs_error(sc44, l3_of(sent[0].data_out), 12, 0, bytes([22, 0, 0, 0]))])
    assert res[1].action == "XDP_DROP" and c["icmp_drop"] == 1


def test_errors_about_no_flow_of_ours_and_other_icmp_go_to_the_kernel(obj: Path) -> None:
    sc = Scenario(4, 4)
    first, _ = flow(sc, "udp")
    sent, _ = run(obj, sc, [first])
    quote = bytearray(l3_of(sent[0].data_out))
    quote[-15] ^= 1  # the UDP source port: another local port, no such flow
    stranger = rs_error(sc, bytes(quote), 3, 3)
    ping = icmp(4, 8, 0, bytes(4), b"hi", sc.cip, sc.vip)
    echo = bytes(Ether(src=CLIENT_MAC, dst=LB0_MAC) / IP(src=sc.cip, dst=sc.vip, proto=1) / Raw(ping))
    res, c = run(obj, sc, [first, stranger, echo])
    assert [r.action for r in res[1:]] == ["XDP_PASS", "XDP_PASS"]
    assert [r.data_out for r in res[1:]] == [stranger, echo] and c["icmp"] == 0


def test_each_direction_only_from_its_own_side(obj: Path) -> None:
    """The RS's reply (rip:rport -> lip:lport) arriving on the client-side port is
    a spoof: dropped, not translated; so is a packet to the VIP on the RS side,
    and an RS-side error about a flow sent in from the client side."""
    sc = Scenario(4, 4)
    first, reply = flow(sc, "udp")
    sent, _ = run(obj, sc, [first])
    spoofed_reply = bytes(reply)  # plain bytes: in on the client side
    to_vip_from_rs = FromRs(first)
    err = bytes(rs_error(sc, l3_of(sent[0].data_out), 3, 3))
    res, c = run(obj, sc, [first, spoofed_reply, to_vip_from_rs, err, reply])
    assert [r.action for r in res] == ["XDP_REDIRECT", "XDP_DROP", "XDP_DROP", "XDP_PASS", "XDP_REDIRECT"]
    assert c["wrong_port"] == 2 and c["rev"] == 1 and c["icmp"] == 0
