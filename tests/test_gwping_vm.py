"""Gateway ping on the VM engine, in the guest, as tests/test_gwping_host.py does it
on the host: topologies/gwping-colocated.yaml built in a guest, the data planes
attached there by the engine (through the guest's kernel handle), and a probe
through one gateway answered by the server.  The co-located case (colo's kernel
answers a probe, an ordinary SYN is forwarded past it) is the gwping-colocated
scenario, which tests/test_scenarios.py runs in the guest.

Probes are built on the host (scapy) and sent in the guest from a raw socket in
the prober's namespace; a raw TCP socket there sees colo's answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import topology
from lab.gwping import MAGIC, PORTS_MAP, DataPlane, GwPort
from lab.gwprobe import probe_from
from lab.net import Lab
from lab.vm.session import VMSession

pytestmark = [pytest.mark.vm, pytest.mark.bpf]

ROOT = Path(__file__).resolve().parent.parent
PORT = 8080
PROBER, COLO, SERVER = "198.18.1.10", "198.18.2.2", "198.18.2.10"
@dataclass
class Gw:
    lab: Lab
    dp: DataPlane

    def probe(self, sport: int, tsval: int, dst: str = COLO) -> dict[str, object]:
        return probe_from(self.lab, "prober", PROBER, dst, sport, PORT, tsval)


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
        yield Gw(lab, DataPlane.of(topo, lab.engine.record.namespaces, lab.kernel()))


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


def test_probe_through_one_gateway_is_answered_by_the_server(single: Gw) -> None:
    """topologies/gwping.yaml: gwa decrements and forwards; nothing listens on the
    server, whose kernel answers with an RST that crosses gwa back."""
    before = single.dp.counters("gwa", "eth0")
    assert single.probe(40003, MAGIC, SERVER) == {"answer": "rst", "from": SERVER}
    after = single.dp.counters("gwa", "eth0")
    assert after["ping_fwd"] - before["ping_fwd"] == 1
