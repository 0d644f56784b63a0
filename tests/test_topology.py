"""Topology files, validation messages and the compiled plan."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lab import topology
from lab.errors import LabError
from lab.plan import Addr, Netns, Plan, Veth
from lab.topology import Topology, TopologyError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "topologies").glob("*.yaml"))

GOOD = """
name: t
nodes:
  a: {role: client, interfaces: {eth0: [192.0.2.1/24]}}
  b: {role: rs, interfaces: {eth0: [192.0.2.2/24]}}
links:
  - a:eth0 -- b:eth0
"""


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_topologies_load(path: Path) -> None:
    topo = topology.load(path)
    assert topo.nodes and topo.links


@pytest.mark.parametrize("name", ["fullnat-4to4", "fullnat-6to6", "fullnat-6to4"])
def test_fullnat_layout(name: str) -> None:
    topo = topology.load(ROOT / "topologies" / f"{name}.yaml")
    roles = {n.name: n.role for n in topo.nodes.values()}
    assert roles == {"client": "client", "lb": "lb", "switch": "switch", "rs1": "rs", "rs2": "rs"}
    svc = topo.services["web"]
    client_family = 4 if name == "fullnat-4to4" else 6
    rs_family = 6 if name == "fullnat-6to6" else 4
    assert svc.vip.version == client_family
    assert topo.node("client").address(client_family)
    assert all(a.version == rs_family for a in svc.local)
    for rs in svc.real_servers:
        assert topo.node(rs).address(rs_family)
        assert not list(topo.node(rs).addresses(6 if rs_family == 4 else 4))


BAD = [
    ("links:\n  - a:eth0 -- c:eth0\n", "t.yaml: links[0]: unknown node 'c'"),
    ("  c: {role: rs, interfaces: {eth1: [192.0.2.2/24]}}\n", "duplicate address 192.0.2.2"),
    ("  c: {role: rs, interfaces: {eth0: [192.0.2.300/24]}}\n", "nodes.c.interfaces.eth0[0]: bad address"),
    ("  c: {role: rs, interfaces: {eth0: [192.0.2.3]}}\n", "needs a prefix length"),
    ("  c: {interfaces: {}}\n", "nodes.c: missing field 'role'"),
    ("  c: {role: wizard}\n", "nodes.c.role: unknown role 'wizard'"),
    ("  c: {role: rs, routes: [{dst: default}]}\n", "nodes.c.routes[0]: a default route needs 'via'"),
    ("  c: {role: rs, sysctls: {kernel.panic: 1}}\n", "only per-namespace net.* sysctls"),
    ("links:\n  - a:eth0 b:eth0\n", "links[0]: 'a:eth0 b:eth0' is not"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[m for _, m in BAD])
def test_each_problem_has_one_clear_line(extra: str, message: str) -> None:
    text = GOOD
    if extra.startswith("links:"):
        text = text.split("links:")[0] + extra
    else:
        text = text.replace("links:", extra + "links:")
    with pytest.raises(TopologyError) as err:
        topology.loads(text, source="t.yaml")
    lines = str(err.value).splitlines()
    assert any(message in line for line in lines), lines
    assert all(line.startswith("t.yaml: ") for line in lines)


def test_all_problems_are_reported_at_once() -> None:
    text = GOOD.replace("192.0.2.2/24", "192.0.2.1/24") + "  - a:eth1 -- z:eth0\n"
    with pytest.raises(TopologyError) as err:
        topology.loads(text, source="t.yaml")
    assert len(err.value.problems) >= 2


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(TopologyError, match=r"t.yaml: line \d+: not valid YAML"):
        topology.loads("name: [unclosed\n", source="t.yaml")
    with pytest.raises(TopologyError, match="top level must be a mapping"):
        topology.loads("- 1\n", source="t.yaml")


def test_missing_file_is_one_line() -> None:
    with pytest.raises(LabError, match=r"nope\.yaml: cannot read topology"):
        topology.load("nope.yaml")


def test_python_api_reads_like_mininet() -> None:
    topo = Topology("py")
    topo.add_node("c", role="client", interfaces={"eth0": ["192.0.2.1/24"]})
    topo.add_node("s", role="switch")
    topo.add_node("r", role="rs", interfaces={"eth0": ["192.0.2.2/24"]},
                  routes=[{"dst": "default", "via": "192.0.2.1"}])
    topo.add_link("c:eth0", "s:p0")
    topo.add_link("s:p1", "r:eth0")
    topo.validate()
    assert topo.node("r").routes[0].dst == ipaddress.ip_network("0.0.0.0/0")
    with pytest.raises(LabError, match=r"unknown node 'x'"):
        topo.node("x")


def test_plan_orders_and_renders() -> None:
    topo = topology.loads(GOOD, source="t.yaml")
    plan = Plan.build(topo, "demo")
    kinds = [type(op) for op in plan.ops]
    assert kinds.index(Netns) < kinds.index(Veth) < kinds.index(Addr)
    script = plan.render_shell()
    assert "netns add toalab-demo-a\n" in script
    assert "link add eth0 mtu 1500 type veth peer name eth0 mtu 1500 netns toalab-demo-b" in script
    assert "addr add 192.0.2.1/24 dev eth0" in script
    assert "ip netns del toalab-demo-a" in plan.render_teardown()
