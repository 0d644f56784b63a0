"""The seed's byte order and checksum arithmetic, checked exhaustively.

No kernel here: the models in lab/gwping.py (seed_decrement, seed_csum_fix)
against full recomputations, for every checksum value and every first TSval
byte.  tests/test_bpf_gwping.py checks the XDP program against these models.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lab.gwping import (
    MAGIC,
    MAGIC_PASS,
    seed_csum_fix,
    seed_decrement,
    tcp_checksum_expected,
)


def ones_add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def test_magic_pass_is_magic_decremented_on_a_little_endian_host() -> None:
    assert seed_decrement(MAGIC) == MAGIC_PASS == 0xDDADBEEF
    assert MAGIC - 0x01000000 == MAGIC_PASS
    assert MAGIC.to_bytes(4, "big") == bytes.fromhex("deadbeef")
    assert MAGIC_PASS.to_bytes(4, "big") == bytes.fromhex("ddadbeef")
    # what a little-endian CPU reads from those bytes, and the decrement it does
    le = int.from_bytes(bytes.fromhex("deadbeef"), "little")
    assert le == 0xEFBEADDE
    assert (le - 1).to_bytes(4, "little") == bytes.fromhex("ddadbeef")


def test_the_seed_decrement_borrows_into_the_second_byte_at_zero() -> None:
    assert seed_decrement(0x00ADBEEF) == 0xFFACBEEF  # not 0xffadbeef
    assert seed_decrement(0x00000000) == 0xFFFFFFFF
    for b in range(1, 256):
        assert seed_decrement(b << 24 | 0xADBEEF) == (b - 1) << 24 | 0xADBEEF


@pytest.mark.parametrize("delta", [0x0100, 0x0001], ids=["even-offset", "odd-offset"])
def test_incremental_fix_equals_full_recomputation_for_every_checksum(delta: int) -> None:
    # A segment whose one's complement sum folds to f (1..0xffff: never 0,
    # a real segment is not all zeros) carries checksum ~f.  One of its
    # words goes down by delta without borrowing: its sum becomes f - delta
    # (one's complement), the checksum a full recomputation stores is the
    # complement of that.  The seed's fix must give exactly that value.
    for f in range(1, 0x10000):
        check = ~f & 0xFFFF
        f_new = ones_add(f, ~delta & 0xFFFF)
        assert seed_csum_fix(check, delta) == ~f_new & 0xFFFF, hex(f)


def test_minus_zero_input_folds_to_the_right_value() -> None:
    # 0xffff (-0) is what an incremental updater may leave in place of 0
    assert seed_csum_fix(0xFFFF) == seed_csum_fix(0x0000) == 0x0100
    assert seed_csum_fix(0xFEFF) == 0x0000  # the ">= 0xffff" branch


def test_little_endian_arithmetic_is_the_same_as_network_order() -> None:
    # The seed adds htons(0x0100) (= 0x0001 on x86) to the field as loaded
    # by a little-endian CPU; one's complement is byte-order independent.
    def swap(x: int) -> int:
        return ((x & 0xFF) << 8) | (x >> 8)

    for check in range(0x10000):
        c = swap(check) + 0x0001
        le = (c + (c >= 0xFFFF)) & 0xFFFF
        assert swap(le) == seed_csum_fix(check), hex(check)


def _syn(first: int, odd: bool) -> tuple[bytes, int, int]:
    """A SYN with TSval first..ad be ef; TSval at an even (Timestamps first,
    the seed's layout) or odd offset in the TCP header.  Returns the frame,
    the TSval offset and the checksum offset."""
    tsval = first << 24 | 0xADBEEF
    opts = [("Timestamp", (tsval, 0))]
    if odd:
        opts = [("MSS", 1460), ("WScale", 7), *opts]
    frame = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="198.51.100.1", dst="198.51.100.2") / TCP(sport=1234, dport=80, flags="S",
                                                            options=opts)
    )
    tcp = 14 + 20
    ts = tcp + 20 + (2 if not odd else 4 + 3 + 2)
    assert frame[ts : ts + 4] == tsval.to_bytes(4, "big")
    assert (ts - tcp) % 2 == (1 if odd else 0)
    return frame, ts, tcp + 16


def _apply(frame: bytes, ts: int, c: int, new_tsval: int, delta: int) -> bytes:
    out = bytearray(frame)
    out[ts : ts + 4] = new_tsval.to_bytes(4, "big")
    old = int.from_bytes(out[c : c + 2], "big")
    out[c : c + 2] = seed_csum_fix(old, delta).to_bytes(2, "big")
    return bytes(out)


@pytest.mark.parametrize("odd", [False, True], ids=["even", "odd"])
def test_every_first_tsval_byte(odd: bool) -> None:
    delta = 0x0001 if odd else 0x0100
    for first in range(256):
        frame, ts, c = _syn(first, odd)
        out = _apply(frame, ts, c, seed_decrement(first << 24 | 0xADBEEF), delta)
        found, canonical = tcp_checksum_expected(out)
        assert found == 0xFFFF, f"first byte {first:#04x}"
        assert int.from_bytes(out[c : c + 2], "big") == canonical


@pytest.mark.parametrize("odd", [False, True], ids=["even", "odd"])
def test_the_borrow_case(odd: bool) -> None:
    # First byte 0: the seed's u32 decrement (little-endian host) borrows
    # into the second wire byte, 00 ad -> ff ac.  The checksum fix is still
    # right: the second byte has the weight of the first divided by 256
    # modulo 0xffff (it is the low byte of the same word, or the high byte
    # of the next one), so the borrow is exactly one's complement's
    # end-around borrow and the sum still goes down by the first byte's
    # weight.  It only fails when the borrow runs off the end, TSval 0.
    delta = 0x0001 if odd else 0x0100
    frame, ts, c = _syn(0x00, odd)
    assert tcp_checksum_expected(_apply(frame, ts, c, 0xFFACBEEF, delta))[0] == 0xFFFF
    # a byte-only decrement (00 -> ff, no borrow) would break the checksum
    assert tcp_checksum_expected(_apply(frame, ts, c, 0xFFADBEEF, delta))[0] != 0xFFFF
    # TSval 0 wraps to ffffffff: no weight lost, the fix is wrong
    zero = bytearray(frame)
    zero[ts : ts + 4] = bytes(4)
    zero[c : c + 2] = tcp_checksum_expected(bytes(zero))[1].to_bytes(2, "big")
    assert tcp_checksum_expected(bytes(zero))[0] == 0xFFFF
    wrapped = _apply(bytes(zero), ts, c, seed_decrement(0), delta)
    assert seed_decrement(0) == 0xFFFFFFFF
    assert tcp_checksum_expected(wrapped)[0] != 0xFFFF
    # None of it reaches the XDP program: it decrements MAGIC only, whose
    # first byte is 0xde, so the byte decrement it does is the seed's u32
    # decrement exactly (static asserts in bpf/include/gwping.h).
    assert MAGIC >> 24 != 0
    assert seed_decrement(MAGIC) == MAGIC - 0x01000000


def test_wrong_parity_would_break_the_checksum() -> None:
    # why the program picks the delta by the offset's parity
    frame, ts, c = _syn(0xDE, odd=True)
    out = _apply(frame, ts, c, MAGIC_PASS, 0x0100)
    assert tcp_checksum_expected(out)[0] != 0xFFFF
