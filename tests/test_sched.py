"""The LB's schedulers as rings (lab/sched.py), the services' scheduling
settings in a topology, and the ``toalab lb set`` grammar: pure Python, no
kernel.  What the rings do to real flows is in test_lb_bpf.py (the program
under BPF_PROG_TEST_RUN) and test_lb_sched_host.py (a running lab)."""

from __future__ import annotations

import pytest
from conftest import TOPOLOGIES

from lab import lbctl, sched, topology

S = sched.Server


def servers(*weights: int) -> list[sched.Server]:
    return [S(f"rs{i + 1}", w) for i, w in enumerate(weights)]


@pytest.mark.parametrize("weights", [(1, 1), (1, 2, 3), (5, 1, 1, 1), (1,) * 16, (100, 1)])
def test_maglev_shares_follow_the_weights(weights: tuple[int, ...]) -> None:
    table = sched.maglev(servers(*weights))
    assert len(table) == sched.RING and set(table) == set(range(len(weights)))
    total = sum(weights)
    for got, w in zip(sched.shares(table, len(weights)), weights, strict=True):
        assert got == pytest.approx(w / total, abs=0.01), (weights, sched.shares(table, len(weights)))


@pytest.mark.parametrize("n", [3, 5, 8, 16])
def test_maglev_one_server_leaving_moves_about_one_nth(n: int) -> None:
    before = sched.maglev(servers(*[1] * n))
    gone = n // 2
    after = sched.maglev([S(s.name, 1, up=i != gone) for i, s in enumerate(servers(*[1] * n))])
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / sched.RING
    owned = before.count(gone) / sched.RING
    assert gone not in after
    # everything the leaver had moves; of the rest, next to nothing
    assert owned <= moved <= owned + 0.04, (n, owned, moved)
    assert moved == pytest.approx(1 / n, abs=0.05)


def test_maglev_is_a_function_of_names_not_order() -> None:
    a = sched.maglev([S("x"), S("y"), S("z")])
    b = sched.maglev([S("z"), S("x"), S("y")])
    names_a = ["xyz"[i] for i in a]
    names_b = ["zxy"[i] for i in b]
    assert names_a == names_b


def test_rr_and_wrr_periods() -> None:
    assert sched.ring("rr", servers(1, 5, 1)) == [0, 1, 2]
    assert sched.ring("wrr", servers(1, 3)) == [1, 0, 1, 1]
    smooth = sched.ring("wrr", servers(5, 1, 1))
    assert smooth == [0, 0, 1, 0, 2, 0, 0]  # nginx's smooth weighted round robin for 5,1,1
    assert sched.ring("wrr", servers(2, 4)) == [1, 0, 1]  # gcd taken out


def test_heavy_weights_are_scaled_into_the_ring() -> None:
    table = sched.ring("wrr", servers(65535, 30000, 1))
    assert len(table) <= sched.RING and table.count(2) >= 1
    assert table.count(0) / len(table) == pytest.approx(65535 / 95536, abs=0.01)


@pytest.mark.parametrize("name", list(sched.SCHEDULERS))
def test_no_new_flows_for_down_or_weight_zero(name: str) -> None:
    table = sched.ring(name, [S("a"), S("b", 0), S("c", 3, up=False), S("d", 2)])
    assert set(table) == {0, 3}
    assert sched.ring(name, [S("a", up=False), S("b", 0)]) == []


def test_unknown_scheduler() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'lc'"):
        sched.ring("lc", servers(1))


# -- the topology's side ------------------------------------------------------------------

BASE = (TOPOLOGIES / "fullnat-4to4.yaml").read_text()


def with_service(extra: str, real_servers: str = "[rs1, rs2]") -> str:
    text = BASE.replace("    real_servers: [rs1, rs2]\n", f"    real_servers: {real_servers}\n")
    return text + "".join(f"    {line}\n" for line in extra.splitlines())


def test_scheduling_settings_load() -> None:
    t = topology.loads(
        with_service(
            "scheduler: wrr\npersistence: 300\nhealth: {check: tcp, interval: 0.5, fall: 3}",
            "[rs1, {node: rs2, weight: 3}]",
        )
    )
    s = t.services["web"]
    assert (s.scheduler, s.persistence, s.weight("rs1"), s.weight("rs2")) == ("wrr", 300, 1, 3)
    assert s.health == topology.HealthCheck("tcp", 0.5, 1.0, 2, 3)
    plain = topology.loads(BASE).services["web"]
    assert (plain.scheduler, plain.persistence, plain.health) == (sched.DEFAULT, 0, None)


@pytest.mark.parametrize(
    ("extra", "rs", "msg"),
    [
        ("scheduler: lc", "[rs1, rs2]", "services.web.scheduler: unknown scheduler 'lc'"),
        ("persistence: -1", "[rs1, rs2]", "services.web.persistence: -1 is not a whole number of seconds"),
        ("persistence: 1h", "[rs1, rs2]", "services.web.persistence: '1h' is not a whole number"),
        ("", "[rs1, {node: rs2, weight: 70000}]", "real_servers[1].weight: 70000 is not a whole number"),
        ("", "[rs1, {node: rs2, wieght: 2}]", "real_servers[1]: a real server is a name or {node"),
        ("", "[rs1, rs1]", "real_servers[1]: real server 'rs1' is listed twice"),
        ("", "[]", "services.web.real_servers: must be a non-empty list"),
        ("health: {check: http}", "[rs1, rs2]", "services.web.health.check: unknown check 'http'"),
        ("health: {interval: 0}", "[rs1, rs2]", "services.web.health.interval: 0 is not a number of seconds"),
        ("shceduler: rr", "[rs1, rs2]", "services.web: unknown field(s) shceduler"),
    ],
)
def test_bad_scheduling_settings_one_line_each(extra: str, rs: str, msg: str) -> None:
    with pytest.raises(topology.TopologyError) as ei:
        topology.loads(with_service(extra, rs), source="t.yaml")
    assert any(msg in p for p in ei.value.problems), ei.value.problems
    assert all("\n" not in p for p in ei.value.problems)


def test_tcp_health_check_on_a_udp_service() -> None:
    text = with_service("health: {check: tcp}").replace("protocols: [tcp, udp]", "protocols: [udp]")
    with pytest.raises(topology.TopologyError, match="a tcp check needs a tcp service; use check: ping"):
        topology.loads(text)


# -- toalab lb set ---------------------------------------------------------------------------


def test_lb_set_grammar() -> None:
    assert lbctl.parse_set(["web", "scheduler=sh", "persistence=60"]) == (
        "web", None, {"scheduler": "sh", "persistence": "60"})  # fmt: skip
    assert lbctl.parse_set(["web", "rs2", "weight=0", "state=down"]) == (
        "web", "rs2", {"weight": "0", "state": "down"})  # fmt: skip
    for words, msg in [
        ([], "usage: toalab lb set SERVICE"),
        (["web"], "nothing to set"),
        (["web", "rs1"], "nothing to set"),
        (["web", "weight=2"], "'weight=2': a service web takes persistence, scheduler"),
        (["web", "rs1", "scheduler=rr"], "'scheduler=rr': a server rs1 takes state, weight"),
    ]:
        with pytest.raises(lbctl.LbCtlError, match=msg):
            lbctl.parse_set(words)
