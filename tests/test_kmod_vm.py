"""toa.ko / uoa.ko in each kernel of the axis (6.1: make test; 6.12: make test-extended), in a guest.

One guest boot for the whole module: fullnat-4to4 and fullnat-6to6 are built
in it side by side; the lb node plays the L7 load balancer (set_ip_opt on its
socket) and rs1 the real server running the example programs.  The modules
are per kernel: they are loaded in the guest's root namespace and every
namespace sees them (and /proc/net/*_stats).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import unsupported

from lab import fuzz, kmod, topology, traffic
from lab.errors import LabError
from lab.net import Lab
from lab.vm.session import VMSession

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parent.parent
TOPO4 = ROOT / "topologies" / "fullnat-4to4.yaml"
TOPO6 = ROOT / "topologies" / "fullnat-6to6.yaml"

RS = {4: "192.0.2.11", 6: "2001:db8:5::11"}  # rs1 on the RS side of each lab
OPT = {4: ("10.0.0.1:1", "10.0.0.2:2"), 6: ("[2001:db8::1]:1", "[2001:db8::2]:2")}
CIP = {4: "10.0.0.1", 6: "2001:db8::1"}
VIP = {4: "10.0.0.2", 6: "2001:db8::2"}
TCP_PORT = 8080
UDP_PORT = 9000

# the seed's option for 10.0.0.1:1 -> 10.0.0.2:2, IPv4 (type 31, length 16, operation 0)
OPT44 = "1f100000" "00010002" "0a000001" "0a000002"  # fmt: skip


def ep(family: int, addr: str, port: int) -> dict[str, Any]:
    return {"family": f"ipv{family}", "addr": addr, "port": port}


def expect(what: str, seen: object, want: object) -> None:
    assert seen == want, f"{what}: expected {want!r}, saw {seen!r}"


@dataclass
class Rig:
    vm: VMSession
    art: kmod.Artifacts
    labs: dict[int, Lab]  # outer family -> lab
    log_mark: int = 0  # the kernel log before the modules: what came later is theirs to answer for

    def ensure(self, *, toa: bool, uoa: bool) -> None:
        """Load or unload the modules so that exactly the wanted ones are in."""
        have = kmod.loaded(self.vm)
        for name, want in (("toa", toa), ("uoa", uoa)):
            if want and name not in have:
                kmod.load(self.vm, name, self.art)
            elif not want and name in have:
                kmod.unload(self.vm, name)
        expect("loaded modules", kmod.loaded(self.vm), {n for n, w in (("toa", toa), ("uoa", uoa)) if w})

    def quiet_toa(self, timeout: float = 10.0) -> dict[str, int]:
        """toa stats once no socket holds an entry (the last test's sockets are gone)."""
        deadline = time.monotonic() + timeout
        while True:
            st = kmod.stats(self.vm, "toa")
            if st.get("entries") == 0 or time.monotonic() > deadline:
                expect("toa entries before the test", st.get("entries"), 0)
                return st
            time.sleep(0.1)

    def tcp(self, outer: int, clients: list[traffic.Client], **kw: Any) -> list[traffic.Exchange]:
        return traffic.exchanges(self.labs[outer], "tcp", "rs1", "lb", RS[outer], TCP_PORT, clients,
                              artifacts=self.art, **kw)  # fmt: skip

    def udp(self, outer: int, clients: list[traffic.Client], **kw: Any) -> list[traffic.Exchange]:
        clients = [traffic.Client(c.opt, c.raw_opt, ("--once", *c.extra)) for c in clients]
        return traffic.exchanges(self.labs[outer], "udp", "rs1", "lb", RS[outer], UDP_PORT, clients,
                              artifacts=self.art, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def rig(kernel: str) -> Iterator[Rig]:
    """One guest per kernel of the axis (tests/conftest.py: --kernels)."""
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root (9p export of /, namespaces in the guest)")
    art = kmod.build(kernel)
    tag = os.getpid() % 100000
    with VMSession(kernel=kernel, progress=None) as vm:
        expect("guest kernel vs the one the modules were built for", vm.release, art.release)
        vm.provide(art.files())
        with (
            vm.lab(topology.load(TOPO4), name=f"km4-{tag}") as lab4,
            vm.lab(topology.load(TOPO6), name=f"km6-{tag}") as lab6,
        ):
            rig = Rig(vm, art, {4: lab4, 6: lab6}, kmod.dmesg_mark(vm))
            try:
                rig.ensure(toa=True, uoa=True)
            except kmod.Unsupported as e:
                unsupported(kernel, e)
            yield rig


def real(ex: traffic.Exchange) -> dict[str, Any]:
    """The client's real address: what its own getsockname said after connect."""
    return ex.client_event("connect")["sock"]


# -- the seed's demo ---------------------------------------------------------------------------
def test_seed_demo_across_namespaces(rig: Rig) -> None:
    """lb: set_ip_opt(10.0.0.1:1 -> 10.0.0.2:2), connect to rs1; rs1's server prints them."""
    rig.ensure(toa=True, uoa=True)
    ex = rig.tcp(4, [traffic.Client(opt=("10.0.0.1:1", "10.0.0.2:2"))])[0]
    expect("client set_ip_opt", ex.client_event("set_ip_opt")["ok"], True)
    expect("client connected to rs1", ex.client_event("connect")["peer"], ep(4, RS[4], TCP_PORT))
    ev = ex.event
    expect("server getpeername", ev["peer"], ep(4, "10.0.0.1", 1))
    expect("server getsockname", ev["sock"], ep(4, "10.0.0.2", 2))
    expect("server accept() address", ev["accept"], ep(4, "10.0.0.1", 1))
    expect("server TOA_SO_GET_LOOKUP", ev["lookup"],
           {"client": ep(4, "10.0.0.1", 1), "vip": ep(4, "10.0.0.2", 2)})  # fmt: skip
    assert real(ex)["addr"] != "10.0.0.1", f"the client really is {real(ex)}, not 10.0.0.1"


# -- every outer x inner x protocol ----------------------------------------------------------
def _tcp_view(outer: int, inner: int, addr: str, port: int) -> tuple[dict[str, Any], int]:
    """What getpeername/getsockname return on the RS for an inner address, and its length."""
    if outer == 4 and inner == 4:
        return ep(4, addr, port), 16
    if inner == 6:
        return ep(6, addr, port), 28
    return ep(6, f"::ffff:{addr}", port), 28  # IPv4 inside an IPv6 socket: v4-mapped


COMBOS = [(p, o, i) for p in ("tcp", "udp") for o in (4, 6) for i in (4, 6)]


@pytest.mark.parametrize(("proto", "outer", "inner"), COMBOS,
                         ids=[f"{p}-outer{o}-inner{i}" for p, o, i in COMBOS])  # fmt: skip
def test_family_combination(rig: Rig, proto: str, outer: int, inner: int) -> None:
    rig.ensure(toa=True, uoa=True)
    mod = "toa" if proto == "tcp" else "uoa"
    before = kmod.stats(rig.vm, mod)
    client = traffic.Client(opt=OPT[inner])
    ex = (rig.tcp if proto == "tcp" else rig.udp)(outer, [client])[0]
    after = kmod.stats(rig.vm, mod)
    ev = ex.event
    lookup = {"client": ep(inner, CIP[inner], 1), "vip": ep(inner, VIP[inner], 2)}
    if proto == "tcp" and (outer, inner) == (4, 6):
        # 6to4 on an IPv4-only socket: the names stay the real ones (an IPv6
        # address does not fit a sockaddr_in); the lookup gives the client
        expect("getpeername (the real peer, 16 bytes)", (ev["peer"], ev["peer_len"]), (real(ex), 16))
        expect("getsockname (rs1 itself)", (ev["sock"], ev["sock_len"]), (ep(4, RS[4], TCP_PORT), 16))
        expect("accept() address", (ev["accept"], ev["accept_len"]), (real(ex), 16))
        expect("TOA_SO_GET_LOOKUP", (ev["lookup"], ev["lookup_error"]), (lookup, None))
        expect("toa getname_6to4_kept delta", after["getname_6to4_kept"] - before["getname_6to4_kept"], 3)
    elif proto == "tcp":
        peer, plen = _tcp_view(outer, inner, CIP[inner], 1)
        sock, slen = _tcp_view(outer, inner, VIP[inner], 2)
        expect("getpeername", (ev["peer"], ev["peer_len"]), (peer, plen))
        expect("getsockname", (ev["sock"], ev["sock_len"]), (sock, slen))
        expect("accept() address", (ev["accept"], ev["accept_len"]), (peer, plen))
        expect("TOA_SO_GET_LOOKUP", (ev["lookup"], ev["lookup_error"]), (lookup, None))
    else:
        # UDP has no connection to rewrite: the datagram shows the LB, the lookup the client
        expect("recvfrom address (the LB, unchanged)", ev["peer"], real(ex))
        expect("datagram destination", ev["sock"], ep(outer, RS[outer], UDP_PORT))
        expect("UOA_SO_GET_LOOKUP", (ev["lookup"], ev["lookup_error"]), (lookup, None))
    key = f"parsed_v{outer}_in{inner}"
    expect(f"{mod} {key} delta", after[key] - before[key], 1)
    others = {k: after[k] - before[k] for k in after if k.startswith("parsed_") and k != key}
    expect(f"{mod} other parsed_* deltas", others, dict.fromkeys(others, 0))


@pytest.mark.parametrize("inner", [4, 6])
def test_ipv4_connection_on_a_dual_stack_listener(rig: Rig, inner: int) -> None:
    """An IPv4 connection to a server listening on :: (v4-mapped socket)."""
    rig.ensure(toa=True, uoa=True)
    ev = rig.tcp(4, [traffic.Client(opt=OPT[inner])], server_family="-6")[0].event
    peer = ep(6, CIP[6], 1) if inner == 6 else ep(6, f"::ffff:{CIP[4]}", 1)
    sock = ep(6, VIP[6], 2) if inner == 6 else ep(6, f"::ffff:{VIP[4]}", 2)
    expect("getpeername on a v4-mapped socket", (ev["peer"], ev["peer_len"]), (peer, 28))
    expect("getsockname on a v4-mapped socket", (ev["sock"], ev["sock_len"]), (sock, 28))
    ev = rig.udp(4, [traffic.Client(opt=OPT[inner])], server_family="-6")[0].event
    expect("UOA lookup on a dual-stack UDP socket", ev["lookup"],
           {"client": ep(inner, CIP[inner], 1), "vip": ep(inner, VIP[inner], 2)})  # fmt: skip


# -- without the modules ------------------------------------------------------------------------
@pytest.mark.parametrize("outer", [4, 6])
def test_without_the_modules_the_server_sees_the_real_addresses(rig: Rig, outer: int) -> None:
    rig.ensure(toa=False, uoa=False)
    try:
        ex = rig.tcp(outer, [traffic.Client(opt=OPT[outer])])[0]
        ev = ex.event
        expect("client set_ip_opt", ex.client_event("set_ip_opt")["ok"], True)
        expect("getpeername without toa (the LB)", ev["peer"], real(ex))
        expect("accept() without toa", ev["accept"], real(ex))
        expect("getsockname without toa (rs1 itself)", ev["sock"], ep(outer, RS[outer], TCP_PORT))
        expect("TOA lookup without toa", (ev["lookup"], ev["lookup_error"]), (None, "ENOPROTOOPT"))
        ex = rig.udp(outer, [traffic.Client(opt=OPT[outer])])[0]
        ev = ex.event
        expect("UDP source without uoa", ev["peer"], real(ex))
        expect("UOA lookup without uoa", (ev["lookup"], ev["lookup_error"]), (None, "ENOPROTOOPT"))
    finally:
        rig.ensure(toa=True, uoa=True)


# -- stats -------------------------------------------------------------------------------------
def test_stats_move_by_the_exact_deltas(rig: Rig) -> None:
    """A connection without the option, then one with it; a datagram without, one with."""
    rig.ensure(toa=True, uoa=True)
    t0 = rig.quiet_toa()
    plain, tagged = rig.tcp(4, [traffic.Client(), traffic.Client(opt=OPT[4])])
    expect("plain connection: getpeername", plain.event["peer"], real(plain))
    expect("plain connection: lookup", plain.event["lookup_error"], "ENOENT")
    expect("tagged connection: getpeername", tagged.event["peer"], ep(4, CIP[4], 1))
    t1 = rig.quiet_toa()  # both sockets closed: the entry is freed
    # getname: accept + getpeername + getsockname of the tagged socket are hits.  The
    # tagged client's own getsockname after connect is a miss if the server's child
    # (and so the entry) already exists by then: a race between the two CPUs.
    d = kmod.delta(t0, t1)
    miss = d.pop("getname_miss", 0)
    assert miss in (0, 1), f"expected getname_miss to move by 0 or 1 (the client's getsockname), saw {miss}"
    want = {
        "syn_recv_v4": 2, "missing": 1, "parsed_v4_in4": 1, "inserted": 1, "freed": 1,
        "getname_hit": 3, "lookup_hit": 1, "lookup_miss": 1,
    }  # fmt: skip
    expect("toa_stats deltas", d, want)

    u0 = kmod.stats(rig.vm, "uoa")
    plain, tagged = rig.udp(4, [traffic.Client(), traffic.Client(opt=OPT[4])])
    u1 = kmod.stats(rig.vm, "uoa")
    expect("plain datagram: lookup", plain.event["lookup_error"], "ENOENT")
    expect("tagged datagram: lookup client", tagged.event["lookup"]["client"], ep(4, CIP[4], 1))
    want = {"missing": 1, "parsed_v4_in4": 1, "inserted": 1, "entries": 1, "lookup_hit": 1, "lookup_miss": 1}
    expect("uoa_stats deltas", kmod.delta(u0, u1), want)


def test_uoa_entry_expires(rig: Rig) -> None:
    rig.ensure(toa=True, uoa=True)
    param = "/sys/module/uoa/parameters/uoa_map_timeout"
    rig.vm.sh(f"echo 1 > {param}", check=True)
    try:
        bind = ("--bind", "192.0.2.1:40000")  # the same flow both times
        first = rig.udp(4, [traffic.Client(opt=OPT[4], extra=bind)])[0].event
        expect("lookup while fresh", first["lookup"] and first["lookup"]["client"], ep(4, CIP[4], 1))
        time.sleep(2.5)
        u0 = kmod.stats(rig.vm, "uoa")
        second = rig.udp(4, [traffic.Client(extra=bind)])[0].event
        u1 = kmod.stats(rig.vm, "uoa")
        expect("lookup after uoa_map_timeout", (second["lookup"], second["lookup_error"]), (None, "ENOENT"))
        d = kmod.delta(u0, u1)
        expect("uoa lookup_miss after expiry", d.get("lookup_miss"), 1)
    finally:
        rig.vm.sh(f"echo 360 > {param}", check=True)


def test_a_live_udp_flow_keeps_its_mapping(rig: Rig) -> None:
    """The option on the first datagram only (as the LB sends it), then datagrams
    without it for three times uoa_map_timeout: every one of them still looks up
    the client, because each datagram of the flow keeps its entry alive."""
    rig.ensure(toa=True, uoa=True)
    param = "/sys/module/uoa/parameters/uoa_map_timeout"
    rig.vm.sh(f"echo 1 > {param}", check=True)
    lab, n = rig.labs[4], 8
    try:
        srv = lab.spawn("rs1", [rig.art.bin("udp_server"), "-4", "--json", "--count", str(n), str(UDP_PORT)])
        traffic.wait_for(srv, '"event":"listening"', 15.0, "udp_server on rs1")
        before = kmod.stats(rig.vm, "uoa")
        cli = [rig.art.bin("udp_client"), "--json", "--opt", *OPT[4], "--opt-pkts", "1", "--count", str(n),
               "--interval-ms", "450", RS[4], str(UDP_PORT)]  # fmt: skip
        lab.exec("lb", cli, timeout=60).check()
        expect("udp_server exit", srv.wait(15.0), 0)
        after = kmod.stats(rig.vm, "uoa")
    finally:
        rig.vm.sh(f"echo 360 > {param}", check=True)
    dgs = [e for e in traffic.events(srv.output()[0]) if e.get("event") == "datagram"]
    expect("datagrams received", len(dgs), n)
    expect("lookup errors over 3.2 s of a 1 s timeout", [e["lookup_error"] for e in dgs], [None] * n)
    expect("the last datagram's client", dgs[-1]["lookup"]["client"], ep(4, CIP[4], 1))
    d = kmod.delta(before, after)
    expect("option datagrams parsed / entries inserted", (d.get("parsed_v4_in4"), d.get("inserted")), (1, 1))
    assert d.get("kept_alive", 0) >= n - 1, f"kept_alive {d.get('kept_alive')}: datagrams did not refresh"


def test_uoa_learns_only_from_datagrams_whose_checksum_verifies(rig: Rig) -> None:
    """A datagram carrying the option but failing its UDP checksum (which no socket
    would ever receive) teaches uoa nothing; the same with a good checksum does."""
    from scapy.layers.inet import IP, UDP, IPOption

    rig.ensure(toa=True, uoa=True)

    def dgram(sport: int, bad: bool) -> bytes:
        pkt = IP(src="192.0.2.1", dst=RS[4], options=[IPOption(bytes.fromhex(OPT44))]) / UDP(
            sport=sport, dport=UDP_PORT + 1) / b"spoof"  # fmt: skip
        raw = bytearray(bytes(pkt))
        if bad:
            off = (raw[0] & 15) * 4 + 6
            raw[off] ^= 0x5A  # the checksum, broken
        return bytes(raw)

    s0 = kmod.stats(rig.vm, "uoa")
    traffic.send_raw(rig.labs[4], "lb", RS[4], [dgram(41001, bad=True)])
    s1 = kmod.stats(rig.vm, "uoa")
    traffic.send_raw(rig.labs[4], "lb", RS[4], [dgram(41002, bad=False)])
    s2 = kmod.stats(rig.vm, "uoa")
    bad, good = kmod.delta(s0, s1), kmod.delta(s1, s2)
    expect("bad checksum: (bad_csum, inserted)", (bad.get("bad_csum"), bad.get("inserted")), (1, None))
    expect("good checksum: (bad_csum, inserted)", (good.get("bad_csum"), good.get("inserted")), (None, 1))


# A flood of unique UDP flows from the LB's address, each datagram with the option
# and a valid checksum, sent by a raw socket in the guest (argv: dst count base-port opt-hex).
_FLOOD = r"""
import socket, struct, sys
dst, n, base, opt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4])
sa, da = socket.inet_aton("192.0.2.1"), socket.inet_aton(dst)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    x = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return ~x & 0xFFFF
ihl = 5 + len(opt) // 4
for i in range(n):
    u = struct.pack("!HHHH", base + i, 9002, 16, 0) + b"flood..."
    c = csum(sa + da + struct.pack("!BBH", 0, 17, 16) + u) or 0xFFFF
    u = u[:6] + struct.pack("!H", c) + u[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + 16, 0, 0, 64, 17, 0, sa, da)
    s.sendto(ip + opt + u, (dst, 0))
"""
FLOOD, MAP_MAX = 20000, 64


def test_a_flood_of_new_flows_keeps_the_map_bounded_and_live_flows_mapped(rig: Rig) -> None:
    """uoa_map_max 64 and 20,000 new flows: the table stays at its bound, and a flow
    that was live before the flood still finds its client after it (its next
    datagram carries no option: only the kept entry can name the client)."""
    rig.ensure(toa=True, uoa=True)
    param = "/sys/module/uoa/parameters/uoa_map_max"
    old = rig.vm.sh(f"cat {param}", check=True).stdout.strip()
    live = ("--bind", "192.0.2.1:50000")
    try:
        rig.vm.sh(f"echo {MAP_MAX} > {param}", check=True)
        first = rig.udp(4, [traffic.Client(opt=OPT[4], extra=live)])[0]
        expect("the live flow, first datagram: lookup", first.event["lookup"]["client"], ep(4, CIP[4], 1))
        u0 = kmod.stats(rig.vm, "uoa")
        rig.labs[4].exec("lb", ["python3", "-c", _FLOOD, RS[4], str(FLOOD), "10000", OPT44],
                         timeout=300).check()  # fmt: skip
        u1 = kmod.stats(rig.vm, "uoa")
        later = rig.udp(4, [traffic.Client(extra=live)])[0]
    finally:
        rig.vm.sh(f"echo {old} > {param}", check=True)
    d = kmod.delta(u0, u1)
    assert u1["entries"] <= MAP_MAX, f"the map holds {u1['entries']} entries, more than uoa_map_max {MAP_MAX}"
    assert d.get("parsed_v4_in4") == FLOOD, d
    assert d.get("dropped_full", 0) + d.get("inserted", 0) == FLOOD and d.get("dropped_full", 0) > 0, d
    expect("the live flow after the flood: lookup", (later.event["lookup"] or {}).get("client"),
           ep(4, CIP[4], 1))  # fmt: skip


def test_fuzzed_datagrams_move_the_counters_as_the_model_says(rig: Rig) -> None:
    """Generated and mutated IPv4 datagrams (the option in both forms, after NOPs and
    other options, wrong lengths, operation bits, cut lists, second options, bad
    checksums) from the LB's address through a raw socket into uoa.ko: its counters
    move exactly as the reference model (lab/fuzz.py UoaModel) classifies them, and
    the kernel log stays clean (test_kernel_log_is_clean, below).  make test: 3,000;
    make fuzz: TOALAB_FUZZ_DATAGRAMS (100,000)."""
    rig.ensure(toa=True, uoa=True)
    n = int(os.environ.get("TOALAB_FUZZ_DATAGRAMS", "3000"))
    # under build/, which the guest sees at the same path (its root is the host's)
    out = kmod.REPO / "build" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"uoa-{os.getpid()}.bin"
    try:
        want = fuzz.uoa_batch(path, n, seed=20261202)
        u0 = kmod.stats(rig.vm, "uoa")
        argv = ["python3", "-c", fuzz.UOA_SENDER, str(path), fuzz.UOA_DST]
        sent = rig.labs[4].exec("lb", argv, timeout=1200)
        u1 = kmod.stats(rig.vm, "uoa")
    finally:
        path.unlink(missing_ok=True)
    expect("datagrams sent", sent.check().stdout.strip(), str(n))
    expect(f"uoa_stats deltas over {n} datagrams", kmod.delta(u0, u1), want)


def test_fuzzed_connections_move_the_counters_as_the_model_says(rig: Rig) -> None:
    """Connections from the LB's side with fuzzed IPv4 options (IP_OPTIONS, as in the
    datagram fuzz; the stack refuses some at setsockopt) to rs1: toa_stats move by
    exactly the model's handshakes, verdicts, entries and frees.  make test: 150;
    make fuzz: TOALAB_FUZZ_CONNECTIONS (3,000)."""
    rig.ensure(toa=True, uoa=True)
    n = int(os.environ.get("TOALAB_FUZZ_CONNECTIONS", "150"))
    out = kmod.REPO / "build" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    path, port = out / f"toa-{os.getpid()}.bin", 8087
    lab = rig.labs[4]
    try:
        connected, want = fuzz.toa_batch(path, n, seed=20261202)
        t0 = rig.quiet_toa()
        srv = lab.spawn("rs1", ["python3", "-c", fuzz.TOA_SERVER, str(port), str(connected)])
        traffic.wait_for(srv, '"event": "listening"', 15.0, "the fuzz server")
        cl = lab.exec("lb", ["python3", "-c", fuzz.TOA_CLIENT, str(path), RS[4], str(port)], timeout=1200)
        assert srv.wait(60) == 0, srv.output()
        t1 = rig.quiet_toa(30.0)
    finally:
        path.unlink(missing_ok=True)
    expect("client: connected, refused", json.loads(cl.check().stdout), {"connected": connected,
           "refused": n - connected})  # fmt: skip
    skip = ("getname_hit", "getname_miss", "getname_6to4_kept", "syn_recv_not_owned")  # see fuzz.toa_batch
    d = {k: v for k, v in kmod.delta(t0, t1).items() if k not in skip}
    expect(f"toa_stats deltas over {connected} connections", d, want)


# A dual-stack server that asks getpeername with a 4-byte buffer (a canary behind
# it), then turns the socket into AF_INET (IPV6_ADDRFORM) and asks again.
_ADDRFORM_SERVER = r"""
import ctypes, json, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
ls.bind(("::", int(sys.argv[1])))
ls.listen()
print(json.dumps({"event": "listening"}), flush=True)
c, _ = ls.accept()
buf = ctypes.create_string_buffer(b"\xaa" * 64, 64)
n = ctypes.c_uint32(4)
rc = libc.getpeername(c.fileno(), buf, ctypes.byref(n))
short = {"rc": rc, "len": n.value, "bytes": buf.raw.hex()}
before = c.getpeername()
c.setsockopt(socket.IPPROTO_IPV6, 1, socket.AF_INET)  # IPV6_ADDRFORM
print(json.dumps({"event": "peer", "short": short, "before": list(before[:2]), "after": list(c.getpeername()),
                  "sock_after": list(c.getsockname())}), flush=True)
c.close()
"""


def test_getpeername_into_a_short_buffer_and_after_ipv6_addrform(rig: Rig) -> None:
    """An IPv4 connection with the option on a dual-stack listener: getpeername with
    room for 4 bytes gets 4 bytes (the kernel copies what fits; nothing behind the
    buffer moves) and the full length; after IPV6_ADDRFORM the socket is AF_INET
    and the module's answer is a struct sockaddr_in with the client, not an IPv6
    address written into it."""
    rig.ensure(toa=True, uoa=True)
    lab, port = rig.labs[4], 8086
    srv = lab.spawn("rs1", ["python3", "-c", _ADDRFORM_SERVER, str(port)])
    try:
        traffic.wait_for(srv, '"event": "listening"', 15.0, "the ADDRFORM server")
        c, v = OPT[4]
        # two sends a second apart: the connection stays up while the server asks
        lab.exec("lb", [rig.art.bin("tcp_client"), "--json", "--count", "2", "--interval-ms", "1000",
                        "--opt", c, v, RS[4], str(port)], timeout=30)  # fmt: skip
        assert srv.wait(30) == 0, srv.output()
        (ev,) = [e for e in traffic.events(srv.output()[0]) if e.get("event") == "peer"]
    finally:
        if srv.running:
            srv.terminate()
    short = bytes.fromhex(ev["short"]["bytes"])
    expect("short buffer: rc, and the length of a sockaddr_in6", (ev["short"]["rc"], ev["short"]["len"]),
           (0, 28))  # fmt: skip
    expect("short buffer: family and port, then the canary untouched",
           (short[:4].hex(), short[4:]), ("0a000001", b"\xaa" * 60))  # fmt: skip
    expect("before IPV6_ADDRFORM", ev["before"], ["::ffff:10.0.0.1", 1])
    expect("after IPV6_ADDRFORM (an AF_INET socket)", ev["after"], ["10.0.0.1", 1])
    expect("getsockname after IPV6_ADDRFORM", ev["sock_after"], ["10.0.0.2", 2])


# -- trust: who may set the client -------------------------------------------------------------


def _trust(rig: Rig, value: str) -> None:
    """The `trusted` parameter of both modules, set at run time."""
    for mod in ("toa", "uoa"):
        path = f"/sys/module/{mod}/parameters/trusted"
        kmod.sh(rig.vm, f"printf '%s\\n' {shlex.quote(value)} > {path}").check()
        expect(f"{mod} trusted read back", kmod.sh(rig.vm, f"cat {path}").check().stdout, value + "\n")


# the example LB (the lb node) sends from its addresses in 192.0.2.0/24 and 2001:db8:5::/64
TRUST = [
    ("192.0.2.0/24,2001:db8:5::/64", True),
    ("192.0.2.0/25,2001:db8:5::/121", True),  # prefix lengths off the byte boundary
    ("10.255.0.0/16,192.0.3.0/24,2001:db8:5:1::/64", False),
    ("none", False),
    ("", True),  # the default: every source
]


@pytest.mark.parametrize(("value", "believed"), TRUST, ids=[v or "empty" for v, _ in TRUST])
def test_only_a_trusted_source_sets_the_client(rig: Rig, value: str, believed: bool) -> None:
    """The option counts only from a source in `trusted`; from anywhere else the
    socket keeps the addresses the kernel gave it, the lookup finds nothing, and
    the modules count it (untrusted)."""
    rig.ensure(toa=True, uoa=True)
    try:
        _trust(rig, value)
        for outer in (4, 6):
            t0, u0 = kmod.stats(rig.vm, "toa"), kmod.stats(rig.vm, "uoa")
            ex = rig.tcp(outer, [traffic.Client(opt=OPT[4])])[0]
            ev = ex.event
            if believed:
                expect("getpeername (the client)", ev["peer"], _tcp_view(outer, 4, CIP[4], 1)[0])
            else:
                expect("getpeername (untrusted: the sender)", ev["peer"], real(ex))
                expect("TOA lookup (untrusted)", ev["lookup"], None)
            ux = rig.udp(outer, [traffic.Client(opt=OPT[4])])[0]
            if believed:
                want = {"client": ep(4, CIP[4], 1), "vip": ep(4, VIP[4], 2)}
                expect("UOA lookup", ux.event["lookup"], want)
            else:
                expect("UOA lookup (untrusted)", ux.event["lookup"], None)
            dt = kmod.delta(t0, kmod.stats(rig.vm, "toa")).get("untrusted", 0)
            du = kmod.delta(u0, kmod.stats(rig.vm, "uoa")).get("untrusted", 0)
            expect("untrusted counted (toa, uoa)", (dt > 0, du > 0), (not believed, not believed))
    finally:
        _trust(rig, "")


def test_a_bad_trusted_list_is_refused_with_one_line(rig: Rig) -> None:
    rig.ensure(toa=True, uoa=True)
    _trust(rig, "192.0.2.0/24")
    try:
        mark = kmod.dmesg_mark(rig.vm)
        for bad in ("192.0.2.0/33", "192.0.2.0/24,bogus", "2001:db8::/129", ";reboot"):
            r = kmod.sh(rig.vm, f"printf '%s' {shlex.quote(bad)} > /sys/module/toa/parameters/trusted")
            expect(f"writing {bad!r}", r.returncode != 0, True)
        kept = kmod.sh(rig.vm, "cat /sys/module/toa/parameters/trusted").stdout
        expect("the list kept", kept, "192.0.2.0/24\n")
        log = kmod.sh(rig.vm, "dmesg").check().stdout.splitlines()[mark:]
        said = [ln for ln in log if "trusted: 'bogus' is not an address or prefix" in ln]
        expect("one dmesg line naming the bad item", len(said), 1)
        rig.ensure(toa=False, uoa=True)
        with pytest.raises(LabError, match="insmod toa failed"):
            kmod.load(rig.vm, "toa", rig.art, trusted="not-a-prefix")
    finally:
        rig.ensure(toa=True, uoa=True)
        _trust(rig, "")


# -- malformed options ---------------------------------------------------------------------------
# (name, outer, raw option bytes, toa counter).  The kernel itself drops a packet
# whose options overrun their space (ip_options_compile, ip6_parse_tlv), so a
# "truncated" option reaches TOA only as one whose length byte is too short.
MALFORMED = [
    ("operation-bit-says-ipv6-length-16", 4, "1f100100" "00010002" "0a000001" "0a000002",
     "malformed_operation"),
    ("length-12", 4, "1f0c0000" "00010002" "0a000001", "malformed_length"),
    ("truncated-to-8-bytes", 4, "1f080000" "00010002", "malformed_length"),
    ("ipv6-optlen-10", 6, "06011f0a" "00010002" "0a000001" "0a00" "0100", "malformed_length"),
    # 40-byte header holding the 16-byte inner-IPv4 form, then option 0x1e and PadN
    ("ipv6-hdrlen-4-for-inner-ipv4", 6, "06041f0c" "00010002" "0a000001" "0a000002"
     "1e14" + "00" * 20 + "0100", "malformed_hdrlen"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "outer", "raw", "counter"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_option_is_counted_and_ignored(rig: Rig, name: str, outer: int, raw: str,
                                                 counter: str) -> None:  # fmt: skip
    rig.ensure(toa=True, uoa=True)
    t0 = rig.quiet_toa()
    ex = rig.tcp(outer, [traffic.Client(raw_opt=raw)])[0]
    t1 = rig.quiet_toa()
    expect(f"{name}: client set_raw_opt", ex.client_event("set_raw_opt")["ok"], True)
    expect(f"{name}: getpeername (the real LB, not the option)", ex.event["peer"], real(ex))
    expect(f"{name}: getsockname", ex.event["sock"], ep(outer, RS[outer], TCP_PORT))
    expect(f"{name}: lookup", ex.event["lookup_error"], "ENOENT")
    want = {f"syn_recv_v{outer}": 1, counter: 1, "lookup_miss": 1}
    expect(f"{name}: toa_stats deltas", kmod.delta(t0, t1), want)


def test_malformed_option_on_udp_is_counted_and_ignored(rig: Rig) -> None:
    rig.ensure(toa=True, uoa=True)
    u0 = kmod.stats(rig.vm, "uoa")
    ex = rig.udp(4, [traffic.Client(raw_opt=MALFORMED[0][2])])[0]
    u1 = kmod.stats(rig.vm, "uoa")
    expect("datagram source", ex.event["peer"], real(ex))
    expect("UOA lookup", (ex.event["lookup"], ex.event["lookup_error"]), (None, "ENOENT"))
    expect("uoa_stats deltas", kmod.delta(u0, u1), {"malformed_operation": 1, "lookup_miss": 1})


@pytest.mark.parametrize("before", ["01010101", "1e040000"], ids=["after-nops", "after-option-30"])
def test_option_31_among_other_ipv4_options(rig: Rig, before: str) -> None:
    rig.ensure(toa=True, uoa=True)
    ev = rig.tcp(4, [traffic.Client(raw_opt=before + OPT44)])[0].event
    expect("getpeername", ev["peer"], ep(4, CIP[4], 1))
    expect("getsockname", ev["sock"], ep(4, VIP[4], 2))


# -- load / unload under traffic ----------------------------------------------------------------
# make test runs the short soak, make test-extended the long one (about 2.3 s per cycle)
@pytest.mark.parametrize("cycles", [20, pytest.param(100, marks=pytest.mark.extended)])
def test_insmod_rmmod_cycles_with_live_connections_and_traffic(rig: Rig, cycles: int) -> None:
    rig.ensure(toa=True, uoa=True)
    lab, art = rig.labs[4], rig.art
    c, v = OPT[4]
    tcp_srv = lab.spawn("rs1", [art.bin("tcp_server"), "--json", "--timeout", "2", "8081"])
    udp_srv = lab.spawn("rs1", [art.bin("udp_server"), "--json", "9001"])
    live_srv = lab.spawn("rs1", [art.bin("tcp_server"), "--json", "--once", "--timeout", "10", "8082"])
    jobs = [tcp_srv, udp_srv, live_srv]
    try:
        for j, what in zip(jobs, ("tcp", "udp", "live tcp"), strict=True):
            traffic.wait_for(j, '"event":"listening"', 15.0, f"{what} server")
        # traffic: TCP connections and datagrams with the option, until told to stop
        load = lab.spawn("lb", ["sh", "-c",
            f"while [ ! -e /tmp/kmod-stop ]; do "
            f"{art.bin('tcp_client')} --json --once --opt {c} {v} {RS[4]} 8081 >/dev/null 2>&1 "
            f"&& echo tcp-ok; "
            f"{art.bin('udp_client')} --json --once --opt {c} {v} {RS[4]} 9001 >/dev/null 2>&1 "
            f"&& echo udp-ok; done"])  # fmt: skip
        jobs.append(load)
        # a connection that stays open (3 sends 1.5 s apart) while toa goes away
        live = lab.spawn("lb", [art.bin("tcp_client"), "--json", "--count", "3", "--interval-ms", "1500",
                                "--opt", c, v, RS[4], "8082"])  # fmt: skip
        jobs.append(live)
        traffic.wait_for(live_srv, '"event":"accept"', 15.0, "the live connection")
        entries = kmod.stats(rig.vm, "toa")["entries"]
        assert entries >= 1, f"expected the live connection to hold a toa entry, saw entries {entries}"
        ko = {m: art.module(m) for m in kmod.MODULES}
        # a lookup in progress holds the module (nf_sockopt takes a reference): rmmod
        # says busy and is tried again, as an operator would; 1 s of that is a failure
        run = rig.vm.sh(
            "unload() { n=0; until rmmod $1 2>/dev/null; do n=$((n+1)); "
            "[ $n -lt 50 ] || { rmmod $1; return 1; }; sleep 0.02; done; }; "
            f"set -e; for i in $(seq {cycles}); do sleep 0.4; "
            f"unload toa; unload uoa; sleep 0.2; insmod {ko['toa']}; insmod {ko['uoa']}; "
            "echo cycle-$i; done",
            timeout=600,
        )  # fmt: skip
        expect("insmod/rmmod cycles (exit, errors)", (run.returncode, run.stderr), (0, ""))
        expect("cycles done", run.stdout.split(), [f"cycle-{i}" for i in range(1, cycles + 1)])
        expect("live client exit", live.wait(30), 0)
        done = [e for e in traffic.events(live.output()[0]) if e.get("event") == "done"]
        expect("live connection survived rmmod (client's done event)", done, [{"event": "done",
               "sent": 3, "bytes": 192}])  # fmt: skip
        expect("live server exit", live_srv.wait(30), 0)
        closes = [e for e in traffic.events(live_srv.output()[0]) if e.get("event") == "close"]
        expect("live server read all (bytes)", [e.get("bytes") for e in closes], [192])
        time.sleep(0.5)
        rig.vm.sh("touch /tmp/kmod-stop", check=True)
        expect("traffic loop exit", load.wait(30), 0)
        out = load.output()[0].split()
        tcp_ok, udp_ok = out.count("tcp-ok"), out.count("udp-ok")
        assert tcp_ok >= cycles // 5 and udp_ok >= cycles // 5, (
            f"expected traffic to flow through the cycles (>= {cycles // 5} TCP and UDP exchanges each), "
            f"saw {tcp_ok} TCP and {udp_ok} UDP"
        )
    finally:
        rig.vm.sh("rm -f /tmp/kmod-stop")
        for j in jobs:
            if j.running:
                j.terminate()
    expect("modules after the cycles", kmod.loaded(rig.vm), {"toa", "uoa"})
    ev = rig.tcp(4, [traffic.Client(opt=OPT[4])])[0].event
    expect("getpeername after the cycles", ev["peer"], ep(4, CIP[4], 1))
    expect("kernel log after the cycles (WARNING/BUG/Oops)", kmod.dmesg_problems(rig.vm, rig.log_mark), [])


# -- a kernel the hook cannot work on ---------------------------------------------------------------
def test_a_getname_hook_conflict_is_refused_with_one_line(rig: Rig) -> None:
    """Another IPMODIFY user on inet_getname, as a livepatch of it would be: toa.ko
    refuses to load, says why in one dmesg line, leaves nothing behind, and loads
    once the other user is gone."""
    rig.ensure(toa=False, uoa=True)
    mark = kmod.dmesg_mark(rig.vm)
    kmod.load(rig.vm, "ipmodify_holder", rig.art)
    try:
        with pytest.raises(kmod.Unsupported) as e:
            kmod.load(rig.vm, "toa", rig.art)
        want = (
            "toa: not loading: cannot hook inet_getname: -16 "
            "(another IPMODIFY user, such as a livepatch, has it)"
        )
        expect("the refusal", str(e.value), want)
        expect("modules after the refusal", kmod.loaded(rig.vm), {"uoa"})
        log = rig.vm.run(["dmesg"]).check().stdout.splitlines()[mark:]
        expect("toa's lines in dmesg", [ln.split("] ", 1)[-1] for ln in log if "toa: " in ln], [want])
        expect("kernel log (WARNING/BUG/Oops)", kmod.dmesg_problems(rig.vm, mark), [])
    finally:
        kmod.unload(rig.vm, "ipmodify_holder")
    rig.ensure(toa=True, uoa=True)
    ev = rig.tcp(4, [traffic.Client(opt=OPT[4])])[0].event
    expect("getpeername once toa loaded after all", ev["peer"], ep(4, CIP[4], 1))


# -- the C test on the guest kernel, and the kernel log ------------------------------------------
def test_c_test_on_the_guest_kernel(rig: Rig) -> None:
    r = rig.vm.run([rig.art.bin("test_toa_opt")], timeout=60)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    m = re.fullmatch(r".*?(\d+) passed, (\d+) failed", last)
    assert m and r.returncode == 0 and m.group(2) == "0" and int(m.group(1)) > 0, (
        f"expected test_toa_opt on {rig.vm.release} to end 'N passed, 0 failed' with exit 0, "
        f"saw exit {r.returncode}, last line {last!r}; failures: "
        + "; ".join(line for line in r.stdout.splitlines() if line.startswith("not ok"))
    )


def test_kernel_log_is_clean(rig: Rig) -> None:
    kmod.unload(rig.vm, "toa")
    kmod.unload(rig.vm, "uoa")
    expect("kernel log at the end (WARNING/BUG/Oops)", kmod.dmesg_problems(rig.vm, rig.log_mark), [])
