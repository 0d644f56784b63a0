"""Small real exchanges between lab nodes, driven from the host process.

Sockets are opened inside a node's namespace (the socket stays there after
the thread returns home), so one Python process can play both ends without
any helper program.  Host engine only: a VM's namespaces are in the guest.
"""

from __future__ import annotations

import socket

from lab import ipopt, netns, wire
from lab.lab import Lab


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
