"""The host engine on the running kernel: real namespaces, links and packets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TOPOLOGIES, needs_root

from lab import netns, topology
from lab.engines import LabRecord
from lab.errors import LabError
from lab.net import Lab

pytestmark = pytest.mark.host
TOALAB = [sys.executable, "-m", "lab"]


def links_on_host() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_fullnat4_pings_across_the_lb(fullnat4: Lab) -> None:
    for rs in ("192.0.2.11", "192.0.2.12"):
        r = fullnat4.exec("client", ["ping", "-c1", "-W2", rs])
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ttl=63" in r.stdout  # one router (the lb) in between
    r = fullnat4.exec("rs1", ["ip", "-o", "addr", "show", "dev", "eth0"])
    assert "192.0.2.11/24" in r.stdout
    r = fullnat4.exec("switch", ["ip", "-o", "link", "show", "master", "br0"])
    assert {"p0", "p1", "p2"} <= {ln.split(":")[1].strip().split("@")[0] for ln in r.stdout.splitlines()}


def test_fullnat6_pings_across(lab_name: str) -> None:
    needs_root()
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-6to6.yaml"), name=lab_name) as lab:
        r = lab.exec("client", ["ping", "-c1", "-W2", "2001:db8:5::12"])
        assert r.returncode == 0, r.stdout + r.stderr


def test_unknown_node_and_empty_command(fullnat4: Lab) -> None:
    with pytest.raises(LabError, match=r"unknown node 'nope'.*nodes: client, lb"):
        fullnat4.exec("nope", ["true"])
    with pytest.raises(LabError, match="no command"):
        fullnat4.exec("client", [])


def test_spawned_job_runs_in_its_node(fullnat4: Lab) -> None:
    job = fullnat4.spawn("rs1", ["sh", "-c", "ip -o -4 addr show dev eth0; sleep 30"])
    time.sleep(0.3)
    assert job.running
    job.terminate()
    assert not job.running
    assert "192.0.2.11" in job.output()[0]


def test_same_lab_twice_is_refused(fullnat4: Lab) -> None:
    topo = topology.load(TOPOLOGIES / "fullnat-4to4.yaml")
    with pytest.raises(LabError, match="already up"):
        Lab.up(topo, name=fullnat4.name)


def test_two_labs_at_once(fullnat4: Lab, lab_name: str) -> None:
    topo = topology.load(TOPOLOGIES / "fullnat-4to4.yaml")
    with Lab.up(topo, name=lab_name + "b") as other:
        assert other.exec("client", ["ping", "-c1", "-W2", "192.0.2.11"]).returncode == 0
        assert fullnat4.exec("client", ["ping", "-c1", "-W2", "192.0.2.11"]).returncode == 0


def test_failure_halfway_leaves_nothing(lab_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_root()
    before = links_on_host()
    monkeypatch.setenv("TOALAB_FAILPOINT", "fail:20")
    with pytest.raises(LabError, match="failpoint"):
        Lab.up(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name)
    assert netns.listing(f"toalab-{lab_name}-") == []
    assert not LabRecord.path_for(lab_name).exists()
    assert links_on_host() == before


def test_netlink_failure_halfway_leaves_nothing(lab_name: str, tmp_path: Path) -> None:
    needs_root()
    # IPv6 cannot live on a link whose MTU is below 1280: the kernel refuses
    # the address after namespaces and links exist.
    bad = tmp_path / "small-mtu.yaml"
    bad.write_text(
        "name: small\nnodes:\n"
        "  a: {role: host, interfaces: {eth0: ['2001:db8::1/64']}}\n"
        "  b: {role: host, interfaces: {eth0: ['2001:db8::2/64']}}\n"
        "links:\n  - {a: 'a:eth0', b: 'b:eth0', mtu: 1000}\n"
    )
    with pytest.raises(LabError, match=r"building toalab-.*-a: addr\(.*2001:db8::1"):
        Lab.up(topology.load(bad), name=lab_name)
    assert netns.listing(f"toalab-{lab_name}-") == []


def cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOALAB, *args], capture_output=True, text=True, timeout=60, **kw)


def test_cli_up_exec_status_down(lab_name: str) -> None:
    needs_root()
    before_links, before_ns = links_on_host(), netns.listing()
    r = cli("up", str(TOPOLOGIES / "fullnat-4to4.yaml"), "--name", lab_name)
    assert r.returncode == 0, r.stderr
    try:
        r = cli("exec", "--lab", lab_name, "client", "--", "ping", "-c1", "-W2", "192.0.2.11")
        assert r.returncode == 0 and "1 received" in r.stdout, r.stdout + r.stderr
        r = cli("exec", "--lab", lab_name, "client", "--", "false")
        assert r.returncode == 1  # the command's own exit code
        r = cli("status", lab_name, "--json")
        st = json.loads(r.stdout)[0]
        assert st["state"] == "up" and st["nodes"]["rs2"]["role"] == "rs"
        r = cli("exec", "--lab", lab_name, "rs9", "--", "true")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown node 'rs9'" in r.stderr
    finally:
        r = cli("down", lab_name)
    assert r.returncode == 0, r.stderr
    assert netns.listing() == before_ns
    assert links_on_host() == before_links


def test_cli_bad_topology_is_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nnodes:\n  a: {role: client}\nlinks:\n  - a:eth0 -- ghost:eth0\n"
    )
    r = cli("up", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == f"toalab: {bad}: links[0]: unknown node 'ghost' (nodes: a)"
    assert not LabRecord.path_for("bad").exists()


def test_killed_up_is_cleaned_by_down_all(lab_name: str) -> None:
    needs_root()
    before_links = links_on_host()
    env = dict(os.environ, TOALAB_FAILPOINT="stall:25")
    proc = subprocess.Popen(
        [*TOALAB, "up", str(TOPOLOGIES / "fullnat-4to4.yaml"), "--name", lab_name], env=env
    )
    deadline = time.monotonic() + 20
    while len(netns.listing(f"toalab-{lab_name}-")) < 5:
        assert time.monotonic() < deadline, "up never got halfway"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert netns.listing(f"toalab-{lab_name}-")  # something was left behind ...
    r = cli("down", "--all")
    assert r.returncode == 0, r.stderr
    assert f"toalab-{lab_name}-client" in r.stdout or f"lab {lab_name}" in r.stdout
    assert netns.listing(f"toalab-{lab_name}-") == []  # ... and is gone
    assert not LabRecord.path_for(lab_name).exists()
    assert links_on_host() == before_links


def test_ctrl_c_during_up_removes_everything(lab_name: str) -> None:
    needs_root()
    env = dict(os.environ, TOALAB_FAILPOINT="stall:25")
    # SIGINT as a terminal's foreground job has it, even when this suite runs as a
    # background job of a shell without job control (which starts it ignored)
    proc = subprocess.Popen(
        [*TOALAB, "up", str(TOPOLOGIES / "fullnat-4to4.yaml"), "--name", lab_name],
        env=env, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Ctrl-C while up is stalled at its failpoint, halfway through the build
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen, deadline = b"", time.monotonic() + 30
    while b"failpoint: stalled" not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        with contextlib.suppress(BlockingIOError):
            seen += os.read(proc.stderr.fileno(), 4096)
        time.sleep(0.05)
    assert len(netns.listing(f"toalab-{lab_name}-")) >= 5
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "interrupted" in err
    assert netns.listing(f"toalab-{lab_name}-") == []
    assert not LabRecord.path_for(lab_name).exists()


def test_down_ends_what_runs_in_the_lab(lab_name: str) -> None:
    """A daemon left in a node (iperf3 -D, as the README's users start it) ends with
    the lab's down, and the namespaces go with it; nothing else is touched."""
    needs_root()
    outside = subprocess.Popen(["sleep", "60"])
    try:
        assert cli("up", str(TOPOLOGIES / "fullnat-4to4.yaml"), "--name", lab_name).returncode == 0
        r = cli("exec", "-L", lab_name, "rs1", "--", "iperf3", "-s", "-p", "8080", "-D")
        assert r.returncode == 0, r.stderr
        inside = netns.pids([f"toalab-{lab_name}-rs1"])
        assert inside, "the daemon is not in rs1"
        assert cli("down", lab_name).returncode == 0
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{pid}").exists() for pid in inside):  # init reaps them
            assert time.monotonic() < deadline, "the daemon outlived its lab"
            time.sleep(0.05)
        assert netns.listing(f"toalab-{lab_name}-") == []
        assert outside.poll() is None, "a process outside the lab was signalled"
    finally:
        outside.kill()
        outside.wait()


def test_a_forged_lab_record_is_refused_not_acted_on() -> None:
    """What a record on disk names reaches ip netns, rm -rf and kill: a record whose
    namespaces are not its lab's, whose name is not its file's, or whose VM name is a
    path is corrupt, and down --all leaves what it names alone."""
    from lab.engines import LabRecord

    cases = {
        "forged1": {"namespaces": {"client": "some-other-netns"}},
        "forged2": {"name": "../../etc"},
        "forged3": {"engine_data": {"vm": "../../../home"}},
    }
    for name, bad in cases.items():
        rec = {"name": name, "engine": "host", "topology": "t", "roles": {"client": "client"},
               "namespaces": {"client": f"toalab-{name}-client"}, **bad}  # fmt: skip
        LabRecord.path_for(name).parent.mkdir(parents=True, exist_ok=True)
        LabRecord.path_for(name).write_text(json.dumps(rec))
        try:
            with pytest.raises(LabError, match="corrupt lab record"):
                LabRecord.load(name)
            assert name not in [r.name for r in LabRecord.all()]
        finally:
            if name == "forged3":  # the last: down --all removes the records, nothing they name
                r = cli("down", "--all")
                assert r.returncode == 0 and "corrupt record forged1.json" in r.stdout, r.stdout + r.stderr
                assert Path("/etc").is_dir() and Path("/home").is_dir()
    assert not any(LabRecord.path_for(n).exists() for n in cases)
