"""Gateway ping end to end on the host engine: real veths, native XDP, real kernels.

topologies/gwping-colocated.yaml: prober -- gwa -- colo -- sink, gwa and
colo running bpf/gwping.c on both ports, colo also running a business
service (a TCP listener on 198.18.2.2:8080).  A probe crosses gwa's data
plane (decremented, forwarded), reaches colo's data plane as MAGIC_PASS and
colo's kernel answers; an ordinary SYN to the same address and port is
forwarded by colo's data plane to the sink and nobody answers.

Labs are named tlgw<pid><x>, so their namespaces are toalab-tlgw...-<node>.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from lab import netns, topology
from lab.capture import Capture
from lab.gwping import MAGIC, MAGIC_PASS, DataPlane
from lab.gwprobe import run_probes
from lab.net import Lab

pytestmark = [pytest.mark.host, pytest.mark.bpf]

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "topologies"
SERVICE_PORT = 8080
COLO4, COLO6 = "198.18.2.2", "2001:db8:70:2::2"
LISTENER = (
    "import socket, time\n"
    "socks = []\n"
    "for fam, addr in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):\n"
    "    s = socket.socket(fam, socket.SOCK_STREAM)\n"
    "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    if fam == socket.AF_INET6:\n"
    "        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
    f"    s.bind((addr, {SERVICE_PORT}))\n"
    "    s.listen(128)\n"
    "    socks.append(s)\n"
    "print('listening', flush=True)\n"
    "time.sleep(3600)\n"
)


@dataclass
class GwLab:
    lab: Lab
    dp: DataPlane

    def ns(self, node: str) -> str:
        return self.lab.engine.record.ns(node)

    def counters(self, node: str, ifname: str) -> dict[str, int]:
        return self.dp.counters(node, ifname)

    def nstat(self, node: str, name: str) -> int:
        out = self.lab.exec(node, ["nstat", "-az", name]).check().stdout
        for line in out.splitlines():
            if line.startswith(name):
                return int(line.split()[1])
        raise AssertionError(f"nstat has no {name}: {out}")


@contextmanager
def _up(topo_file: str, suffix: str) -> Iterator[GwLab]:
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, XDP)")
    name = f"tlgw{os.getpid() % 100000}{suffix}"
    topo = topology.load(TOPOLOGIES / topo_file)
    lab = Lab.up(topo, name=name)  # the engine attaches params.xdp
    try:
        yield GwLab(lab, DataPlane.of(topo, lab.engine.record.namespaces, lab.kernel()))
    finally:
        lab.down()
    assert not netns.listing(f"toalab-{name}-")


@pytest.fixture(scope="module")
def colo() -> Iterator[GwLab]:
    with _up("gwping-colocated.yaml", "c") as g:
        job = g.lab.spawn("colo", [sys.executable, "-c", LISTENER])
        try:
            deadline = time.monotonic() + 10
            while "listening" not in job.output()[0]:
                assert job.running, job.output()
                assert time.monotonic() < deadline, "listener did not start"
                time.sleep(0.05)
            yield g
        finally:
            job.terminate()


@pytest.fixture(scope="module")
def single() -> Iterator[GwLab]:
    with _up("gwping.yaml", "s") as g:
        yield g


def _toalab(*args: str, node_lab: GwLab | None = None, node: str = "prober",
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`toalab ARGS` through the lead's CLI entry point, on NODE (as
    `toalab exec NODE -- toalab ...` does) or on the host."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from lab.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, *args]
    if node_lab is not None:
        argv = ["ip", "netns", "exec", node_lab.ns(node), *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _tsval(tcp: TCP) -> int | None:
    for name, val in tcp.options:
        if name == "Timestamp":
            return int(val[0])
    return None


def _mac(g: GwLab, node: str, ifname: str) -> str:
    return g.lab.kernel().mac(g.ns(node), ifname).hex(":")


def _frames(pcap: Path, dport: int) -> list:
    return [p for p in rdpcap(str(pcap)) if p.haslayer(TCP) and p[TCP].dport == dport
            and int(p[TCP].flags) & 0x12 == 0x02]


# -- the co-located node -------------------------------------------------------------------


@pytest.mark.parametrize("target", [COLO4, COLO6], ids=["ipv4", "ipv6"])
def test_probe_crosses_gateway_and_the_colocated_kernel_answers(
    colo: GwLab, target: str, tmp_path: Path
) -> None:
    before_gwa = colo.counters("gwa", "eth0")
    before_colo = colo.counters("colo", "eth0")
    csum_err = colo.nstat("colo", "TcpInCsumErrors")
    pcap = tmp_path / "colo-eth0.pcap"
    with Capture(colo.lab, "colo", "eth0", pcap, f"tcp dst port {SERVICE_PORT}"):
        p = _toalab("gwping", target, "-c", "3", "-i", "0.2", "-p", str(SERVICE_PORT),
                    node_lab=colo)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("SYN-ACK from")]
    assert len(lines) == 3, p.stdout
    # colo's kernel echoes the TSval it received: the decremented magic
    assert all("tsecr=0xddadbeef" in ln and "time=" in ln for ln in lines), p.stdout
    assert "3 probes transmitted, 3 received, 0% packet loss" in p.stdout
    assert "rtt min/avg/max/mdev" in p.stdout

    # on colo's wire: dd ad be ef, a checksum that verifies, one hop (gwa) off the TTL
    syns = _frames(pcap, SERVICE_PORT)
    assert len(syns) == 3
    ipl = IPv6 if ":" in target else IP
    for s in syns:
        assert _tsval(s[TCP]) == MAGIC_PASS
        raw = bytes(s[TCP])
        stored = s[TCP].chksum
        recomputed = ipl(bytes(s[ipl]))  # re-parse, then rebuild the checksum
        del recomputed[TCP].chksum
        assert ipl(bytes(recomputed))[TCP].chksum == stored, raw.hex()
        assert (s[IP].ttl if ipl is IP else s[IPv6].hlim) == 63
        assert s.src == _mac(colo, "gwa", "eth1")
        assert s.dst == _mac(colo, "colo", "eth0")
    assert colo.nstat("colo", "TcpInCsumErrors") == csum_err

    after_gwa = colo.counters("gwa", "eth0")
    after_colo = colo.counters("colo", "eth0")
    assert after_gwa["ping_fwd"] - before_gwa["ping_fwd"] == 3
    assert after_colo["ping_pass"] - before_colo["ping_pass"] == 3
    assert after_colo["ping_fwd"] == before_colo["ping_fwd"]


def test_ordinary_syn_at_the_colocated_node_is_forwarded_by_its_data_plane(
    colo: GwLab, tmp_path: Path
) -> None:
    before = colo.counters("colo", "eth0")
    pcap = tmp_path / "sink-eth0.pcap"
    other = 0x12345678
    with Capture(colo.lab, "sink", "eth0", pcap, f"tcp dst port {SERVICE_PORT}"):
        p = _toalab("gwping", COLO4, "-c", "2", "-i", "0.2", "-W", "0.5", "--tsval",
                    hex(other), "-p", str(SERVICE_PORT), node_lab=colo)
    # nobody answers: colo's kernel never saw the SYNs
    assert p.returncode == 1, p.stdout + p.stderr
    assert "2 probes transmitted, 0 received, 100% packet loss" in p.stdout
    assert p.stdout.count("no answer from") == 2
    syns = _frames(pcap, SERVICE_PORT)
    assert len(syns) == 2
    for s in syns:
        assert s[IP].dst == COLO4  # addressed to colo, delivered to the sink
        assert _tsval(s[TCP]) == other  # untouched by the ping logic
        assert s[IP].ttl == 62  # two gateways: gwa and colo
        assert s.src == _mac(colo, "colo", "eth1")
        assert s.dst == _mac(colo, "sink", "eth0")
    after = colo.counters("colo", "eth0")
    assert after["syn_ts_other"] - before["syn_ts_other"] == 2
    assert after["ping_pass"] == before["ping_pass"]
    assert after["fwd_redirect"] - before["fwd_redirect"] >= 2


def test_prober_in_process_with_netns(colo: GwLab) -> None:
    out = io.StringIO()
    with netns.entered(colo.ns("prober")):
        stats = run_probes(COLO6, 2, 0.1, port=SERVICE_PORT, out=out)
    assert stats.received == 2, out.getvalue()
    assert [r.kind for r in stats.replies] == ["SYN-ACK", "SYN-ACK"]
    assert all(r.tsecr == MAGIC_PASS for r in stats.replies)
    assert len({r.sport for r in stats.replies}) == 2  # a source port per probe


def test_cli_netns_option(colo: GwLab) -> None:
    p = _toalab("gwping", "--netns", colo.ns("prober"), COLO4, "-c", "1", "-p",
                str(SERVICE_PORT))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 probes transmitted, 1 received, 0% packet loss" in p.stdout


def test_cli_errors(colo: GwLab) -> None:
    p = _toalab("gwping", "--netns", "tlgw-no-such-ns", COLO4, "-c", "1")
    assert p.returncode != 0
    assert "tlgw-no-such-ns" in p.stderr


# -- one gateway, an ordinary server behind it ----------------------------------------------


@pytest.mark.parametrize("target", ["198.18.2.10", "2001:db8:70:2::10"], ids=["ipv4", "ipv6"])
def test_probe_through_one_gateway(single: GwLab, target: str) -> None:
    before = single.counters("gwa", "eth0")
    out = io.StringIO()
    with netns.entered(single.ns("prober")):
        stats = run_probes(target, 2, 0.1, port=9, out=out)
    assert stats.received == 2, out.getvalue()
    assert [r.kind for r in stats.replies] == ["RST", "RST"]  # nothing listens on 9
    after = single.counters("gwa", "eth0")
    assert after["ping_fwd"] - before["ping_fwd"] == 2


def test_magic_pass_at_a_gateway_goes_to_its_kernel(single: GwLab) -> None:
    # MAGIC_PASS at gwa is handed to gwa's kernel, which routes it (it is a
    # router too) to the server: answered, but not by the data plane.
    before = single.counters("gwa", "eth0")
    out = io.StringIO()
    with netns.entered(single.ns("prober")):
        stats = run_probes("198.18.2.10", 1, 0.1, port=9, tsval=MAGIC_PASS, out=out)
    assert stats.received == 1, out.getvalue()
    after = single.counters("gwa", "eth0")
    assert after["ping_pass"] - before["ping_pass"] == 1
    assert after["ping_fwd"] == before["ping_fwd"]


def test_loss_is_reported_and_exits_nonzero(single: GwLab) -> None:
    # 198.18.2.99 is nobody: gwa forwards the probe to the server, which drops it
    p = _toalab("gwping", "198.18.2.99", "-c", "2", "-i", "0.1", "-W", "0.3", node_lab=single)
    assert p.returncode == 1
    assert "2 probes transmitted, 0 received, 100% packet loss" in p.stdout
    assert MAGIC == 0xDEADBEEF and "TSval 0xdeadbeef" in p.stdout


def test_native_xdp_is_attached(single: GwLab) -> None:
    for node, ifname in (("gwa", "eth0"), ("gwa", "eth1"), ("prober", "eth0")):
        k = single.lab.kernel()
        assert k.xdp_mode(single.ns(node), ifname) == "drv"
        assert k.xdp_prog_id(single.ns(node), ifname) == single.dp.prog_id(node, ifname)
