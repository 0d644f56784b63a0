"""Packet captures on lab nodes with tcpdump, as evidence for scenarios."""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from lab.engines import Job
from lab.errors import LabError
from lab.net import Lab


class Capture:
    """``with Capture(lab, "rs1", "eth0", path) as cap: ...`` - pcap written on exit.

    Waits until tcpdump is listening before the body runs, so no packet of
    the body is missed.  ``path`` must be visible to the engine's kernel
    (any host path for the host engine).
    """

    def __init__(self, lab: Lab, node: str, ifname: str, path: str | Path, bpf_filter: str = "") -> None:
        self.lab = lab
        self.node = node
        self.ifname = ifname
        self.path = Path(path)
        self.filter = bpf_filter
        self.job: Job | None = None

    def __enter__(self) -> Capture:
        # -Z root: Debian's tcpdump otherwise drops to a user that cannot write
        # the pcap; --immediate-mode: no 1 s block timeout holding packets back
        argv = ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0"]
        argv += ["-i", self.ifname, "-w", str(self.path)]
        if self.filter:
            argv.append(self.filter)
        self.job = self.lab.spawn(self.node, argv)
        deadline = time.monotonic() + 10
        while "listening on" not in self.job.output()[1]:
            if not self.job.running:
                raise LabError(f"tcpdump on {self.node}:{self.ifname} failed: {self.job.output()[1].strip()}")
            if time.monotonic() > deadline:
                self.job.terminate()
                raise LabError(f"tcpdump on {self.node}:{self.ifname} did not start within 10 s")
            time.sleep(0.02)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.job is not None:
            time.sleep(0.05)  # let the last packets of the body reach the capture
            self.job.terminate()
