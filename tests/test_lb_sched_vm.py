"""``toalab lb show|set|health`` and draining on the VM engine: the same
control (lab/lbctl.py) through the guest's kernel handle, on the guest's
maps.  A down server gets no new flows and comes back; weight 0 takes it
out of the ring; what show reports is what the guest's maps hold; the
health checker marks a server whose application stopped down."""

from __future__ import annotations

from typing import Any

import pytest
from test_lb_sched_host import RPORT, connects, fullnat4, new_flows, wait_until

from lab import lbctl

pytestmark = [pytest.mark.vm, pytest.mark.bpf]


def test_lb_show_set_and_drain_in_a_guest(toalab_guest: Any, lab_name: str) -> None:
    lab = toalab_guest.lab(fullnat4("scheduler: maglev"), name=lab_name)
    try:
        jobs = [lab.spawn(n, ["iperf3", "-s", "-p", str(RPORT)]) for n in ("rs1", "rs2")]
        for n in ("rs1", "rs2"):
            probe = ["nc", "-z", "-w", "1", str(lab.topology.node(n).address(4)), str(RPORT)]
            wait_until(lambda probe=probe: lab.exec("lb", probe).returncode == 0, timeout=20)
        ctl = lbctl.LbControl(lab)
        (web,) = ctl.services()
        assert (web.scheduler, web.ring, [s.up for s in web.servers]) == ("maglev", 2039, [True, True])
        ctl.set_server("web", "rs1", up=False)
        base = new_flows(ctl)
        connects(lab, 6)
        got = new_flows(ctl)
        assert got["rs1"] == base["rs1"] and got["rs2"] == base["rs2"] + 6
        ctl.set_server("web", "rs1", up=True)
        ctl.set_server("web", "rs2", weight=0)
        connects(lab, 4)
        final = new_flows(ctl)
        assert final["rs1"] == got["rs1"] + 4 and final["rs2"] == got["rs2"]
        (web,) = ctl.services()
        assert [(s.weight, s.up) for s in web.servers] == [(1, True), (0, True)]
        # the health checker, probing from the guest's lb node
        checker = lbctl.HealthChecker(ctl)
        jobs[0].terminate()
        jobs[0].wait(20)
        assert checker.round() == []  # one failure: fall is 2
        assert checker.round() == ["web/rs1: down (2 failed tcp probes)"]
        jobs[1].terminate()
    finally:
        lab.down()
