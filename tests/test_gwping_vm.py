"""Gateway ping on the VM engine, in the guest, as tests/test_gwping_host.py does it
on the host: topologies/gwping-colocated.yaml built in a guest, the data planes
attached there by the engine (through the guest's kernel handle), a probe sent
from the prober answered by colo's kernel, an ordinary SYN forwarded past it.

Probes are built on the host (scapy) and sent in the guest from a raw socket in
the prober's namespace; a raw TCP socket there sees colo's answer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import topology
from lab.gwping import COUNTERS, MAGIC, PORTS_MAP, DataPlane, GwPort
from lab.gwprobe import probe_packet
from lab.net import Lab
from lab.vm.session import VMSession

pytestmark = [pytest.mark.vm, pytest.mark.bpf]

ROOT = Path(__file__).resolve().parent.parent
PORT = 8080
PROBER, COLO, SERVER = "198.18.1.10", "198.18.2.2", "198.18.2.10"
LISTENER = (
    "import socket, time\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT})); s.listen(16)\n"
    "print('listening', flush=True)\n"
    "time.sleep(3600)\n"
)
# send one IPv4 packet (hex argv[1]) raw; report the first SYN-ACK or RST to its source port within 3 s
SEND = (
    "import json, select, socket, struct, sys, time\n"
    "pkt = bytes.fromhex(sys.argv[1]); sport = struct.unpack('!H', pkt[20:22])[0]\n"
    "r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
    "s.sendto(pkt, (sys.argv[2], 0))\n"
    "end = time.time() + 3\n"
    "while time.time() < end:\n"
    "    if not select.select([r], [], [], 0.1)[0]:\n"
    "        continue\n"
    "    d = r.recv(65535); t = d[(d[0] & 15) * 4:]\n"
    "    if struct.unpack('!H', t[2:4])[0] == sport and t[13] & 0x16 in (0x12, 0x04, 0x14):\n"
    "        kind = 'synack' if t[13] & 0x12 == 0x12 else 'rst'\n"
    "        print(json.dumps({'answer': kind, 'from': socket.inet_ntoa(d[12:16])})); sys.exit(0)\n"
    "print(json.dumps({'answer': None}))\n"
)


@dataclass
class Gw:
    lab: Lab
    dp: DataPlane

    def probe(self, sport: int, tsval: int, dst: str = COLO) -> dict[str, object]:
        pkt = bytes(probe_packet(PROBER, dst, sport, PORT, 1000 + sport, tsval))
        r = self.lab.exec("prober", ["python3", "-c", SEND, pkt.hex(), dst], timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def vm(path_kernel: str) -> Iterator[VMSession]:
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root")
    with VMSession(kernel=path_kernel, progress=None) as session:
        yield session


@pytest.fixture(scope="module")
def single(vm: VMSession) -> Iterator[Gw]:
    topo = topology.load(ROOT / "topologies" / "gwping.yaml")
    with vm.lab(topo, name=f"gs{os.getpid() % 100000}") as lab:
        yield Gw(lab, DataPlane.of(topo, lab.engine.record.namespaces, lab.kernel()))


@pytest.fixture(scope="module")
def gw(vm: VMSession) -> Iterator[Gw]:
    topo = topology.load(ROOT / "topologies" / "gwping-colocated.yaml")
    with vm.lab(topo, name=f"gv{os.getpid() % 100000}") as lab:
        dp = DataPlane.of(topo, lab.engine.record.namespaces, lab.kernel())
        job = lab.spawn("colo", ["python3", "-c", LISTENER])
        deadline = time.monotonic() + 30
        while "listening" not in job.output()[0]:
            assert job.running and time.monotonic() < deadline, f"listener: {job.output()}"
            time.sleep(0.1)
        try:
            yield Gw(lab, dp)
        finally:
            job.terminate()


def test_the_vm_engine_attaches_the_data_planes_in_the_guest(gw: Gw) -> None:
    k = gw.lab.kernel()
    assert k.where.startswith("VM ")
    ns = gw.lab.engine.record.ns
    for node, ifname in (
        ("gwa", "eth0"),
        ("gwa", "eth1"),
        ("colo", "eth0"),
        ("colo", "eth1"),
        ("prober", "eth0"),
    ):
        assert k.xdp_mode(ns(node), ifname) == "drv", f"{node}:{ifname}"
        assert k.xdp_prog_id(ns(node), ifname) == gw.dp.prog_id(node, ifname)
    # gwa's port table: eth0 forwards out of eth1, from eth1's MAC to colo's eth0
    mid = k.map_id(gw.dp.prog_id("gwa", "eth0"), PORTS_MAP)
    entries = {e.key: e.value for e in k.map_dump(mid)}
    want = GwPort(k.ifindex(ns("gwa"), "eth1"), k.mac(ns("gwa"), "eth1"), k.mac(ns("colo"), "eth0"))
    assert entries[GwPort.key(k.ifindex(ns("gwa"), "eth0"))] == want.pack()


def test_probe_crosses_the_gateway_and_the_colocated_kernel_answers(gw: Gw) -> None:
    before_gwa, before_colo = gw.dp.counters("gwa", "eth0"), gw.dp.counters("colo", "eth0")
    assert gw.probe(40001, MAGIC) == {"answer": "synack", "from": COLO}
    after_gwa, after_colo = gw.dp.counters("gwa", "eth0"), gw.dp.counters("colo", "eth0")
    assert after_gwa["ping_fwd"] - before_gwa["ping_fwd"] == 1
    assert after_colo["ping_pass"] - before_colo["ping_pass"] == 1
    assert set(after_colo) == set(COUNTERS)


def test_an_ordinary_syn_is_forwarded_past_the_colocated_kernel(gw: Gw) -> None:
    before = gw.dp.counters("colo", "eth0")
    assert gw.probe(40002, 0x12345678) == {"answer": None}
    after = gw.dp.counters("colo", "eth0")
    assert after["ping_pass"] == before["ping_pass"]


def test_probe_through_one_gateway_is_answered_by_the_server(single: Gw) -> None:
    """topologies/gwping.yaml: gwa decrements and forwards; nothing listens on the
    server, whose kernel answers with an RST that crosses gwa back."""
    before = single.dp.counters("gwa", "eth0")
    assert single.probe(40003, MAGIC, SERVER) == {"answer": "rst", "from": SERVER}
    after = single.dp.counters("gwa", "eth0")
    assert after["ping_fwd"] - before["ping_fwd"] == 1
