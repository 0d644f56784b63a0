"""The programs phase as data (lab/programs.py): what the plan of a topology will
run in its kernel, checked without one -- the LB's and gwping's tables hold the
plan's MACs and interface-index placeholders; resolving those gives the same
bytes lab.lb.tables gives the BPF_PROG_TEST_RUN fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import gwping, lb, topology
from lab.plan import Plan, mac_of
from lab.programs import (
    Attached,
    Blob,
    IfIndex,
    MapUpdate,
    ProgLoad,
    TxCsumOff,
    VxlanDev,
    XdpAttach,
    XdpAttachPinned,
    pin_dir,
)

ROOT = Path(__file__).resolve().parent.parent


def plan(name: str, lab: str = "p") -> Plan:
    return Plan.build(topology.load(ROOT / "topologies" / f"{name}.yaml"), lab)


def mac(node: str, ifname: str) -> bytes:
    return bytes.fromhex(mac_of(node, ifname).replace(":", ""))


def test_the_lb_ops_of_fullnat_4to4() -> None:
    p = plan("fullnat-4to4")
    ns = p.namespaces
    pin = str(pin_dir("p"))
    ops = p.programs
    assert ops[0] == ProgLoad(pin, "lb", self_map=lb.M_SELF)
    assert set(ops) >= {
        TxCsumOff(ns["lb"], "eth0"), TxCsumOff(ns["client"], "eth0"),
        XdpAttach(ns["client"], "eth0", "xdp_pass"),
        TxCsumOff(ns["lb"], "eth1"), TxCsumOff(ns["switch"], "p0"), XdpAttach(ns["switch"], "p0", "xdp_pass"),
        XdpAttachPinned(ns["lb"], "eth0", pin), XdpAttachPinned(ns["lb"], "eth1", pin),
    }  # fmt: skip
    # attached before any map is filled, maps last
    kinds = [type(o) for o in ops]
    assert max(i for i, k in enumerate(kinds) if k is not MapUpdate) < kinds.index(MapUpdate)
    # one service, TCP and UDP: two lb_services entries sharing the real servers 0 and 1
    rs = list({o.key: o for o in ops if isinstance(o, MapUpdate) and o.map == lb.M_RS}.values())
    assert [o.key for o in rs] == [Blob.of(lb.u32(0)), Blob.of(lb.u32(1))] and all(o.where == pin for o in rs)
    # lb_rs: egress port as a placeholder, smac the lb's eth1, dmac the RS's eth0
    for o, name in zip(rs, ("rs1", "rs2"), strict=True):
        assert IfIndex(ns["lb"], "eth1") in o.value.parts
        raw = o.value.resolve(lambda n, i: 7)
        assert raw[20:24] == (7).to_bytes(4, "little")
        assert (raw[24:30], raw[30:36]) == (mac("lb", "eth1"), mac(name, "eth0"))
    ports = {o.key: o.value for o in ops if isinstance(o, MapUpdate) and o.map == lb.M_PORTS}
    assert ports == {Blob.of(IfIndex(ns["lb"], "eth0")): Blob.of(lb.u32(lb.PORT_CLIENT)),
                     Blob.of(IfIndex(ns["lb"], "eth1")): Blob.of(lb.u32(lb.PORT_RS))}  # fmt: skip


def test_resolved_ops_are_the_bytes_of_the_fixture_tables() -> None:
    """The same service through lb.entries with placeholders, and lb.tables with ifindexes."""
    p = plan("fullnat-6to4")
    topo = topology.load(ROOT / "topologies" / "fullnat-6to4.yaml")
    idx = {(p.namespaces["lb"], "eth0"): 11, (p.namespaces["lb"], "eth1"): 12}
    ours = [(o.map, o.key.resolve(lambda n, i: idx[n, i]), o.value.resolve(lambda n, i: idx[n, i]))
            for o in p.programs if isinstance(o, MapUpdate)]  # fmt: skip
    svc = next(iter(topo.services.values()))
    fn = lb.kinds.fullnat(topo.node("lb"))
    svcs, rss, locs = lb.service_config(topo, svc, 0, p.namespaces["lb"], fn, p.namespaces)
    rss = [lb.dataclasses.replace(r, ifindex=12) for r in rss]
    # flow_hash's key is drawn anew for every plan: the only entry that differs
    key = int.from_bytes(next(v for m, _k, v in ours if m == lb.M_CFG)[20:24], "little")
    again = plan("fullnat-6to4")
    key2 = next(o.value for o in again.programs if isinstance(o, MapUpdate) and o.map == lb.M_CFG).resolve(
        lambda n, i: 0)[20:24]  # fmt: skip
    assert key != int.from_bytes(key2, "little"), "two attaches got the same hash key"
    cfg = lb.Cfg(float(fn.tcp_idle), float(fn.udp_idle), fn.lport_min, fn.lport_max, key)
    fixture = lb.tables([(s, rss, locs) for s in svcs], cfg, {11: lb.PORT_CLIENT, 12: lb.PORT_RS})
    assert ours == [(u.map, u.key, u.value) for u in fixture]


def test_vxlan_devices_carry_the_plans_macs() -> None:
    p = plan("fullnat-4to4-vxlan")
    vx = [o for o in p.programs if isinstance(o, VxlanDev)]
    assert [(o.dev, o.mac) for o in vx] == [("vx0", mac_of("rs1", "vx0")), ("vx0", mac_of("rs2", "vx0"))]
    rs = next(o for o in p.programs if isinstance(o, MapUpdate) and o.map == lb.M_RS)
    raw = rs.value.resolve(lambda n, i: 1)
    assert raw[78:84] == mac("rs1", "vx0")  # inner_dmac: the RS's vxlan device
    # replies go back through the tunnel: bound to the LB's VTEP, the LB's local address routed into it
    want = ("192.0.2.1", ("192.0.2.2",), mac_of("lb", "eth1"))
    assert {(o.remote, o.peers, o.peer_mac) for o in vx} == {want}
    vteps = [o for o in p.programs if isinstance(o, MapUpdate) and o.map == lb.M_VTEPS]
    assert [o.key for o in vteps] == [Blob.of(lb.vtep_key("192.0.2.1", 42))]


def test_gwping_port_tables() -> None:
    p = plan("gwping-colocated")
    ns = p.namespaces
    port = next(o for o in p.programs if isinstance(o, MapUpdate) and o.where == Attached(ns["gwa"], "eth0"))
    assert port.map == gwping.PORTS_MAP and port.key == Blob.of(IfIndex(ns["gwa"], "eth0"))
    assert port.value == Blob.of(IfIndex(ns["gwa"], "eth1"), mac("gwa", "eth1"), mac("colo", "eth0"))
    assert XdpAttach(ns["prober"], "eth0", "xdp_pass") in p.programs


def test_a_plain_router_has_no_lb_programs() -> None:
    topo = topology.load(ROOT / "topologies" / "fullnat-4to4.yaml")
    topo.node("lb").params["fullnat"] = {"xdp": False}
    assert Plan.build(topo, "p").programs == []


def test_an_unresolved_placeholder_is_refused_for_a_fixture() -> None:
    with pytest.raises(lb.LbError, match="known only in a running lab"):
        lb.Rs("192.0.2.11", 80, IfIndex("ns", "eth1"), bytes(6), bytes(6)).pack()
