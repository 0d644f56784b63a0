"""``toalab capture``: a live pcap of any interface of any node, streamed
into tshark (with the dissector) or a file, stopped by -c or by Ctrl-C, on
the host and the VM engine; bad requests are one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TOPOLOGIES, listeners, needs_root
from scapy.utils import rdpcap

from lab import topology
from lab.net import Lab

pytestmark = [pytest.mark.host, pytest.mark.bpf]

TOALAB = [sys.executable, "-m", "lab"]
LUA = ROOT / "wireshark" / "toa.lua"
VIP = "203.0.113.10"


def _connects(lab: Lab, n: int) -> None:
    for _ in range(n):
        lab.exec("client", ["nc", "-z", "-w", "1", VIP, "80"])


def _pipe_into_tshark(lab_name: str, where: str, count: int) -> subprocess.Popen[str]:
    # TCP over IPv4 with options only (IGMP reports carry Router Alert)
    argv = [*TOALAB, "capture", "-L", lab_name, where, "-c", str(count), "-f", "tcp and ip[0] & 0xf > 5"]
    cap = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    argv = [shutil.which("tshark") or "tshark", "-n", "-X", f"lua_script:{LUA}", "-r", "-", "-Y", "toa",
            "-T", "fields", "-e", "toa.cip", "-e", "toa.cport", "-e", "toa.vip"]  # fmt: skip
    ts = subprocess.Popen(argv, stdin=cap.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)  # fmt: skip
    assert cap.stdout is not None
    cap.stdout.close()  # tshark holds the pipe now
    ts.cap = cap  # type: ignore[attr-defined]
    return ts


def _listening(proc: subprocess.Popen[Any], path: Path | None = None) -> None:
    """Until tcpdump says it listens (on stderr, which toalab capture passes on)."""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen = b""
    end = time.monotonic() + 20
    while b"listening on" not in seen:
        assert time.monotonic() < end and proc.poll() is None, seen
        seen += proc.stderr.read() or b""
        time.sleep(0.05)


def test_capture_into_tshark_decodes_the_option(lab_name: str) -> None:
    needs_root()
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name) as lab:
        jobs = listeners(lab)
        # Each handshake puts the option on its SYN and third packet, and on the
        # client's FIN too when nc closes before the RS has sent a segment (the
        # LB's insertion rule): connect until -c 6 ends the capture.
        ts = _pipe_into_tshark(lab_name, "switch:p0", 6)
        _listening(ts.cap)  # type: ignore[attr-defined]
        for _ in range(10):
            _connects(lab, 1)
            if ts.cap.poll() is not None:  # type: ignore[attr-defined]
                break
        out, _ = ts.communicate(timeout=30)
        assert ts.cap.wait(10) == 0  # type: ignore[attr-defined]
        rows = [line.split("\t") for line in out.splitlines()]
        assert len(rows) == 6 and all(r[0] == "198.51.100.10" and r[2] == VIP for r in rows), rows
        assert len({r[1] for r in rows}) >= 2, "the option of more than one connection"
        for j in jobs:
            j.terminate()


def test_ctrl_c_ends_a_capture_to_a_file_cleanly(lab_name: str, tmp_path: Path) -> None:
    needs_root()
    pcap = tmp_path / "rs.pcap"
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name) as lab:
        argv = [*TOALAB, "capture", "-L", lab_name, "client:eth0", "-w", str(pcap), "-f", "tcp"]
        cap = subprocess.Popen(argv, stderr=subprocess.PIPE, start_new_session=True)
        _listening(cap)
        _connects(lab, 2)
        time.sleep(0.3)
        os.killpg(cap.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole group
        assert cap.wait(20) == 0
        pkts = rdpcap(str(pcap))
        assert len(pkts) >= 4, "the SYNs and the resets of two refused connections"


def test_bad_requests_are_one_line(lab_name: str) -> None:
    needs_root()
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name):
        for args, msg in [
            (["rs9"], "unknown node 'rs9' in lab"),
            (["rs1:eth7"], "rs1 has no interface eth7 (interfaces: lo, eth0)"),
            (["rs1:e$(id)"], "interface name 'e$(id)'"),
            (["rs1", "-w", "/nonexistent/x.pcap"], "cannot write /nonexistent/x.pcap"),
        ]:
            r = subprocess.run([*TOALAB, "capture", "-L", lab_name, *args], capture_output=True, text=True,
                               timeout=30)  # fmt: skip
            assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


@pytest.mark.vm
def test_capture_in_a_guest(toalab_guest: Any, lab_name: str, tmp_path: Path) -> None:
    """The same command on a lab in a guest: the guest's tcpdump streamed byte for
    byte (no terminal in between), -c ending it."""
    lab = toalab_guest.lab(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name)
    try:
        jobs = listeners(lab)
        pcap = tmp_path / "guest.pcap"
        argv = [*TOALAB, "capture", "-L", lab_name, "rs1", "-w", str(pcap), "-c", "4", "-f", "tcp"]
        cap = subprocess.Popen(argv, stderr=subprocess.PIPE)
        _listening(cap)
        for _ in range(20):
            _connects(lab, 1)
            if cap.poll() is not None:
                break
        assert cap.wait(60) == 0
        assert len(rdpcap(str(pcap))) == 4
        for j in jobs:
            j.terminate()
    finally:
        lab.down()
