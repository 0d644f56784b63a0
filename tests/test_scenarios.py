"""Scenarios (scenarios/scenarios.toml, lab/scenario.py): the table, the runner on
the host engine, and every scenario on the VM engine in one guest, the whole path
(client -> XDP LB -> real server with toa.ko/uoa.ko or without them).

Each VM scenario is its own test (its id is the scenario id), run through the
pytest plugin's toalab_scenario fixture; consecutive scenarios of one topology
share its lab, so the matrix costs one lab per topology and one guest boot.
"""

from __future__ import annotations

import itertools
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import scenario
from lab.decode import decode
from lab.errors import LabError
from lab.pytest_plugin import scenario_ids

REQUIRED = {
    "l7-proxy-tcp",
    "gwping-colocated",
    *(
        f"fullnat-{f}-{p}{m}"
        for f in ("4to4", "6to6", "6to4", "4to6")
        for p in ("tcp", "udp")
        for m in ("", "-nomod")
    ),
    "vxlan-4to4-tcp",
    "vxlan-4to4-udp",
}


# -- the table --------------------------------------------------------------------------------
def test_the_table_has_the_stable_ids() -> None:
    table = scenario.load()
    missing = REQUIRED - set(table)
    assert not missing, f"scenarios missing from scenarios.toml: {sorted(missing)}"
    for sc in table.values():
        assert sc.topology_path.exists(), sc.id
        if sc.id.endswith("-nomod"):
            assert sc.modules == () and sc.expect_peer == "lb" and sc.expect_lookup == "none", sc.id


def test_unknown_id_is_one_line_with_the_close_matches() -> None:
    with pytest.raises(LabError) as e:
        scenario.select(["fullnat-6to4-upd"])
    msg = str(e.value)
    assert "\n" not in msg and "unknown scenario 'fullnat-6to4-upd'" in msg and "fullnat-6to4-udp" in msg


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('description = "x"\ntopology = "fullnat-4to4"\ntraffic = "tpc"', "traffic: 'tpc' is not one of"),
        ('description = "x"\ntopology = "nowhere"\ntraffic = "tcp"', "topology: no topologies/nowhere.yaml"),
        ('description = "x"\ntopology = "fullnat-4to4"\ntraffic = "tcp"\nmodules = ["ipvs"]', "modules:"),
        ('description = "x"\ntopology = "fullnat-4to4"\ntraffic = "tcp"\nexpect = "client"', "unknown field"),
        ('topology = "fullnat-4to4"\ntraffic = "tcp"', "needs description"),
    ],
)
def test_a_malformed_entry_is_one_line_naming_it(tmp_path: Path, entry: str, message: str) -> None:
    f = tmp_path / "s.toml"
    f.write_text("[bad-one]\n" + entry + "\n")
    with pytest.raises(LabError) as e:
        scenario.load(f)
    assert "[bad-one]" in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_the_host_engine_skips_module_scenarios_with_the_reason() -> None:
    runner = scenario.Runner("host")
    (mod,) = scenario.select(["fullnat-4to4-tcp"])
    (nomod,) = scenario.select(["fullnat-4to4-tcp-nomod"])
    assert "--engine vm" in runner.fits(mod) and "toa" in runner.fits(mod)
    assert runner.fits(nomod) == ""


def test_the_runner_order_keeps_a_topology_and_its_module_sets_together() -> None:
    def sc(sid: str, topo: str, mods: tuple[str, ...]) -> scenario.Scenario:
        return scenario.Scenario(sid, "", topo, "tcp", modules=mods)

    scs = [sc("a", "t1", ("toa", "uoa")), sc("b", "t2", ()), sc("c", "t1", ()),
           sc("d", "t1", ("uoa", "toa")), sc("e", "t2", ("toa",)), sc("f", "t1", ())]  # fmt: skip
    assert [s.id for s in scenario.by_topology(scs)] == ["a", "d", "c", "f", "b", "e"]

    def group(s: scenario.Scenario) -> tuple[str, tuple[str, ...]]:
        return s.topology, tuple(sorted(s.modules))

    order = scenario.by_topology(list(scenario.load().values()))
    changes = sum(1 for x, y in itertools.pairwise(order) if group(x) != group(y))
    assert changes == len({group(s) for s in order}) - 1  # each group runs once, unbroken


def test_junit_report() -> None:
    results = [
        scenario.Result("a", "d", "pass", "vm", saw="rs1 getpeername 1.2.3.4:5", timings={"total_s": 1.5}),
        scenario.Result(
            "b", "d", "fail", "vm", reason="x: expected 1, observed 2", checks=[scenario.check("x", 1, 2)]
        ),
        scenario.Result("c", "d", "skip", "host", reason="needs toa"),
    ]
    root = ET.fromstring(scenario.junit(results))
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    cases = {tc.get("name"): tc for tc in root.iter("testcase")}
    assert cases["b"].find("failure").get("message") == "x: expected 1, observed 2"  # type: ignore[union-attr]
    assert cases["c"].find("skipped") is not None


# -- the runner on the host engine ----------------------------------------------------------
@pytest.mark.host
@pytest.mark.bpf
def test_nomod_scenarios_on_the_host_engine(tmp_path: Path) -> None:
    """The LB inserts the option (seen in the RS's pcap, naming the client); with no
    module the RS application sees the LB; result.json and the pcaps are written."""
    ids = ["fullnat-4to4-tcp-nomod", "http-4to4-nomod", "fullnat-4to4-tcp", "l7-proxy-tcp-nomod",
           "gwping-colocated"]  # fmt: skip
    scs = scenario.select(ids)
    with scenario.Runner("host", out=tmp_path) as runner:
        results = runner.run(scs)
    verdicts = {r.id: (r.verdict, r.reason) for r in results}
    assert verdicts["fullnat-4to4-tcp-nomod"] == ("pass", ""), results[0].checks
    assert verdicts["http-4to4-nomod"] == ("pass", ""), results[1].checks
    assert verdicts["fullnat-4to4-tcp"][0] == "skip"
    assert verdicts["l7-proxy-tcp-nomod"] == ("pass", ""), results[3].checks
    assert verdicts["gwping-colocated"] == ("pass", ""), results[4].checks
    saved = json.loads((tmp_path / "fullnat-4to4-tcp-nomod" / "result.json").read_text())
    assert saved["verdict"] == "pass" and saved["kernel"]["engine"] == "host" and saved["checks"]
    pcaps = {Path(p).name for p in saved["pcaps"]}
    assert pcaps == {"client-eth0.pcap", "lb-eth0.pcap", "lb-eth1.pcap", "rs1-eth0.pcap", "rs2-eth0.pcap",
                     "switch-p0.pcap", "switch-p1.pcap", "switch-p2.pcap"}  # fmt: skip
    rs = saved["saw"].split()[0]
    options = [d.option for d in decode(str(tmp_path / "fullnat-4to4-tcp-nomod" / f"{rs}-eth0.pcap"))]
    assert options, "the RS's pcap shows no packet carrying the option"
    seen = {(str(o.cip), str(o.vip), o.vport) for o in options}
    assert seen == {("198.51.100.10", "203.0.113.10", 80)}, seen


@pytest.mark.host
@pytest.mark.bpf
def test_an_application_that_never_answers_is_a_failed_check_with_the_pcaps_kept(tmp_path: Path) -> None:
    """The lb of this copy of fullnat-4to4 runs no XDP LB: nobody answers on the
    VIP, and the scenario fails naming what it expected, its pcaps on disk."""
    topo = Path("topologies/fullnat-4to4.yaml").read_text()
    topo = topo.replace(
        "  lb:\n    role: lb\n", "  lb:\n    role: lb\n    params:\n      fullnat: {xdp: false}\n"
    )
    (tmp_path / "topologies").mkdir()
    (tmp_path / "topologies" / "plain.yaml").write_text(topo.replace("name: fullnat-4to4", "name: plain"))
    table = tmp_path / "scenarios.toml"
    table.write_text(
        textwrap.dedent("""\
        [nobody-answers]
        description = "no LB on the lb node"
        topology = "plain"
        traffic = "tcp"
        modules = []
    """)
    )
    (sc,) = scenario.select(["nobody-answers"], table)
    with scenario.Runner("host", out=tmp_path / "run") as runner:
        (res,) = runner.run([sc])
    assert res.verdict == "fail"
    assert "traffic: expected the application answers, observed" in res.reason
    assert (tmp_path / "run" / "nobody-answers" / "client-eth0.pcap").stat().st_size > 24


@pytest.mark.host
@pytest.mark.bpf
def test_the_cli_runs_scenarios_writes_reports_and_exits_by_the_verdicts(tmp_path: Path) -> None:
    """toalab run on the host engine: the table, result.json, --json, --junit; a
    scenario that needs the modules is a skip there (exit 0), an unknown id one line
    and exit 2."""
    import subprocess
    import sys

    def toalab(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lab", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    out = tmp_path / "run"
    r = toalab("run", "fullnat-4to4-udp-nomod", "fullnat-4to4-udp", "--engine", "host", "--out", str(out),
               "--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml"))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fullnat-4to4-udp-nomod     PASS" in r.stdout and "fullnat-4to4-udp           SKIP" in r.stdout
    assert "1 passed, 0 failed, 1 skipped" in r.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [x["verdict"] for x in doc["results"]] == ["pass", "skip"] and doc["engine"] == "host"
    assert ET.parse(tmp_path / "r.xml").getroot().get("skipped") == "1"
    assert (out / "fullnat-4to4-udp-nomod" / "result.json").exists()
    r = toalab("run", "fullnat-9to9-tcp")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "unknown scenario 'fullnat-9to9-tcp'" in r.stderr
    r = toalab("list")
    assert r.returncode == 0 and all(sid in r.stdout for sid in REQUIRED)


# -- every scenario in one guest --------------------------------------------------------------
@pytest.mark.vm
@pytest.mark.bpf
@pytest.mark.parametrize("sid", scenario_ids("vm"))
def test_scenario(toalab_scenario, sid: str) -> None:  # type: ignore[no-untyped-def]
    res = toalab_scenario(sid)
    bad = [f"{c.name}: expected {c.expected}, observed {c.observed}" for c in res.checks if not c.ok]
    assert res.verdict == "pass", f"{sid}: {res.reason}\n" + "\n".join(bad)
    assert res.pcaps, f"{sid}: no pcap written"


def test_slice_pcap_keeps_the_window_and_ignores_a_partial_record(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap, wrpcap

    from lab.capture import slice_pcap

    pkts = [IP(dst="192.0.2.1") / UDP(dport=1000 + i) for i in range(3)]
    for i, p in enumerate(pkts):
        p.time = 100.0 + i
    src = tmp_path / "all.pcap"
    wrpcap(str(src), pkts)
    with src.open("ab") as f:
        f.write(bytes(16 + 4)[:18])  # a record still being written
    assert slice_pcap(src, tmp_path / "mid.pcap", 100.5, 101.5) == 1
    assert [p[UDP].dport for p in rdpcap(str(tmp_path / "mid.pcap"))] == [1001]
    (tmp_path / "short").write_bytes(b"\xd4\xc3")
    with pytest.raises(LabError):
        slice_pcap(tmp_path / "short", tmp_path / "x", 0, 1)
