"""Frames of the control channel (see images/agent/toalab-agent.c for the spec).

The same framing is used on both hops: supervisor <-> guest agent (over the
virtio-serial port) and client <-> supervisor (over the lab's api socket).
Types 32-63 and 96-127 exist only on the client <-> supervisor hop.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from enum import IntEnum

MAGIC = 0x544C
HDR = struct.Struct("<HHII")
MAX_PAYLOAD = 8 << 20

F_STDIN = 1
F_PTY = 2


class T(IntEnum):
    # host -> guest
    EXEC = 1
    STDIN = 2
    KILL = 3
    PING = 4
    SHUTDOWN = 5
    WINSZ = 6
    # client -> supervisor
    STATUS = 32
    STOP = 33
    # guest -> host
    HELLO = 64
    STARTED = 65
    STDOUT = 66
    STDERR = 67
    EXIT = 68
    PONG = 69
    ERROR = 70
    # supervisor -> client
    STATUS_REPLY = 96
    DEAD = 97
    READY = 98


Frame = tuple[int, int, bytes]


class ProtocolError(Exception):
    pass


def pack(kind: int, job: int, payload: bytes = b"") -> bytes:
    return HDR.pack(MAGIC, kind, job, len(payload)) + payload


def exec_payload(
    argv: Iterable[str],
    *,
    netns: str = "",
    cwd: str = "",
    env: Mapping[str, str] | None = None,
    flags: int = 0,
) -> bytes:
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    strings = [netns, cwd, *args, *(f"{k}={v}" for k, v in (env or {}).items())]
    for s in strings:
        if "\0" in s:
            raise ValueError(f"NUL byte in {s!r}")
    return struct.pack("<II", flags, len(args)) + b"".join(s.encode() + b"\0" for s in strings)


def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def i32_of(payload: bytes) -> int:
    return int(struct.unpack_from("<i", payload)[0])


def u32_of(payload: bytes) -> int:
    return int(struct.unpack_from("<I", payload)[0])


def parse_kv(payload: bytes) -> dict[str, str]:
    out = {}
    for line in payload.decode(errors="replace").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


class FrameReader:
    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        buf = self._buf
        off = 0
        while len(buf) - off >= HDR.size:
            magic, kind, job, n = HDR.unpack_from(buf, off)
            if magic != MAGIC or n > MAX_PAYLOAD:
                raise ProtocolError(f"bad frame header (magic {magic:#x}, length {n})")
            if len(buf) - off < HDR.size + n:
                break
            start = off + HDR.size
            out.append((kind, job, bytes(buf[start : start + n])))
            off = start + n
        del buf[:off]
        return out
