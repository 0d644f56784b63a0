"""set_ip_opt / del_ip_opt for Python sockets, like kmod/libipopt.

After ``set_ip_opt`` every packet the socket sends carries the address
option: an IPv4 option (IP_OPTIONS) on an AF_INET socket, a Destination
Options header (IPV6_DSTOPTS) on an AF_INET6 socket.  The IPv4 form with an
unknown option type needs CAP_NET_RAW.
"""

from __future__ import annotations

import socket

from lab import wire
from lab.errors import LabError

IPV6_DSTOPTS = 59  # <linux/in6.h>; the socket module does not export it


def set_ip_opt(sock: socket.socket, opt: wire.AddrOption) -> None:
    try:
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opt.pack_ipv4())
        elif sock.family == socket.AF_INET6:
            # the kernel fills in the header's next-header byte
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, opt.pack_ipv6(0))
        else:
            raise LabError(f"set_ip_opt: socket family {sock.family!r} is neither AF_INET nor AF_INET6")
    except PermissionError:
        raise LabError("set_ip_opt: setting IP option 31 needs CAP_NET_RAW (run as root)") from None


def del_ip_opt(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, b"")


def get_ip_opt(sock: socket.socket) -> bytes:
    """The option bytes currently set on the socket (empty if none)."""
    if sock.family == socket.AF_INET:
        return sock.getsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, 40)
    return sock.getsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, 256)
