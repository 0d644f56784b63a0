"""bpf/gwping.c under BPF_PROG_TEST_RUN: every branch, bytes and checksums.

Each test loads the real object into the running kernel (bpf/build/
xdp_test_run), runs scapy-built frames through it and checks the action, the
bytes that come out, that the TCP checksum verifies by full recomputation and
which counter moved.  The port of the test run (ingress: lo, ifindex 1, as
BPF_PROG_TEST_RUN reports it) is configured to forward to ifindex EGRESS.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption
from scapy.layers.inet6 import (
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from lab import bpf
from lab.checksum import ones_sum
from lab.gwping import (
    BPF_PROG,
    CLASS_COUNTERS,
    COUNTERS,
    COUNTERS_MAP,
    FWD_COUNTERS,
    MAGIC,
    MAGIC_PASS,
    PORTS_MAP,
    GwPort,
    seed_csum_fix,
    tcp_checksum_expected,
)

pytestmark = pytest.mark.bpf

IN_IFINDEX = 1  # BPF_PROG_TEST_RUN runs on the loopback device of the namespace
EGRESS = 7
SRC_MAC = bytes.fromhex("02aa00000001")
DST_MAC = bytes.fromhex("02bb00000002")
PORT = GwPort(EGRESS, SRC_MAC, DST_MAC)
LE_MAGIC = int.from_bytes(MAGIC.to_bytes(4, "big"), "little")  # 0xefbeadde: the byte-order trap

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@pytest.fixture(scope="module")
def obj() -> Path:
    return bpf.obj_path("gwping")


def run(
    obj: Path, frames: list[bytes], port: GwPort | None = PORT, repeat: int = 1
) -> tuple[list[bpf.XdpResult], dict[str, int]]:
    updates = [bpf.MapUpdate(PORTS_MAP, GwPort.key(IN_IFINDEX), port.pack())] if port else []
    res = bpf.run_xdp_many(obj, BPF_PROG, frames, repeat, map_updates=updates, dump_maps=[COUNTERS_MAP])
    raw = res[0].counters(COUNTERS_MAP)
    return res, {name: raw.get(i, 0) for i, name in enumerate(COUNTERS)}


def v4(tsval: int | None = MAGIC, flags: str = "S", options: list | None = None, **tcp) -> bytes:
    if options is None:
        options = [("Timestamp", (tsval, 0))] if tsval is not None else []
    return bytes(
        ETH
        / IP(src="192.0.2.1", dst="198.51.100.7", id=1)
        / TCP(sport=40000, dport=80, seq=1234567, flags=flags, options=options, **tcp)
    )


def v6(tsval: int | None = MAGIC, flags: str = "S", options: list | None = None, ext=None) -> bytes:
    if options is None:
        options = [("Timestamp", (tsval, 0))] if tsval is not None else []
    ip = IPv6(src="2001:db8::1", dst="2001:db8:1::7")
    if ext is not None:
        ip = ip / ext
    return bytes(ETH / ip / TCP(sport=40000, dport=443, seq=7, flags=flags, options=options))


def ts_offset(frame: bytes) -> int:
    """Offset of the TSval in the frame, found by the test's own option walk."""
    pkt = Ether(frame)
    tcp = pkt[TCP]
    start = len(frame) - len(bytes(tcp))
    opts = bytes(tcp)[20 : tcp.dataofs * 4]
    i = 0
    while i < len(opts):
        if opts[i] == 0:
            break
        if opts[i] == 1:
            i += 1
            continue
        if opts[i] == 8:
            return start + 20 + i + 2
        i += opts[i + 1]
    raise AssertionError("no Timestamps option")


def csum_offset(frame: bytes) -> int:
    tcp = Ether(frame)[TCP]
    return len(frame) - len(bytes(tcp)) + 16


def forwarded(frame: bytes) -> bytes:
    """What the data plane sends on: the MACs of the port, the TTL / hop limit
    one less (IPv4's header checksum computed afresh here), nothing else."""
    out = bytearray(DST_MAC + SRC_MAC + frame[12:])
    l3 = 12
    while out[l3 : l3 + 2] in (b"\x81\x00", b"\x88\xa8"):
        l3 += 4
    l3 += 2
    if out[l3] >> 4 == 4:
        ihl = (out[l3] & 0xF) * 4
        out[l3 + 8] -= 1
        out[l3 + 10 : l3 + 12] = b"\0\0"
        out[l3 + 10 : l3 + 12] = (0xFFFF - ones_sum(bytes(out[l3 : l3 + ihl]))).to_bytes(2, "big")
    else:
        out[l3 + 7] -= 1
    return bytes(out)


def pinged(frame: bytes) -> bytes:
    """The seed's change: first TSval wire byte - 1, checksum + 0x0100 (e.a.c.)."""
    out = bytearray(forwarded(frame))
    t, c = ts_offset(frame), csum_offset(frame)
    assert out[t : t + 4] == MAGIC.to_bytes(4, "big")
    out[t] -= 1
    delta = 0x0001 if (t - (c - 16)) % 2 else 0x0100  # TSval at an odd offset: low byte
    out[c : c + 2] = seed_csum_fix(int.from_bytes(out[c : c + 2], "big"), delta).to_bytes(2, "big")
    return bytes(out)


def assert_csum_canonical(frame: bytes) -> None:
    found, canonical = tcp_checksum_expected(frame)
    assert found == 0xFFFF, f"TCP checksum does not verify (sum {found:#06x})"
    stored = int.from_bytes(frame[csum_offset(frame) : csum_offset(frame) + 2], "big")
    assert stored == canonical, f"checksum {stored:#06x}, a full recomputation gives {canonical:#06x}"


def only(counters: dict[str, int], **expected: int) -> None:
    want = {name: expected.get(name, 0) for name in COUNTERS}
    assert counters == want


# -- the three branches of the seed ---------------------------------------------------


def test_magic_is_decremented_and_forwarded(obj: Path) -> None:
    frame = v4(MAGIC)
    (r,), cnt = run(obj, [frame])
    assert r.action == "XDP_REDIRECT"
    t = ts_offset(frame)
    assert frame[t : t + 4] == bytes.fromhex("deadbeef")
    assert r.data_out[t : t + 4] == bytes.fromhex("ddadbeef")
    assert r.data_out == pinged(frame)
    # only MACs, the hop (TTL and IPv4 header checksum), the TSval's first byte and the checksum differ
    diff = [i for i in range(len(frame)) if frame[i] != r.data_out[i]]
    c = csum_offset(frame)
    assert set(diff) <= set(range(12)) | {14 + 8, 14 + 10, 14 + 11} | {t, c, c + 1}
    assert t in diff
    assert_csum_canonical(r.data_out)
    only(cnt, ping_fwd=1, fwd_redirect=1)


def test_magic_pass_goes_to_the_kernel_untouched(obj: Path) -> None:
    frame = v4(MAGIC_PASS)
    (r,), cnt = run(obj, [frame])
    assert r.action == "XDP_PASS"
    assert r.data_out == frame
    only(cnt, ping_pass=1)


@pytest.mark.parametrize(
    "tsval",
    [MAGIC - 1, MAGIC + 1, MAGIC_PASS - 1, LE_MAGIC, 0, 0xFFFFFFFF, 0x00ADBEEF, 0xDEADBEEE],
    ids=hex,
)
def test_other_tsval_is_forwarded_untouched(obj: Path, tsval: int) -> None:
    frame = v4(tsval)
    (r,), cnt = run(obj, [frame])
    assert r.action == "XDP_REDIRECT"
    assert r.data_out == forwarded(frame)
    only(cnt, syn_ts_other=1, fwd_redirect=1)


def test_magic_in_tsecr_is_not_a_ping(obj: Path) -> None:
    frame = v4(options=[("Timestamp", (1, MAGIC))])
    (r,), cnt = run(obj, [frame])
    assert r.data_out == forwarded(frame)
    only(cnt, syn_ts_other=1, fwd_redirect=1)


@pytest.mark.parametrize("flags", ["SA", "A", "R", "RA", "SF", "SR", "PA", ""])
def test_not_a_pure_syn_is_untouched(obj: Path, flags: str) -> None:
    frame = v4(MAGIC, flags=flags)
    (r,), cnt = run(obj, [frame])
    assert r.action == "XDP_REDIRECT"
    assert r.data_out == forwarded(frame)
    only(cnt, tcp_not_syn=1, fwd_redirect=1)


# -- option walking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        [("MSS", 1460)],
        [("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)],
        [],
        # MAGIC's bytes where the seed looks (options + 2), but in another option
        [(254, b"\xde\xad\xbe\xef\x00\x00\x00\x00")],
        # after EOL nothing counts
        [("EOL", None), ("NOP", None), ("Timestamp", (MAGIC, 0))],
    ],
    ids=["mss", "linux-no-ts", "none", "magic-bytes-in-exp-option", "after-eol"],
)
def test_syn_without_timestamps_is_untouched(obj: Path, options: list) -> None:
    frame = v4(options=options)
    (r,), cnt = run(obj, [frame])
    assert r.action == "XDP_REDIRECT"
    assert r.data_out == forwarded(frame)
    only(cnt, syn_no_ts=1, fwd_redirect=1)


@pytest.mark.parametrize(
    "options",
    [
        [("NOP", None), ("NOP", None), ("Timestamp", (MAGIC, 0))],
        # Linux's own SYN layout: MSS, SACK_PERM, TS, NOP, WS
        [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (MAGIC, 0)), ("NOP", None), ("WScale", 7)],
        [("MSS", 1460), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (MAGIC, 99))],
        # the latest place it fits: 30 NOPs, then TS, 40 bytes of options
        [("NOP", None)] * 30 + [("Timestamp", (MAGIC, 0))],
        # an unknown option of maximal size before it
        [(253, bytes(26)), ("Timestamp", (MAGIC, 0))],
    ],
    ids=["nop-nop-ts", "linux-layout", "ts-last", "30-nops", "big-unknown-first"],
)
def test_timestamps_not_first_is_found(obj: Path, options: list) -> None:
    frame = v4(options=options)
    (r,), cnt = run(obj, [frame])
    assert r.action == "XDP_REDIRECT"
    assert r.data_out == pinged(frame)
    assert_csum_canonical(r.data_out)
    only(cnt, ping_fwd=1, fwd_redirect=1)


def test_magic_pass_not_first_is_passed(obj: Path) -> None:
    frame = v4(options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (MAGIC_PASS, 0))])
    (r,), cnt = run(obj, [frame])
    assert (r.action, r.data_out) == ("XDP_PASS", frame)
    only(cnt, ping_pass=1)


def _with_raw_options(raw: bytes) -> bytes:
    """A SYN whose options are exactly RAW (padded with EOL), checksum fixed."""
    pad = raw + b"\0" * (-len(raw) % 4)
    return bytes(
        ETH
        / IP(src="192.0.2.1", dst="198.51.100.7")
        / TCP(sport=1, dport=2, flags="S", dataofs=5 + len(pad) // 4)
        / pad
    )


@pytest.mark.parametrize(
    "raw",
    [
        bytes([8, 11]) + MAGIC.to_bytes(4, "big") + bytes(5),  # wrong length
        bytes([8, 9]) + MAGIC.to_bytes(4, "big") + bytes(3),
        bytes([2, 0]) + bytes([8, 10]) + MAGIC.to_bytes(4, "big") + bytes(4),  # len 0 first
        bytes([2, 1]) + bytes([8, 10]) + MAGIC.to_bytes(4, "big") + bytes(4),  # len 1 first
        bytes([2, 40]) + bytes([8, 10]) + MAGIC.to_bytes(4, "big") + bytes(4),  # past the header
        bytes([1, 1, 8, 10]) + MAGIC.to_bytes(4, "big"),  # runs past the header's end
    ],
    ids=["len11", "len9", "len0-before", "len1-before", "len-overrun-before", "ts-past-doff"],
)
def test_malformed_options_are_not_a_ping(obj: Path, raw: bytes) -> None:
    frame = _with_raw_options(raw)
    (r,), cnt = run(obj, [frame])
    assert r.data_out == forwarded(frame)
    only(cnt, syn_no_ts=1, fwd_redirect=1)


# -- truncation -----------------------------------------------------------------------------


def test_truncated_inside_the_timestamps_option(obj: Path) -> None:
    whole = v4(MAGIC)
    t = ts_offset(whole)
    frames = [whole[:n] for n in (t - 2, t, t + 1, t + 3, t + 4, t + 8, len(whole) - 1)]
    res, cnt = run(obj, frames)
    for f, r in zip(frames, res, strict=True):
        assert r.action == "XDP_REDIRECT"
        assert r.data_out == forwarded(f), f"cut at {len(f)}"
    only(cnt, tcp_trunc=len(frames), fwd_redirect=len(frames))


def test_truncated_tcp_header(obj: Path) -> None:
    whole = v4(MAGIC)
    frames = [whole[: 34 + n] for n in (0, 1, 12, 19)]
    res, cnt = run(obj, frames)
    assert [r.data_out for r in res] == [forwarded(f) for f in frames]
    only(cnt, tcp_trunc=4, fwd_redirect=4)


def test_truncated_or_invalid_ip_and_ethernet_are_dropped(obj: Path) -> None:
    whole = v4(MAGIC)
    bad_version = bytearray(whole)
    bad_version[14] = 0x55  # version 5, ihl 5
    short_ihl = bytearray(whole)
    short_ihl[14] = 0x44
    long_ihl = bytearray(whole)
    long_ihl[14] = 0x4F  # 60-byte header claimed, 58 bytes of packet after eth
    # BPF_PROG_TEST_RUN refuses XDP packets shorter than an Ethernet header
    frames = [whole[:14], whole[:15], whole[:33], bytes(bad_version), bytes(short_ihl), bytes(long_ihl)[:60]]
    res, cnt = run(obj, frames)
    assert [r.action for r in res] == ["XDP_DROP"] * len(frames)
    assert [r.data_out for r in res] == frames
    only(cnt, malformed=len(frames))


def test_ipv6_truncated(obj: Path) -> None:
    whole = v6(MAGIC)
    assert len(whole) == 14 + 40 + 32
    ip_cut = [whole[:14], whole[:40], whole[:53]]
    tcp_cut = [whole[:54], whole[: 54 + 19], whole[: 54 + 25], whole[:-1]]
    res, cnt = run(obj, ip_cut + tcp_cut)
    assert [r.action for r in res] == ["XDP_DROP"] * 3 + ["XDP_REDIRECT"] * 4
    assert [r.data_out for r in res[3:]] == [forwarded(f) for f in tcp_cut]
    only(cnt, malformed=3, tcp_trunc=4, fwd_redirect=4)


# -- IPv6 ------------------------------------------------------------------------------


def test_ipv6_magic(obj: Path) -> None:
    frame = v6(MAGIC)
    (r,), cnt = run(obj, [frame])
    assert r.action == "XDP_REDIRECT"
    assert r.data_out == pinged(frame)
    assert_csum_canonical(r.data_out)
    only(cnt, ping_fwd=1, fwd_redirect=1)


def test_ipv6_magic_pass(obj: Path) -> None:
    frame = v6(MAGIC_PASS, options=[("MSS", 1440), ("Timestamp", (MAGIC_PASS, 0))])
    (r,), cnt = run(obj, [frame])
    assert (r.action, r.data_out) == ("XDP_PASS", frame)
    only(cnt, ping_pass=1)


def test_ipv6_other_tsval_and_not_syn(obj: Path) -> None:
    frames = [v6(LE_MAGIC), v6(MAGIC, flags="SA"), v6(None)]
    res, cnt = run(obj, frames)
    assert [r.data_out for r in res] == [forwarded(f) for f in frames]
    only(cnt, syn_ts_other=1, tcp_not_syn=1, syn_no_ts=1, fwd_redirect=3)


def test_ipv6_extension_headers_are_walked(obj: Path) -> None:
    frame = v6(MAGIC, ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt())
    (r,), cnt = run(obj, [frame])
    assert r.data_out == pinged(frame)
    # scapy recomputes the checksum of the packet it parses: it must match
    assert Ether(r.data_out)[TCP].chksum == TCP(bytes(Ether(r.data_out)[TCP]))[TCP].chksum
    pkt = Ether(r.data_out)
    stored = pkt[TCP].chksum
    del pkt[TCP].chksum
    assert Ether(bytes(pkt))[TCP].chksum == stored
    only(cnt, ping_fwd=1, fwd_redirect=1)


def test_ipv6_fragment_is_not_tcp(obj: Path) -> None:
    frames = [
        v6(MAGIC, ext=IPv6ExtHdrFragment(offset=0, m=1)),
        v6(MAGIC, ext=IPv6ExtHdrFragment(offset=3, m=0)),
    ]
    res, cnt = run(obj, frames)
    assert [r.data_out for r in res] == [forwarded(f) for f in frames]
    only(cnt, not_tcp=2, fwd_redirect=2)


def test_ipv6_neighbour_discovery_goes_to_the_kernel(obj: Path) -> None:
    frame = bytes(ETH / IPv6(src="fe80::1", dst="ff02::1:ff00:7") / ICMPv6ND_NS(tgt="2001:db8::7"))
    (r,), cnt = run(obj, [frame])
    assert (r.action, r.data_out) == ("XDP_PASS", frame)
    only(cnt, ctrl_pass=1)


# -- the rest of the data plane ------------------------------------------------------------


def test_ipv4_fragment_and_udp_are_forwarded(obj: Path) -> None:
    frag = bytes(
        ETH
        / IP(src="192.0.2.1", dst="198.51.100.7", flags="MF")
        / TCP(flags="S", options=[("Timestamp", (MAGIC, 0))])
    )
    udp = bytes(ETH / IP(src="192.0.2.1", dst="198.51.100.7") / UDP(sport=1, dport=2) / b"x")
    res, cnt = run(obj, [frag, udp])
    assert [r.data_out for r in res] == [forwarded(frag), forwarded(udp)]
    only(cnt, not_tcp=2, fwd_redirect=2)


def test_arp_goes_to_the_kernel(obj: Path) -> None:
    frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ARP(pdst="192.0.2.9"))
    (r,), cnt = run(obj, [frame])
    assert (r.action, r.data_out) == ("XDP_PASS", frame)
    only(cnt, not_ip=1)


def test_ipv4_options_are_skipped(obj: Path) -> None:
    # the TOA option of this project (type 31, 16 bytes) on a ping SYN
    toa = (
        bytes([31, 16, 0, 0])
        + (1234).to_bytes(2, "big")
        + (80).to_bytes(2, "big")
        + bytes([198, 51, 100, 1, 203, 0, 113, 10])
    )
    frame = bytes(
        ETH
        / IP(src="192.0.2.1", dst="198.51.100.7", options=IPOption(toa))
        / TCP(flags="S", options=[("Timestamp", (MAGIC, 0))])
    )
    assert frame[14] == 0x49  # ihl 9
    (r,), cnt = run(obj, [frame])
    assert r.data_out == pinged(frame)
    assert_csum_canonical(r.data_out)
    only(cnt, ping_fwd=1, fwd_redirect=1)


def test_vlan_tagged_ping(obj: Path) -> None:
    frame = bytes(
        ETH
        / Dot1Q(vlan=5)
        / IP(src="192.0.2.1", dst="198.51.100.7")
        / TCP(flags="S", options=[("Timestamp", (MAGIC, 0))])
    )
    (r,), cnt = run(obj, [frame])
    assert r.data_out == pinged(frame)
    only(cnt, ping_fwd=1, fwd_redirect=1)


def test_one_armed_port_uses_xdp_tx(obj: Path) -> None:
    frames = [v4(MAGIC), v4(None)]
    res, cnt = run(obj, frames, port=GwPort(IN_IFINDEX, SRC_MAC, DST_MAC))
    assert [r.action for r in res] == ["XDP_TX", "XDP_TX"]
    assert res[0].data_out == pinged(frames[0])
    assert res[1].data_out == forwarded(frames[1])
    only(cnt, ping_fwd=1, syn_no_ts=1, fwd_tx=2)


def test_unconfigured_port_hands_everything_to_the_kernel(obj: Path) -> None:
    frames = [v4(MAGIC), v4(None)]
    res, cnt = run(obj, frames, port=None)
    assert [r.action for r in res] == ["XDP_PASS", "XDP_PASS"]
    # the ping logic still ran: the kernel sees the decremented magic
    assert res[0].data_out[ts_offset(frames[0])] == 0xDD
    assert res[1].data_out == frames[1]
    only(cnt, ping_fwd=1, syn_no_ts=1, fwd_nocfg=2)


def test_counters_count_every_run(obj: Path) -> None:
    res, cnt = run(obj, [v4(0x12345678)], repeat=5)
    assert res[0].repeat == 5
    only(cnt, syn_ts_other=5, fwd_redirect=5)


def test_a_second_gateway_passes_what_the_first_forwarded(obj: Path) -> None:
    # BPF_PROG_TEST_RUN repeats on the same buffer: run 1 decrements MAGIC,
    # runs 2 and 3 see MAGIC_PASS -- a ping that crossed a gateway reaches
    # the kernel of the next data plane, and is not decremented twice.
    frame = v4(MAGIC)
    (r,), cnt = run(obj, [frame], repeat=3)
    assert r.action == "XDP_PASS"
    assert r.data_out == pinged(frame)
    only(cnt, ping_fwd=1, fwd_redirect=1, ping_pass=2)


def test_counter_names_match_the_header() -> None:
    hdr = (Path(bpf.BPF_DIR) / "include" / "gwping.h").read_text()
    enum = hdr[hdr.index("enum gw_counter {") : hdr.index("GW_CNT_MAX")]
    names = [
        w.split("GW_CNT_")[1].split()[0].rstrip(",").split("=")[0].strip().lower()
        for w in enum.splitlines()
        if "GW_CNT_" in w
    ]
    assert tuple(names) == COUNTERS
    assert set(CLASS_COUNTERS) | set(FWD_COUNTERS) == set(COUNTERS)


# -- checksum arithmetic on the wire ----------------------------------------------------------


def _magic_frame_with_checksum(target: int, version: int = 4) -> bytes:
    """A MAGIC ping whose TCP checksum is TARGET (canonical), by choosing the
    window so that the sum comes out right."""
    base = v4(MAGIC, window=0) if version == 4 else None
    assert base is not None
    c = csum_offset(base)
    wnd = c - 2  # window precedes the checksum
    zero = bytearray(base)
    zero[c : c + 2] = b"\0\0"
    found, _ = tcp_checksum_expected(bytes(zero))  # sum with window 0, checksum 0
    # need found (+) window == ~target in one's complement
    need = (~target) & 0xFFFF
    w = need + ((~found) & 0xFFFF)
    w = (w & 0xFFFF) + (w >> 16)
    w = (w & 0xFFFF) + (w >> 16)
    out = bytearray(base)
    out[wnd : wnd + 2] = w.to_bytes(2, "big")
    out[c : c + 2] = target.to_bytes(2, "big")
    return bytes(out)


EDGE_CHECKSUMS = [0x0000, 0x0001, 0x00FF, 0x0100, 0x7FFF, 0xFEFE, 0xFEFF, 0xFF00, 0xFF01, 0xFFFE]


def test_checksum_edges(obj: Path) -> None:
    frames = []
    for target in EDGE_CHECKSUMS:
        f = _magic_frame_with_checksum(target)
        found, canonical = tcp_checksum_expected(f)
        if found != 0xFFFF or canonical != target:
            continue  # target not reachable as a canonical checksum of this packet
        frames.append(f)
    # 0xffff is -0: not what a sender computes, but valid; the carry folds it
    zero = _magic_frame_with_checksum(0x0000)
    c = csum_offset(zero)
    frames.append(zero[:c] + b"\xff\xff" + zero[c + 2 :])
    assert len(frames) >= len(EDGE_CHECKSUMS) - 1, "could not build the edge cases"
    res, cnt = run(obj, frames)
    for f, r in zip(frames, res, strict=True):
        cin = int.from_bytes(f[c : c + 2], "big")
        cout = int.from_bytes(r.data_out[c : c + 2], "big")
        assert r.data_out == pinged(f), f"checksum in {cin:#06x}"
        assert_csum_canonical(r.data_out)
        assert cout == seed_csum_fix(cin)
    # the e.a.c. cases really happened: 0xfeff -> 0x0000, 0xff00 -> 0x0001
    outs = {
        int.from_bytes(f[c : c + 2], "big"): int.from_bytes(r.data_out[c : c + 2], "big")
        for f, r in zip(frames, res, strict=True)
    }
    assert outs[0xFEFF] == 0x0000
    assert outs[0xFF00] == 0x0001
    assert outs[0xFFFE] == 0x00FF
    only(cnt, ping_fwd=len(frames), fwd_redirect=len(frames))


_OPT = st.sampled_from([("NOP", None), ("MSS", 1460), ("WScale", 7), ("SAckOK", b""), (253, b"\x01\x02")])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(_OPT, max_size=6),
    after=st.lists(_OPT, max_size=3),
    tsval=st.sampled_from([MAGIC, MAGIC_PASS, LE_MAGIC]) | st.integers(0, 0xFFFFFFFF),
    seed=st.integers(0, 2**32 - 1),
    version=st.sampled_from([4, 6]),
)
def test_random_syns_agree_with_the_model(
    obj: Path, before: list, after: list, tsval: int, seed: int, version: int
) -> None:
    rnd = random.Random(seed)
    options = [*before, ("Timestamp", (tsval, rnd.getrandbits(32))), *after]
    tcp = TCP(
        sport=rnd.randrange(1, 65536),
        dport=rnd.randrange(1, 65536),
        seq=rnd.getrandbits(32),
        window=rnd.getrandbits(16),
        flags="S",
        options=options,
    )
    if version == 4:
        ip = IP(src=f"10.{rnd.randrange(256)}.0.1", dst=f"10.0.{rnd.randrange(256)}.2")
    else:
        ip = IPv6(src=f"2001:db8::{rnd.randrange(65536):x}", dst="2001:db8:1::2")
    frame = bytes(ETH / ip / tcp / bytes(rnd.randrange(0, 20)))
    if len(bytes(tcp)) - len(tcp.payload) > 60:
        return  # options longer than 40 bytes: scapy would write a bogus doff
    (r,), cnt = run(obj, [frame])
    if tsval == MAGIC:
        assert (r.action, r.data_out) == ("XDP_REDIRECT", pinged(frame))
        assert_csum_canonical(r.data_out)
        only(cnt, ping_fwd=1, fwd_redirect=1)
    elif tsval == MAGIC_PASS:
        assert (r.action, r.data_out) == ("XDP_PASS", frame)
        only(cnt, ping_pass=1)
    else:
        assert (r.action, r.data_out) == ("XDP_REDIRECT", forwarded(frame))
        only(cnt, syn_ts_other=1, fwd_redirect=1)


def test_program_passes_the_verifier_with_headroom(obj: Path) -> None:
    info = bpf.load_check(obj, BPF_PROG)
    assert info.xlated_insns > 100
    # 1M is the verifier's budget; stay far below it for older kernels (6.1)
    assert info.verified_insns < 100_000, info


@pytest.mark.parametrize("family", [4, 6])
def test_the_gateway_is_a_hop(obj: Path, family: int) -> None:
    """TTL / hop limit one less on everything forwarded (ping or not); a packet it
    would bring to 0 is dropped and counted, so that a loop through gateways ends."""

    def frame(ttl: int, tsval: int | None) -> bytes:
        opts = [("Timestamp", (tsval, 0))] if tsval is not None else []
        ip = (
            IP(src="192.0.2.1", dst="198.51.100.7", ttl=ttl)
            if family == 4
            else IPv6(src="2001:db8::1", dst="2001:db8:1::7", hlim=ttl)
        )
        return bytes(ETH / ip / TCP(sport=40000, dport=80, flags="S", options=opts))

    frames = [frame(2, MAGIC), frame(2, None), frame(1, MAGIC), frame(1, None), frame(0, None)]
    res, cnt = run(obj, frames)
    assert [r.action for r in res] == ["XDP_REDIRECT"] * 2 + ["XDP_DROP"] * 3
    assert res[0].data_out == pinged(frames[0]) and res[1].data_out == forwarded(frames[1])
    ip = Ether(res[1].data_out).payload
    assert (ip.ttl if family == 4 else ip.hlim) == 1
    assert cnt["fwd_ttl"] == 3 and cnt["fwd_redirect"] == 2
