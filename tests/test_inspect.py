"""``toalab inspect``: what a running lab is made of, from its kernel -- on the
host engine (interfaces, addresses, XDP programs and modes, a qdisc, the LB's
counters after traffic) and in a guest with toa.ko loaded (its counters)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import TOPOLOGIES, needs_root

from lab import impair, kmod, topology
from lab.inspect import inspect
from lab.net import Lab

TOALAB = [sys.executable, "-m", "lab"]


def _check_fullnat(doc: dict[str, Any]) -> None:
    lb_ifs = doc["nodes"]["lb"]["interfaces"]
    assert lb_ifs["eth0"]["addresses"] == ["198.51.100.1/24"]
    assert lb_ifs["eth1"]["addresses"] == ["192.0.2.1/24", "192.0.2.2/24"]
    assert "203.0.113.10/32" in lb_ifs["lo"]["addresses"]
    for ifname in ("eth0", "eth1"):
        assert lb_ifs[ifname]["xdp"]["name"] == "xdp_lb" and lb_ifs[ifname]["xdp"]["mode"] == "native"
    assert lb_ifs["eth0"]["xdp"]["id"] == lb_ifs["eth1"]["xdp"]["id"], "one program on both ports"
    assert doc["nodes"]["client"]["interfaces"]["eth0"]["xdp"]["name"] == "xdp_pass"
    assert doc["nodes"]["rs1"]["interfaces"]["eth0"]["xdp"] is None
    assert doc["nodes"]["rs1"]["role"] == "rs" and doc["nodes"]["switch"]["interfaces"]["p1"]["state"] == "UP"


@pytest.mark.host
@pytest.mark.bpf
def test_inspect_on_the_host(lab_name: str) -> None:
    needs_root()
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name) as lab:
        impair.set_link(lab, "switch:p1", impair.Impairment.parse({"rate": "100mbit"}))
        for _ in range(2):
            lab.exec("client", ["nc", "-z", "-w", "1", "203.0.113.10", "80"])
        argv = [*TOALAB, "inspect", lab_name]
        r = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        _check_fullnat(doc)
        assert doc["nodes"]["switch"]["interfaces"]["p1"]["qdisc"] == "tbf rate 100mbit"
        assert doc["lb"]["counters"]["new_flow"] == 2 and doc["lb"]["counters"]["fwd_opt"] >= 2
        assert doc["modules"] == {} and doc["engine"] == "host"
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
        assert "xdp xdp_lb id" in out and "qdisc tbf rate 100mbit" in out and "new_flow 2" in out


@pytest.mark.vm
@pytest.mark.bpf
def test_inspect_in_a_guest_with_the_module(toalab_guest: Any, toalab_artifacts: Any, lab_name: str) -> None:
    lab = toalab_guest.lab(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name)
    try:
        kmod.load(toalab_guest, "toa", toalab_artifacts)
        try:
            doc = inspect(lab)
            want = kmod.stats(toalab_guest, "toa")
        finally:
            kmod.unload(toalab_guest, "toa")
        _check_fullnat(doc)
        assert doc["engine"] == "vm" and "uoa" not in doc["modules"]
        assert want and doc["modules"]["toa"] == want, "toa.ko's counters, as /proc/net/toa_stats has them"
    finally:
        lab.down()
