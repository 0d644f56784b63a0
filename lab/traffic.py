"""Small real exchanges between lab nodes, driven from the host process.

Sockets are opened inside a node's namespace (the socket stays there after
the thread returns home), so one Python process can play both ends without
any helper program.  Host engine only: a VM's namespaces are in the guest.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass

from lab import ipopt, netns, wire
from lab.errors import LabError
from lab.net import Lab


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def optioned_exchange(
    lab: Lab, client: str, server: str, src: str, dst: str, opt: wire.AddrOption, port: int = 8080
) -> None:
    """One TCP connection and one UDP datagram from client to server, both
    sockets carrying ``opt`` (set_ip_opt before connect), payloads checked."""
    family = _family(dst)
    with netns.entered(lab.engine.record.ns(server)):
        listener = socket.socket(family, socket.SOCK_STREAM)
        udp_rx = socket.socket(family, socket.SOCK_DGRAM)
    with netns.entered(lab.engine.record.ns(client)):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        udp = socket.socket(family, socket.SOCK_DGRAM)
    with listener, udp_rx, tcp, udp:
        for s in (listener, udp_rx, tcp, udp):
            s.settimeout(5)
        listener.bind((dst, port))
        listener.listen()
        udp_rx.bind((dst, port))
        for s in (tcp, udp):
            s.bind((src, 0))
            ipopt.set_ip_opt(s, opt)
        tcp.connect((dst, port))
        conn, _ = listener.accept()
        with conn:
            tcp.sendall(b"hello")
            if conn.recv(5) != b"hello":
                raise AssertionError("TCP payload did not arrive intact")
        udp.sendto(b"datagram", (dst, port))
        if udp_rx.recv(100) != b"datagram":
            raise AssertionError("UDP payload did not arrive intact")


@dataclass
class VipExchange:
    server: str  # the real server that took the connection
    udp_server: str  # the real server that got the datagram
    client_addr: tuple[str, int]  # the client's TCP socket's own address
    udp_client_addr: tuple[str, int]  # the client's UDP socket's own address
    tcp_peer: tuple[str, int]  # what the real server's accept() saw
    udp_peer: tuple[str, int]  # where the real server's datagram came from


def vip_exchange(lab: Lab, client: str, servers: list[str], vip: str, port: int, rs_port: int) -> VipExchange:
    """One TCP connection and one UDP datagram from the client to VIP:port,
    through the lb, answered by whichever real server it lands on."""
    family = _family(vip)
    rx: dict[str, tuple[socket.socket, socket.socket]] = {}
    try:
        for rs in servers:
            if lab.topology is None:
                raise LabError("vip_exchange needs the lab's topology")
            # a real server has one family: the RS side's
            addr = str(next(iter(lab.topology.node(rs).addresses())).ip)
            with netns.entered(lab.engine.record.ns(rs)):
                t = socket.socket(_family(addr), socket.SOCK_STREAM)
                u = socket.socket(_family(addr), socket.SOCK_DGRAM)
            rx[rs] = (t, u)
            t.bind((addr, rs_port))
            t.listen()
            u.bind((addr, rs_port))
        with netns.entered(lab.engine.record.ns(client)):
            tcp = socket.socket(family, socket.SOCK_STREAM)
            udp = socket.socket(family, socket.SOCK_DGRAM)
        with tcp, udp:
            tcp.settimeout(5)
            tcp.connect((vip, port))
            ready, _, _ = select.select([t for t, _ in rx.values()], [], [], 5)
            if not ready:
                raise LabError(f"no real server accepted the connection to {vip}:{port}")
            listener = ready[0]
            server = next(rs for rs, (t, _) in rx.items() if t is listener)
            conn, peer = listener.accept()
            with conn:
                tcp.sendall(b"hello")
                if conn.recv(5) != b"hello":
                    raise LabError("TCP payload did not arrive intact through the lb")
                conn.sendall(b"world")
                if tcp.recv(5) != b"world":
                    raise LabError("the real server's reply did not come back through the lb")
            udp.connect((vip, port))  # so that getsockname names the source address
            udp.send(b"datagram")
            ready, _, _ = select.select([u for _, u in rx.values()], [], [], 5)
            if not ready:
                raise LabError(f"no real server received the datagram to {vip}:{port}")
            data, upeer = ready[0].recvfrom(100)
            udp_server = next(rs for rs, (_, u) in rx.items() if u is ready[0])
            if data != b"datagram":
                raise LabError("UDP payload did not arrive intact through the lb")
            return VipExchange(
                server, udp_server, tcp.getsockname()[:2], udp.getsockname()[:2], peer[:2], upeer[:2]
            )
    finally:
        for t, u in rx.values():
            t.close()
            u.close()

