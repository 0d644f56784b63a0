"""ICMP errors through the XDP LB on the host engine, between real kernels: a
UDP datagram to a port nobody listens on makes the RS's kernel answer "port
unreachable" to the LB's local address, and the client's connected socket must
see ECONNREFUSED (the LB carried the error across, into the client's family);
a reply to a client socket that has gone makes the client's kernel answer to
the VIP, and the RS's connected socket must see ECONNREFUSED.  Without the
translation both sides only time out."""

from __future__ import annotations

import socket
from contextlib import ExitStack

import pytest
from test_lb_host import _fam, lb_lab

from lab import netns

pytestmark = [pytest.mark.host, pytest.mark.bpf]

CASES = ["fullnat-4to4", "fullnat-6to6", "fullnat-6to4", "fullnat-4to4-vxlan"]


def _any(fam: int) -> str:
    return "::" if fam == socket.AF_INET6 else "0.0.0.0"


@pytest.mark.parametrize("topo_file", CASES)
def test_port_unreachable_from_the_rs_reaches_the_client(lab_name: str, topo_file: str) -> None:
    with lb_lab(lab_name, topo_file) as ll:
        svc = next(iter(ll.topo.services.values()))
        with netns.entered(ll.ns("client")):
            udp = socket.socket(_fam(svc.vip), socket.SOCK_DGRAM)
        with udp:
            udp.settimeout(5)
            udp.connect((str(svc.vip), svc.port))  # no RS listens on rs_port
            udp.send(b"anyone?")
            with pytest.raises(ConnectionRefusedError):
                udp.recv(100)
        c = ll.handle.counters()
        assert c["icmp"] >= 1 and c["fwd"] >= 1, c


@pytest.mark.parametrize("topo_file", CASES)
def test_port_unreachable_from_the_client_reaches_the_rs(lab_name: str, topo_file: str) -> None:
    with lb_lab(lab_name, topo_file) as ll, ExitStack() as stack:
        svc = next(iter(ll.topo.services.values()))
        rs_fam = _fam(svc.local[0])
        servers = []
        for rs in svc.real_servers:
            with netns.entered(ll.ns(rs)):
                s = stack.enter_context(socket.socket(rs_fam, socket.SOCK_DGRAM))
            s.bind((_any(rs_fam), svc.rs_port))
            s.settimeout(5)
            servers.append(s)
        with netns.entered(ll.ns("client")):
            gone = socket.socket(_fam(svc.vip), socket.SOCK_DGRAM)
        with gone:
            gone.sendto(b"reply to me later", (str(svc.vip), svc.port))
        # whichever RS got it answers a socket that is closed now
        got = None
        for _ in range(50):
            for s in servers:
                try:
                    s.settimeout(0.1)
                    _, peer = s.recvfrom(100)
                    got = (s, peer)
                except TimeoutError:
                    continue
            if got:
                break
        assert got, "no real server received the datagram"
        s, peer = got
        s.settimeout(5)
        s.connect(peer)
        s.send(b"too late")
        with pytest.raises(ConnectionRefusedError):
            s.recv(100)
        c = ll.handle.counters()
        assert c["icmp"] >= 1 and c["rev"] >= 1, c
