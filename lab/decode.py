"""``toalab decode PCAP``: every packet that carries the address option."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from scapy.error import Scapy_Exception
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet
from scapy.utils import PcapReader

from lab import wire
from lab.errors import LabError
from lab.scapy_toa import extract


@dataclass
class Decoded:
    index: int  # 1-based position in the capture
    outer: str  # "src:sport -> dst:dport proto"
    option: wire.AddrOption | None
    form: str
    error: str | None = None

    def __str__(self) -> str:
        if self.error:
            return f"#{self.index} {self.outer} malformed option: {self.error}"
        return f"#{self.index} {self.outer} [{self.form} option] {self.option}"


def _outer(pkt: Packet) -> str:
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    proto = "tcp" if TCP in pkt else "udp" if UDP in pkt else f"proto {ip.proto if IP in pkt else ip.nh}"
    if l4 is None:
        return f"{ip.src} -> {ip.dst} {proto}"
    src = wire.endpoint(ipaddress.ip_address(ip.src), l4.sport)
    dst = wire.endpoint(ipaddress.ip_address(ip.dst), l4.dport)
    return f"{src} -> {dst} {proto}"


def decode(path: str) -> Iterator[Decoded]:
    try:
        reader = PcapReader(path)
    except (OSError, EOFError, Scapy_Exception) as e:
        raise LabError(f"{path}: cannot read capture: {e}") from None
    with reader:
        for i, pkt in enumerate(reader, 1):
            if IP not in pkt and IPv6 not in pkt:
                continue
            try:
                found = extract(pkt)
            except wire.WireError as e:
                yield Decoded(i, _outer(pkt), None, "", str(e))
                continue
            if found:
                yield Decoded(i, _outer(pkt), found[0], found[1])
