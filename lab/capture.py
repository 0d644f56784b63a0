"""Packet captures on lab nodes with tcpdump: as evidence for scenarios, and live
(``toalab capture``) into Wireshark or tshark."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from lab.engines import Job
from lab.errors import LabError
from lab.net import Lab
from lab.topology import IFNAME, Topology

SETTLE_S = 0.05  # after the traffic: its last packets reach the captures


class Capture:
    """``with Capture(lab, "rs1", "eth0", path) as cap: ...`` - pcap written on exit.

    Waits until tcpdump is listening before the body runs, so no packet of
    the body is missed.  ``path`` must be visible to the engine's kernel
    (any host path for the host engine).
    """

    def __init__(self, lab: Lab, node: str, ifname: str, path: str | Path, bpf_filter: str = "",
                 *, buffer_kib: int | None = None, snaplen: int = 0) -> None:  # fmt: skip
        self.lab = lab
        # tcpdump's ring (-B, KiB) and snapshot length: a 1 MB burst on a busy
        # 2-core host outran whole-frame captures (44 of 1661 frames dropped by
        # the kernel, a 32 MiB ring included); headers only kept up
        self.buffer_kib = buffer_kib
        self.snaplen = snaplen  # 0: whole frames
        self.node = node
        self.ifname = ifname
        self.path = Path(path)
        self.filter = bpf_filter
        self.job: Job | None = None

    def __enter__(self) -> Capture:
        self.start()
        self.wait_ready()
        return self

    def start(self) -> None:
        # -Z root: Debian's tcpdump otherwise drops to a user that cannot write
        # the pcap; --immediate-mode: no 1 s block timeout holding packets back
        argv = ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", str(self.snaplen)]
        argv += ["-i", self.ifname, "-w", str(self.path)]
        if self.buffer_kib:
            argv += ["-B", str(self.buffer_kib)]
        if self.filter:
            argv.append(self.filter)
        self.job = self.lab.spawn(self.node, argv)

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.job is not None, "start() first"
        deadline = time.monotonic() + timeout
        while "listening on" not in self.job.output()[1]:
            if not self.job.running:
                raise LabError(f"tcpdump on {self.node}:{self.ifname} failed: {self.job.output()[1].strip()}")
            if time.monotonic() > deadline:
                self.job.terminate()
                raise LabError(f"tcpdump on {self.node}:{self.ifname} did not start within {timeout:.0f} s")
            time.sleep(0.02)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.job is not None:
            time.sleep(SETTLE_S)
            self.stop()

    def stop(self) -> None:
        if self.job is not None and self.job.running:
            self.job.terminate()

    def stats(self) -> str:
        """tcpdump's closing statistics (captured, received, dropped), after stop."""
        assert self.job is not None and not self.job.running, "stop() first"
        return " / ".join(ln.strip() for ln in self.job.output()[1].splitlines() if " packets " in ln)

    def dropped(self) -> int:
        """Frames the kernel dropped because tcpdump fell behind (after stop)."""
        assert self.job is not None and not self.job.running, "stop() first"
        m = re.search(r"(\d+) packets? dropped by kernel", self.job.output()[1])
        if m is None:
            raise LabError(f"tcpdump on {self.node}:{self.ifname} printed no statistics: "
                           f"{self.job.output()[1].strip()[-200:]}")  # fmt: skip
        return int(m.group(1))


def live(lab: Lab, node: str, ifname: str | None, out: BinaryIO, *, count: int = 0,
         bpf_filter: Sequence[str] = ()) -> int:  # fmt: skip
    """Stream a pcap of node:ifname into `out` as tcpdump writes it, until
    Ctrl-C (or `count` packets); tcpdump's exit code.  ifname defaults to the
    node's first linked interface."""
    topo = lab.topology
    lab.ns(node)  # an unknown node: one line naming the lab's nodes
    if ifname is None:
        linked = [a.ifname for a, _ in topo.links_of(node)] if topo else []
        if not linked:
            raise LabError(f"{node} has no linked interface to capture on; name one: {node}:IF")
        ifname = linked[0]
    elif not IFNAME.match(ifname):
        raise LabError(f"interface name {ifname!r}: 1-15 chars of A-Z a-z 0-9 _ . -, starting with a letter")
    elif topo is not None and ifname != "any" and ifname not in _interfaces(topo, node):
        raise LabError(f"{node} has no interface {ifname} (interfaces: {', '.join(_interfaces(topo, node))})")
    argv = ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0", "-i", ifname, "-w", "-"]
    if count:
        argv += ["-c", str(count)]
    return lab.engine.stream(node, [*argv, *bpf_filter], out)


def _interfaces(topo: Topology, node: str) -> list[str]:
    return ["lo", *(a.ifname for a, _ in topo.links_of(node))]


@contextlib.contextmanager
def captures(lab: Lab, points: Sequence[tuple[str, str]], directory: Path) -> Iterator[list[Capture]]:
    """A capture on every (node, interface), started together: the body runs once
    all of them listen; NODE-IF.pcap each, in directory."""
    caps = [Capture(lab, node, ifname, directory / f"{node}-{ifname}.pcap") for node, ifname in points]
    try:
        for cap in caps:
            cap.start()
        for cap in caps:
            cap.wait_ready()
        yield caps
    finally:
        if caps:
            time.sleep(SETTLE_S)
        for cap in caps:
            cap.stop()


def slice_pcap(src: Path, dst: Path, t0: float, t1: float) -> int:
    """Copy the packets of pcap `src` captured within [t0, t1] (the capturing
    kernel's clock, seconds) to `dst`, with src's header; the number copied.
    `src` may still be growing (tcpdump -U writes whole records; a partial
    last one is left out)."""
    import struct

    data = Path(src).read_bytes()
    if len(data) < 24:
        raise LabError(f"{src}: not a pcap (no header yet)")
    magic = data[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<",
             b"\xa1\xb2\x3c\x4d": ">"}.get(magic)  # fmt: skip
    if order is None:
        raise LabError(f"{src}: not a pcap (magic {magic.hex()})")
    frac = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    out, off, n = [data[:24]], 24, 0
    while off + 16 <= len(data):
        sec, sub, incl, _orig = struct.unpack(order + "IIII", data[off : off + 16])
        end = off + 16 + incl
        if end > len(data):
            break
        if t0 <= sec + sub * frac <= t1:
            out.append(data[off:end])
            n += 1
        off = end
    Path(dst).write_bytes(b"".join(out))
    return n
