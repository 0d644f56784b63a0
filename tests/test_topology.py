"""Topology files, validation messages and the compiled plan."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lab import topology
from lab.errors import LabError
from lab.plan import Addr, Netns, Plan, Veth, mac_of
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
    ma, mb = mac_of("a", "eth0"), mac_of("b", "eth0")
    want = f"link add eth0 address {ma} mtu 1500 type veth peer name eth0 address {mb} mtu 1500"
    assert f"{want} netns toalab-demo-b" in script
    assert "addr add 192.0.2.1/24 dev eth0" in script
    assert "ip netns del toalab-demo-a" in plan.render_teardown()


# -- node kinds: typed params sections (lab/kinds.py) -----------------------------------------
_LB = """
name: k
nodes:
  client: {role: client, interfaces: {eth0: [198.51.100.10/24]}}
  lb:
    role: lb
    interfaces: {eth0: [198.51.100.1/24], eth1: [192.0.2.2/24], lo: [203.0.113.10/32]}
    params: {fullnat: FULLNAT}
  rs1: {role: rs, interfaces: {eth0: [192.0.2.11/24]}, params: RS}
links: ["client:eth0 -- lb:eth0", "lb:eth1 -- rs1:eth0"]
services:
  web: {lb: lb, vip: 203.0.113.10, port: 80, real_servers: [rs1], local: [192.0.2.2]VX}
"""


def _lb(fullnat: str = "{}", rs: str = "{}", vx: str = "") -> str:
    return _LB.replace("FULLNAT", fullnat).replace("RS", rs).replace("VX", vx)


@pytest.mark.parametrize(
    ("fullnat", "problem"),
    [
        ("{udp_opt_pkt: 3}", "nodes.lb.params.fullnat.udp_opt_pkt: unknown field (fields: xdp, client_if, "),
        ("{udp_opt_pkt: 3}", "did you mean 'udp_opt_pkts'?"),
        ("{clinet_if: eth0}", "did you mean 'client_if'?"),
        ("{udp_opt_pkts: many}", "nodes.lb.params.fullnat.udp_opt_pkts: 'many' is not an integer"),
        ("{udp_opt_pkts: 0}", "udp_opt_pkts: 0 out of range 1-255"),
        ("{xdp: 1}", "fullnat.xdp: 1 is not true or false"),
        ("{tcp_idle: -5}", "fullnat.tcp_idle: -5 s out of range"),
        ("{lport_min: 5000, lport_max: 4000}", "5000-4000 is not a range within 1-65535"),
        ("{rs_if: eth7}", "fullnat.rs_if: no link uses interface 'eth7' of lb"),
        ("{rs_if: 'eth1; reboot'}", "'eth1; reboot' is not an interface name"),
        ("[1, 2]", "nodes.lb.params.fullnat: must be a mapping"),
    ],
)
def test_a_bad_fullnat_field_fails_validation_in_one_line(fullnat: str, problem: str) -> None:
    with pytest.raises(TopologyError) as e:
        topology.loads(_lb(fullnat), source="k.yaml")
    assert any(problem in p for p in e.value.problems), e.value.problems
    assert all(p.startswith("k.yaml: ") and "\n" not in p for p in e.value.problems)


def test_good_fullnat_settings_are_typed() -> None:
    from lab import kinds

    t = topology.loads(_lb("{udp_opt_pkts: 3, tcp_idle: 30, xdp: false}"))
    f = kinds.fullnat(t.node("lb"))
    assert (f.udp_opt_pkts, f.tcp_idle, f.udp_idle, f.xdp, f.rs_if) == (3, 30, 60.0, False, "eth1")
    assert kinds.fullnat(topology.loads(_lb()).node("lb")) == kinds.Fullnat()


@pytest.mark.parametrize(
    ("rs", "vx", "problem"),
    [
        ("{fullnat: {}}", "", "rs1.params.fullnat: role rs takes no 'fullnat' section (sections: vxlan"),
        ("{vxlan: {vni: 1, colour: red}}", ", vxlan: true", "nodes.rs1.params.vxlan.colour: unknown field"),
        ("{vxlan: {vni: 16777216}}", ", vxlan: true", "vxlan.vni: 16777216 out of range"),
        ("{vxlan: {dev: vx0}}", ", vxlan: true", "vxlan.vni: missing field"),
        ("{}", ", vxlan: true", "services.web: vxlan service, but real server rs1 has no params.vxlan"),
    ],
)
def test_rs_sections(rs: str, vx: str, problem: str) -> None:
    with pytest.raises(TopologyError) as e:
        topology.loads(_lb(rs=rs, vx=vx), source="k.yaml")
    assert any(problem in p for p in e.value.problems), e.value.problems


_PROXY = """
name: p
nodes:
  proxy: {role: proxy, interfaces: {eth1: [192.0.2.1/24]}, params: {l7: L7}}
  rs1: {role: rs, interfaces: {eth0: [192.0.2.11/24]}}
links: ["proxy:eth1 -- rs1:eth0"]
"""


@pytest.mark.parametrize(
    ("l7", "problem"),
    [
        ("{upstream: proxy}", "nodes.proxy.params.l7.upstream: 'proxy' is not a node of role rs"),
        ("{upstream: rs9}", "nodes.proxy.params.l7.upstream: 'rs9' is not a node of role rs"),
        ("{upstream: rs1, port: 0}", "nodes.proxy.params.l7.port: 0 out of range 1-65535"),
        ("{port: 80}", "nodes.proxy.params.l7.upstream: missing field"),
        ("{upstream: rs1, prot: 80}", "did you mean 'port'?"),
    ],
)
def test_proxy_section(l7: str, problem: str) -> None:
    with pytest.raises(TopologyError) as e:
        topology.loads(_PROXY.replace("L7", l7), source="p.yaml")
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_every_shipped_topology_validates_with_its_kinds() -> None:
    for f in sorted((Path(__file__).resolve().parent.parent / "topologies").glob("*.yaml")):
        topology.load(f)


# -- names that reach a shell --------------------------------------------------------------
_TWO = """
name: inj
nodes:
  a: {role: switch, sysctls: SYS}
  b: {role: host, interfaces: {eth0: [10.9.0.2/24]}}
links: [{a: "a:IFA", b: "b:eth0"}]
"""


@pytest.mark.parametrize(
    ("ifa", "sysctls", "problem"),
    [
        ("eth0\\nEOF\\ntouch /tmp/owned\\n", "{}", "interface name 'eth0\\nEOF\\ntouch /tmp/owned' of a"),
        ("eth0;reboot", "{}", "interface name 'eth0;reboot' of a: 1-15 chars"),
        ("eth0", '{"net/ipv4/../../../../tmp/x": 1}', "only per-namespace net.* sysctls"),
        ("eth0", '{"net.ipv4.ip_forward; reboot": 1}', "only per-namespace net.* sysctls"),
    ],
)
def test_a_name_that_would_reach_a_shell_fails_validation(ifa: str, sysctls: str, problem: str) -> None:
    with pytest.raises(TopologyError) as e:
        topology.loads(_TWO.replace("IFA", ifa).replace("SYS", sysctls), source="inj.yaml")
    assert any(problem in p for p in e.value.problems), e.value.problems
    assert not any("\n" in p for p in e.value.problems)


def test_the_vm_script_refuses_what_validation_would_have_caught() -> None:
    """Defence in depth: a plan built from an unvalidated topology never renders."""
    t = Topology("inj")
    t.add_node("a", interfaces={"eth0": ["10.9.0.1/24"]})
    t.add_node("b", interfaces={"eth0": ["10.9.0.2/24"]})
    t.add_link("a:eth0\nEOF\ntouch /tmp/owned\n", "b:eth0")
    with pytest.raises(TopologyError):
        t.validate()
    with pytest.raises(LabError, match="refusing to render"):
        Plan.build(t, "inj").render_shell()
    t2 = Topology("inj2")
    t2.add_node("a", interfaces={"eth0": ["10.9.0.1/24"]}, sysctls={"net/../../tmp/x": "1"})
    t2.add_node("b", interfaces={"eth0": ["10.9.0.2/24"]})
    t2.add_link("a:eth0", "b:eth0")
    with pytest.raises(LabError, match="refusing sysctl key"):
        Plan.build(t2, "inj2").render_shell()


def test_macs_come_from_the_names_and_are_locally_administered_unicast() -> None:
    assert mac_of("lb", "eth1") == mac_of("lb", "eth1") != mac_of("lb", "eth0")
    first = int(mac_of("rs1", "eth0").split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    plan = Plan.build(topology.loads(GOOD), "x")
    veths = [op for op in plan.ops if isinstance(op, Veth)]
    assert veths and all(v.mac and v.peer_mac for v in veths)
