"""scapy layers for the TOA/UOA option, so that ``pkt.show()`` names it.

Importing this module registers:

* ``IPOption_TOA`` - IPv4 option 31 (cport, vport, cip, vip);
* ``DestOpt_TOA`` - IPv6 destination option 31 inside ``IPv6ExtHdrDestOpt``.

Field semantics come from lab.wire; ``extract`` returns the parsed option of
any packet through the reference codec, so there is one parser.
"""

from __future__ import annotations

from typing import Any

from scapy.fields import (
    ByteField,
    IP6Field,
    IPField,
    MultipleTypeField,
    ShortField,
)
from scapy.layers import inet6
from scapy.layers.inet import IP, IPOption, _IPOption_HDR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, _OTypeField
from scapy.packet import Packet

from lab import wire


def _inner6(pkt: Any, flag_field: str, six_value: Any) -> bool:
    """IPv6 addresses inside? From the dissected header field, else from cip's type."""
    flag = pkt.fields.get(flag_field, pkt.default_fields.get(flag_field))
    if flag is not None:
        return bool(flag & 1) if flag_field == "operation" else flag == six_value
    cip = pkt.fields.get("cip")
    return cip is not None and ":" in str(cip)


def _addr_fields(flag_field: str, six_value: Any) -> list[Any]:
    def on_pkt(p: Any) -> bool:
        return _inner6(p, flag_field, six_value)

    def on_value(p: Any, val: Any) -> bool:
        # while a value is being assigned, its own type decides
        if isinstance(val, str | bytes):
            return ":" in str(val) if isinstance(val, str) else len(val) == 16
        return on_pkt(p)

    cond = (on_pkt, on_value)
    return [
        MultipleTypeField([(IP6Field("cip", "::"), cond)], IPField("cip", "0.0.0.0")),
        MultipleTypeField([(IP6Field("vip", "::"), cond)], IPField("vip", "0.0.0.0")),
    ]


class IPOption_TOA(IPOption):
    name = "TOA/UOA address option"
    option = wire.IPV4_OPTION_TYPE
    fields_desc = [  # noqa: RUF012 - scapy's declaration style
        _IPOption_HDR,
        ByteField("length", None),
        ByteField("operation", None),
        ByteField("padding", 0),
        ShortField("cport", 0),
        ShortField("vport", 0),
        *_addr_fields("operation", None),
    ]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        six = len(p) == wire.LEN_INNER6
        if self.length is None:
            p = p[:1] + bytes([len(p)]) + p[2:]
        if self.operation is None:
            p = p[:2] + bytes([wire.OP_INNER_IPV6 if six else 0]) + p[3:]
        return p + pay


class DestOpt_TOA(Packet):
    name = "TOA/UOA destination option"
    fields_desc = [  # noqa: RUF012
        _OTypeField("otype", wire.IPV6_HEADER_OPTION, inet6._hbhopts),
        ByteField("optlen", None),
        ShortField("cport", 0),
        ShortField("vport", 0),
        *_addr_fields("optlen", wire.DSTOPT_OPTLEN[6]),
    ]

    def alignment_delta(self, curpos: int) -> int:
        return 0  # the seed's header has no padding

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.optlen is None:
            p = p[:1] + bytes([len(p) - 2]) + p[2:]
        return p + pay

    def extract_padding(self, p: bytes) -> tuple[bytes, bytes]:
        return b"", p


IPOption_TOA.register_variant()
inet6._hbhopts[wire.IPV6_HEADER_OPTION] = "TOA/UOA address"
inet6._hbhoptcls[wire.IPV6_HEADER_OPTION] = DestOpt_TOA


def ipv4_option(opt: wire.AddrOption) -> IPOption_TOA:
    return IPOption_TOA(opt.pack_ipv4())


def ipv6_dstopt(opt: wire.AddrOption, nexthdr: int = 6) -> IPv6ExtHdrDestOpt:
    return IPv6ExtHdrDestOpt(opt.pack_ipv6(nexthdr))


def extract(pkt: Packet) -> tuple[wire.AddrOption, str] | None:
    """The option a packet carries and its form ('ipv4'/'ipv6'), or None.

    Raises wire.WireError for a malformed option.
    """
    if IP in pkt:
        raw = bytes(pkt[IP])
        ihl = (raw[0] & 0x0F) * 4
        found = wire.find_in_ipv4_options(raw[20:ihl])
        return (found, "ipv4") if found else None
    if IPv6 in pkt:
        raw = bytes(pkt[IPv6])
        nh, off = raw[6], 40
        # Walk hop-by-hop / routing / destination headers (all are "8 * (len + 1)").
        while nh in (0, 43, 60) and off + 2 <= len(raw):
            if nh == wire.IPV6_HEADER_DST and off + 3 <= len(raw) and raw[off + 2] == wire.IPV6_HEADER_OPTION:
                opt, _ = wire.unpack_ipv6(raw[off:])
                return opt, "ipv6"
            nh, off = raw[off], off + (raw[off + 1] + 1) * 8
    return None
