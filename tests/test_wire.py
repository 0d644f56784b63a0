"""The reference codec and the scapy layer against the hand-written vectors."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from lab import scapy_toa, wire

VECTORS = json.loads((Path(__file__).parent / "vectors" / "toa_opt.json").read_text())


def _opt(v: dict) -> wire.AddrOption:
    return wire.AddrOption(v["cip"], v["cport"], v["vip"], v["vport"])


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=lambda v: v["name"])
def test_pack_matches_golden_bytes(v: dict) -> None:
    assert _opt(v).pack(v["form"], v.get("nexthdr", 6)) == bytes.fromhex(v["hex"])


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=lambda v: v["name"])
def test_unpack_golden_bytes(v: dict) -> None:
    data = bytes.fromhex(v["hex"])
    if v["form"] == "ipv4":
        assert wire.unpack_ipv4(data) == _opt(v)
    else:
        assert wire.unpack_ipv6(data) == (_opt(v), v["nexthdr"])


@pytest.mark.parametrize(
    "m", VECTORS["malformed"], ids=lambda m: f"{m['form']}-{m['error'].replace(' ', '_')}"
)
def test_malformed_input_is_refused_with_its_reason(m: dict) -> None:
    data = bytes.fromhex(m["hex"])
    parse = wire.unpack_ipv4 if m["form"] == "ipv4" else wire.unpack_ipv6
    with pytest.raises(wire.WireError, match=m["error"]):
        parse(data)


def test_option_family_and_port_checks() -> None:
    with pytest.raises(wire.WireError, match="one family"):
        wire.AddrOption("10.0.0.1", 1, "2001:db8::2", 2)
    with pytest.raises(wire.WireError, match="16-bit"):
        wire.AddrOption("10.0.0.1", 65536, "10.0.0.2", 2)


def test_find_in_ipv4_options_walks_past_other_options() -> None:
    opt = wire.AddrOption("10.0.0.1", 1, "10.0.0.2", 2)
    # NOP, a 4-byte router-alert (type 148), then ours, then EOL padding
    options = b"\x01" + b"\x94\x04\x00\x00" + opt.pack_ipv4() + b"\x00\x00\x00"
    assert wire.find_in_ipv4_options(options) == opt
    assert wire.find_in_ipv4_options(b"\x01\x01\x00\x00") is None
    assert wire.find_in_ipv4_options(b"\x00" + opt.pack_ipv4()) is None  # after EOL: not an option
    with pytest.raises(wire.WireError, match="truncated"):
        wire.find_in_ipv4_options(b"\x01" + opt.pack_ipv4()[:10])
    with pytest.raises(wire.WireError, match="bad length"):
        wire.find_in_ipv4_options(b"\x94\x09\x00\x00")


addr4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
addr6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
ports = st.integers(0, 0xFFFF)
options = st.one_of(
    st.builds(wire.AddrOption, addr4, ports, addr4, ports),
    st.builds(wire.AddrOption, addr6, ports, addr6, ports),
)


@given(options)
def test_round_trip_ipv4_form(opt: wire.AddrOption) -> None:
    data = opt.pack_ipv4()
    assert len(data) == (40 if opt.inner == 6 else 16)
    assert wire.unpack_ipv4(data) == opt


@given(options, st.sampled_from([6, 17]))
def test_round_trip_ipv6_form(opt: wire.AddrOption, nh: int) -> None:
    data = opt.pack_ipv6(nh)
    assert len(data) % 8 == 0
    assert wire.unpack_ipv6(data) == (opt, nh)


@given(options)
def test_scapy_layer_builds_the_codecs_bytes_and_dissects_them(opt: wire.AddrOption) -> None:
    layer = scapy_toa.IPOption_TOA(cip=str(opt.cip), cport=opt.cport, vip=str(opt.vip), vport=opt.vport)
    pkt = IP(bytes(IP(src="192.0.2.2", dst="192.0.2.11", options=[layer]) / TCP()))
    ihl = 5 + len(opt.pack_ipv4()) // 4
    assert pkt.ihl == ihl
    assert bytes(pkt)[20 : ihl * 4] == opt.pack_ipv4()
    dissected = pkt[scapy_toa.IPOption_TOA]
    ip = ipaddress.ip_address
    assert (ip(dissected.cip), dissected.cport, ip(dissected.vip), dissected.vport) == (
        opt.cip, opt.cport, opt.vip, opt.vport,
    )
    assert scapy_toa.extract(pkt) == (opt, "ipv4")


@pytest.mark.parametrize("v", [v for v in VECTORS["vectors"] if v["form"] == "ipv6"], ids=lambda v: v["name"])
def test_scapy_dstopt_layer_matches_vectors(v: dict) -> None:
    l4 = TCP() if v["nexthdr"] == 6 else UDP()
    layer = scapy_toa.DestOpt_TOA(cip=v["cip"], cport=v["cport"], vip=v["vip"], vport=v["vport"])
    raw = bytes(IPv6(src="2001:db8:5::2", dst="2001:db8:5::11") / IPv6ExtHdrDestOpt(options=[layer]) / l4)
    assert raw[6] == wire.IPV6_HEADER_DST
    assert raw[40 : 40 + len(bytes.fromhex(v["hex"]))] == bytes.fromhex(v["hex"])
    pkt = IPv6(raw)
    shown = pkt.show(dump=True)
    for name in ("cport", "vport", "cip", "vip"):
        assert name in shown
    assert scapy_toa.extract(pkt) == (_opt(v), "ipv6")


def test_extract_reports_a_forged_option() -> None:
    forged = bytes(IP(options=[scapy_toa.IPOption_TOA(cip="10.0.0.1", vip="10.0.0.2", operation=1)]) / UDP())
    with pytest.raises(wire.WireError, match="operation"):
        scapy_toa.extract(IP(forged))


def test_packet_without_option() -> None:
    assert scapy_toa.extract(IP() / TCP()) is None
    assert scapy_toa.extract(IPv6() / UDP()) is None
