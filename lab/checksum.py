"""Internet checksum arithmetic (RFC 1071), for checking packets in Python.

The data paths under test compute their checksums incrementally in C; the
lab checks their output by full recomputation with these.
"""

from __future__ import annotations


def ones_sum(data: bytes) -> int:
    """16-bit one's complement sum, folded, not complemented; a packet whose
    checksum verifies sums to 0xffff over pseudo-header + segment."""
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_header(ip_version: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The TCP/UDP pseudo-header of IPv4 (RFC 793) or IPv6 (RFC 8200 §8.1)."""
    if ip_version == 4:
        return src + dst + bytes([0, proto]) + length.to_bytes(2, "big")
    return src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])
