"""Reference codec of the TOA/UOA address option (kmod/include/toa_opt.h).

Two outer forms carry the same payload, cport, vport, cip, vip:

* ``ipv4`` - an IPv4 option: type 31, length 16|40, operation (bit 0: the
  addresses inside are IPv6), padding 0;
* ``ipv6`` - an IPv6 Destination Options header (next header 60) holding
  one option: nexthdr, hdrlen 1|4, option type 31, option length 12|36.

Every multi-byte field is big endian.  The C header, the BPF programs, the
scapy layer and the kernel modules' tests all check against the vectors in
tests/vectors/toa_opt.json, which were written by hand from the seed.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

IPV4_OPTION_TYPE = 31
IPV6_HEADER_DST = 60
IPV6_HEADER_OPTION = 31
OP_INNER_IPV6 = 0x01

LEN_INNER4 = 16
LEN_INNER6 = 40
DSTOPT_HDRLEN = {4: 1, 6: 4}
DSTOPT_OPTLEN = {4: 12, 6: 36}

IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
Form = Literal["ipv4", "ipv6"]


class WireError(ValueError):
    """A byte string that is not a well-formed TOA/UOA option.  `kind` names the
    reason as the modules count it (enum toa_opt_err): truncated, type, length,
    operation, hdrlen; or other."""

    def __init__(self, msg: str, kind: str = "other") -> None:
        super().__init__(msg)
        self.kind = kind


@dataclass(frozen=True)
class AddrOption:
    """What the LB tells the real server: the client and the virtual address."""

    cip: IpAddr
    cport: int
    vip: IpAddr
    vport: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "cip", ipaddress.ip_address(self.cip))
        object.__setattr__(self, "vip", ipaddress.ip_address(self.vip))
        if self.cip.version != self.vip.version:
            raise WireError(f"cip {self.cip} and vip {self.vip} must be of one family")
        for name in ("cport", "vport"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFFFF:
                raise WireError(f"{name} {v} is not a 16-bit port")

    @property
    def inner(self) -> int:
        """4 or 6: the family of the addresses inside."""
        return self.cip.version

    def _payload(self) -> bytes:
        return struct.pack("!HH", self.cport, self.vport) + self.cip.packed + self.vip.packed

    def pack_ipv4(self) -> bytes:
        """The IPv4 option, 16 or 40 bytes (a multiple of 4: no padding needed)."""
        length = LEN_INNER6 if self.inner == 6 else LEN_INNER4
        op = OP_INNER_IPV6 if self.inner == 6 else 0
        return bytes([IPV4_OPTION_TYPE, length, op, 0]) + self._payload()

    def pack_ipv6(self, nexthdr: int = 6) -> bytes:
        """The whole Destination Options header, 16 or 40 bytes."""
        hdr = bytes([nexthdr, DSTOPT_HDRLEN[self.inner], IPV6_HEADER_OPTION, DSTOPT_OPTLEN[self.inner]])
        return hdr + self._payload()

    def pack(self, form: Form, nexthdr: int = 6) -> bytes:
        return self.pack_ipv4() if form == "ipv4" else self.pack_ipv6(nexthdr)

    def __str__(self) -> str:
        return f"{endpoint(self.cip, self.cport)} -> {endpoint(self.vip, self.vport)}"


def endpoint(ip: IpAddr, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _addrs(data: bytes, inner: int) -> tuple[IpAddr, IpAddr]:
    n = 16 if inner == 6 else 4
    o = 8
    return ipaddress.ip_address(data[o : o + n]), ipaddress.ip_address(data[o + n : o + 2 * n])


def unpack_ipv4(data: bytes) -> AddrOption:
    """Parse one IPv4-form option starting at data[0]; extra bytes after it are ignored."""
    if len(data) < 2:
        raise WireError(f"truncated: {len(data)} bytes, an option needs at least 2", "truncated")
    if data[0] != IPV4_OPTION_TYPE:
        raise WireError(f"wrong type {data[0]}: the address option is type {IPV4_OPTION_TYPE}", "type")
    length = data[1]
    if length not in (LEN_INNER4, LEN_INNER6):
        raise WireError(
            f"bad length {length}: must be {LEN_INNER4} (IPv4 inside) or {LEN_INNER6} (IPv6)", "length"
        )
    if len(data) < length:
        raise WireError(f"truncated: length says {length} bytes, {len(data)} present", "truncated")
    inner = 6 if length == LEN_INNER6 else 4
    if bool(data[2] & OP_INNER_IPV6) != (inner == 6):
        raise WireError(
            f"operation 0x{data[2]:02x} says IPv{6 if data[2] & OP_INNER_IPV6 else 4} inside "
            f"but length {length} is for IPv{inner}",
            "operation",
        )
    cport, vport = struct.unpack_from("!HH", data, 4)
    cip, vip = _addrs(data, inner)
    return AddrOption(cip, cport, vip, vport)


def unpack_ipv6(data: bytes) -> tuple[AddrOption, int]:
    """Parse a whole Destination Options header; returns (option, next header)."""
    if len(data) < 4:
        raise WireError(f"truncated: {len(data)} bytes, a destination options header needs 4", "truncated")
    total = (data[1] + 1) * 8
    if len(data) < total:
        raise WireError(
            f"truncated: hdr ext len {data[1]} means {total} bytes, {len(data)} present", "truncated"
        )
    if data[2] != IPV6_HEADER_OPTION:
        raise WireError(
            f"wrong option type {data[2]}: the address option is type {IPV6_HEADER_OPTION}", "type"
        )
    optlen = data[3]
    inner = {12: 4, 36: 6}.get(optlen)
    if inner is None:
        raise WireError(f"bad option length {optlen}: must be 12 (IPv4 inside) or 36 (IPv6)", "length")
    if data[1] != DSTOPT_HDRLEN[inner]:
        raise WireError(
            f"hdr ext len {data[1]} does not match option length {optlen} (expected {DSTOPT_HDRLEN[inner]})",
            "hdrlen",
        )
    cport, vport = struct.unpack_from("!HH", data, 4)
    cip, vip = _addrs(data, inner)
    return AddrOption(cip, cport, vip, vport), data[0]


def find_in_ipv4_options(options: bytes) -> AddrOption | None:
    """Walk an IPv4 header's option bytes (EOL, NOP, TLVs); parse option 31 if present."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of option list
            return None
        if kind == 1:  # no-op
            i += 1
            continue
        if i + 1 >= len(options):
            raise WireError(f"truncated option {kind} at offset {i}")
        length = options[i + 1]
        if length < 2 or i + length > len(options):
            if kind == IPV4_OPTION_TYPE:
                return unpack_ipv4(options[i:])  # names the precise problem
            raise WireError(f"option {kind} at offset {i} has bad length {length}")
        if kind == IPV4_OPTION_TYPE:
            return unpack_ipv4(options[i : i + length])
        i += length
    return None
