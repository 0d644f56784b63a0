"""The fullnat XDP LB end to end on the host engine: real veths, native XDP on
the lb's two ports, real TCP and UDP sessions from the client to the VIP.

For each fullnat topology (4to4, 6to6, 6to4 = NAT64) lab.lb.attach loads
bpf/lb.c on the lb; the test process opens listeners in both real servers'
namespaces and a client socket in the client's, runs a TCP exchange and a
UDP exchange through the VIP, checks that the real server saw the LB's
local address (fullnat) and the client saw the VIP (replies came back
through the reverse path), and reads the RS ingress pcap: the packets of
the handshake carry the option byte-exactly as lab/wire.py packs it, with
the client's address and port and the VIP inside.  fullnat-4to4-vxlan: the
same through VXLAN, the pcap taken on the RS's vxlan device (after
decapsulation), where TOA/UOA parse the inner packet.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TOPOLOGIES, needs_root
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from lab import lb, netns, programs, scapy_toa, topology, wire
from lab.capture import Capture
from lab.net import Lab

pytestmark = [pytest.mark.host, pytest.mark.bpf]

CASES = ["fullnat-4to4", "fullnat-6to6", "fullnat-6to4", "fullnat-4to4-vxlan", "fullnat-6to6-vxlan"]


@dataclass
class LbLab:
    lab: Lab
    topo: topology.Topology
    handle: lb.LbHandle

    def ns(self, node: str) -> str:
        return self.lab.engine.record.ns(node)


@contextmanager
def lb_lab(name: str, topo_file: str) -> Iterator[LbLab]:
    needs_root()
    topo = topology.load(TOPOLOGIES / f"{topo_file}.yaml")
    with Lab.up(topo, name=name) as lab:  # the engine attaches the LB of the services
        yield LbLab(lab, topo, lb.attached(lab))
    assert not (programs.PIN_ROOT / name).exists()


def _fam(addr: object) -> int:
    return socket.AF_INET6 if ":" in str(addr) else socket.AF_INET


def _l3(pkt: Ether) -> IP | IPv6:
    return pkt[IP] if IP in pkt else pkt[IPv6]


def _opt_bytes(pkt: Ether) -> bytes:
    """The raw option as it sits in the packet (IPv4 option / whole dstopt header)."""
    if IP in pkt:
        raw = bytes(pkt[IP])
        return raw[20 : (raw[0] & 0x0F) * 4]
    raw = bytes(pkt[IPv6])
    assert raw[6] == 60, "no Destination Options header"
    return raw[40 : 40 + (raw[41] + 1) * 8]


def rs_packets(pcaps: list[Path], proto: type, rport: int) -> list[Ether]:
    out = []
    for p in pcaps:
        for pkt in rdpcap(str(p)):
            if proto in pkt and pkt[proto].dport == rport:
                out.append(pkt)
    return out


@pytest.mark.parametrize("topo_file", CASES)
def test_tcp_and_udp_through_vip(lab_name: str, tmp_path: Path, topo_file: str) -> None:
    with lb_lab(lab_name, topo_file) as ll:
        svc = next(iter(ll.topo.services.values()))
        vip, vport, rport = str(svc.vip), svc.port, svc.rs_port
        rs_fam = _fam(svc.local[0])
        cip = str(ll.topo.node("client").address(svc.vip.version))
        with ExitStack() as stack:
            listeners, udps = [], []
            for rs in svc.real_servers:
                with netns.entered(ll.ns(rs)):
                    t = socket.socket(rs_fam, socket.SOCK_STREAM)
                    u = socket.socket(rs_fam, socket.SOCK_DGRAM)
                for s in (t, u):
                    stack.enter_context(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("::" if rs_fam == socket.AF_INET6 else "0.0.0.0", rport))
                t.listen()
                listeners.append(t)
                udps.append(u)
            with netns.entered(ll.ns("client")):
                tcp = stack.enter_context(socket.socket(_fam(vip), socket.SOCK_STREAM))
                udp = stack.enter_context(socket.socket(_fam(vip), socket.SOCK_DGRAM))
            for s in (tcp, udp):
                s.settimeout(5)
            pcaps = [tmp_path / f"{rs}.pcap" for rs in svc.real_servers]
            for rs, p in zip(svc.real_servers, pcaps, strict=True):
                # no port filter: it would miss IPv6 packets with a Destination Options header
                # VXLAN: the RS's vxlan device shows the decapsulated packet
                stack.enter_context(Capture(ll.lab, rs, "vx0" if svc.vxlan else "eth0", p))

            # TCP: handshake, request, reply
            tcp.connect((vip, vport))
            cport = tcp.getsockname()[1]
            ready, _, _ = select.select(listeners, [], [], 5)
            assert ready, "no real server accepted the connection"
            conn, peer = ready[0].accept()
            with conn:
                conn.settimeout(5)
                assert str(peer[0]) in {str(a) for a in svc.local}, f"RS saw {peer}, not a local address"
                tcp.sendall(b"hello through the VIP")
                assert conn.recv(100) == b"hello through the VIP"
                conn.sendall(b"hello back")
                assert tcp.recv(100) == b"hello back"
                assert tcp.getpeername()[:2] == (vip, vport)

            # UDP: datagram, reply to whoever sent it (the LB's local address)
            udp.sendto(b"datagram", (vip, vport))
            ready, _, _ = select.select(udps, [], [], 5)
            assert ready, f"no real server got the datagram: {ll.handle.counters()} {ll.handle.flows()}"
            data, src = ready[0].recvfrom(100)
            assert data == b"datagram" and str(src[0]) in {str(a) for a in svc.local}
            ready[0].sendto(b"answer", src)
            data, frm = udp.recvfrom(100)
            assert data == b"answer" and frm[:2] == (vip, vport)
            ucport = udp.getsockname()[1]
            tcp.close()
            stack.close()  # captures written

        counters = ll.handle.counters()
        assert counters["rev"] >= 3 and counters["fwd_opt"] >= 3, counters
        assert (counters["vxlan"] == counters["fwd"]) if svc.vxlan else not counters["vxlan"], counters

    # the RS ingress pcaps: option on the SYN and the third packet, byte-exact
    exp_t = wire.AddrOption(cip, cport, vip, vport)
    segs = rs_packets(pcaps, TCP, rport)
    syn = [p for p in segs if p[TCP].flags == "S"]
    third = [p for p in segs if p[TCP].flags == "A" and not bytes(p[TCP].payload)]
    assert syn and third, f"handshake not captured: {[p.summary() for p in segs]}"
    outer = "ipv4" if rs_fam == socket.AF_INET else "ipv6"
    for pkt in (syn[0], third[0]):
        assert scapy_toa.extract(pkt) == (exp_t, outer)
        want = exp_t.pack_ipv4() if outer == "ipv4" else exp_t.pack_ipv6(6)
        assert _opt_bytes(pkt) == want
        assert str(_l3(pkt).src) in {str(a) for a in svc.local}
    dgrams = rs_packets(pcaps, UDP, rport)
    assert len(dgrams) == 1
    exp_u = wire.AddrOption(cip, ucport, vip, vport)
    assert scapy_toa.extract(dgrams[0]) == (exp_u, outer)
    assert _opt_bytes(dgrams[0]) == (exp_u.pack_ipv4() if outer == "ipv4" else exp_u.pack_ipv6(17))


def test_detach_removes_what_attach_made_and_attach_again_works(lab_name: str) -> None:
    """detach (programs.undo, one round trip): no XDP program on any port the LB
    or its peers ran one, no vxlan device on the real servers, no pins; a new
    attach brings all of it back."""
    with lb_lab(lab_name, "fullnat-4to4-vxlan") as L:
        k = L.lab.kernel()
        ports = [("lb", "eth0"), ("lb", "eth1"), ("client", "eth0"), ("switch", "p0")]
        L.handle.detach()
        assert [k.xdp_prog_id(L.ns(n), i) for n, i in ports] == [None] * 4
        for rs in ("rs1", "rs2"):
            assert "vx0" not in k.exec(["ip", "-n", L.ns(rs), "-o", "link", "show"]).stdout, rs
        assert not (programs.PIN_ROOT / lab_name).exists()
        again = lb.attach(L.lab)
        assert all(k.xdp_prog_id(L.ns(n), i) is not None for n, i in ports)
        assert k.xdp_prog_id(L.ns("lb"), "eth0") == again.prog_id
        assert "vx0" in k.exec(["ip", "-n", L.ns("rs1"), "-o", "link", "show"]).stdout
