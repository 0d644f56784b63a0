"""The gateway-ping topologies and their params.xdp declarations (no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import topology
from lab.errors import LabError
from lab.gwping import GwPort, peer_of, xdp_attachments

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["gwping.yaml", "gwping-colocated.yaml"])
def test_topologies_load(name: str) -> None:
    topo = topology.load(ROOT / "topologies" / name)
    atts = {(a.node, a.ifname): a for a in xdp_attachments(topo)}
    # every gateway port forwards to the other port of its node
    gateways = [n for n in topo.nodes.values() if n.role == "gateway"]
    assert gateways
    for g in gateways:
        assert atts[(g.name, "eth0")].forward == "eth1"
        assert atts[(g.name, "eth1")].forward == "eth0"
        assert atts[(g.name, "eth0")].prog == "gwping"
    # whoever receives redirected frames runs an XDP program
    for a in atts.values():
        if a.forward:
            assert peer_of(topo, a.node, a.forward) in atts
    assert all(a.mode == "drv" for a in atts.values())


def test_colocated_topology_has_a_gateway_behind_a_gateway() -> None:
    topo = topology.load(ROOT / "topologies" / "gwping-colocated.yaml")
    assert peer_of(topo, "gwa", "eth1") == ("colo", "eth0")
    assert topo.nodes["colo"].role == "gateway"
    assert str(topo.nodes["colo"].address(4)) == "198.18.2.2"


_BASE = """
name: t
nodes:
  a: {role: gateway, interfaces: {eth0: [10.0.0.1/24]}, params: {xdp: XDP}}
  b: {role: host, interfaces: {eth0: [10.0.0.2/24]}}
links: ["a:eth0 -- b:eth0"]
"""


@pytest.mark.parametrize(
    ("xdp", "problem"),
    [
        ("{eth9: {prog: gwping}}", "no link uses interface eth9"),
        ("{eth0: {prog: gwping, forward: eth7}}", "forward: no link uses interface eth7"),
        ("{eth0: {prog: xdp_pass, forward: eth0}}", "only a gwping port forwards"),
        ("{eth0: {prog: gwping, mode: hw}}", "'hw' is not drv or generic"),
        ("{eth0: {prog: gwping, colour: red}}", "unknown field(s) colour"),
        ("{eth0: {prog: ../../tmp/evil}}", "'../../tmp/evil' is not a port program (gwping, xdp_pass)"),
        ("{eth0: {mode: drv}}", "needs 'prog'"),
        ("[eth0]", "must map interface names"),
    ],
)
def test_bad_declarations_are_reported_with_their_place(xdp: str, problem: str) -> None:
    """At load time (Topology.validate), before anything is built."""
    with pytest.raises(LabError) as e:
        topology.loads(_BASE.replace("XDP", xdp), source="t.yaml")
    assert problem in str(e.value)
    assert "t.yaml: nodes.a.params.xdp" in str(e.value)


def test_good_declarations() -> None:
    topo = topology.loads(_BASE.replace("XDP", "{eth0: {prog: gwping, forward: eth0}}"))
    (a,) = xdp_attachments(topo)
    assert (a.node, a.ifname, a.prog, a.forward, a.mode) == ("a", "eth0", "gwping", "eth0", "drv")
    short = topology.loads(_BASE.replace("XDP", "{eth0: xdp_pass}"))
    assert xdp_attachments(short)[0].prog == "xdp_pass"


def test_gw_port_layout_matches_the_c_struct() -> None:
    # struct gw_port { __u32 egress_ifindex; __u8 smac[6]; __u8 dmac[6]; }: 16 bytes
    p = GwPort(0x01020304, bytes(range(6)), bytes(range(6, 12)))
    assert len(p.pack()) == 16
    assert p.pack()[4:] == bytes(range(12))
    with pytest.raises(ValueError):
        GwPort(1, b"\0" * 5, b"\0" * 6).pack()
