"""``toalab graph``: the README's drawing is the generated one; DOT renders
(SVG, PNG) with Graphviz for every shipped topology; a running lab graphs
from its record; awkward names and text stay inside their quotes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TOPOLOGIES, needs_root

from lab import graph, topology
from lab.net import Lab

TOALAB = [sys.executable, "-m", "lab"]


def test_the_readme_drawing_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", readme, re.S)
    assert block, "README has no mermaid drawing"
    assert block.group(1) == graph.mermaid(topology.load(TOPOLOGIES / "fullnat-4to4.yaml")), (
        "README's drawing is stale: paste `toalab graph topologies/fullnat-4to4.yaml`")  # fmt: skip


def _dot() -> str:
    tool = shutil.which("dot")
    if tool is None:
        pytest.fail("Graphviz's dot is not installed (make bootstrap installs graphviz)")
    return tool


@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_topology_renders(path: Path) -> None:
    topo = topology.load(path)
    svg = graph.render(topo, "svg").decode()
    assert _dot() and svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for n in topo.nodes:
        assert f">{n}</text>" in svg, n
    for link in topo.links:
        assert link.a.ifname in svg and link.b.ifname in svg
    for s in topo.services.values():
        assert str(s.vip) in svg and all(r in svg for r in s.real_servers)


def test_png_of_fullnat_6to4(tmp_path: Path) -> None:
    _dot()
    out = tmp_path / "t.png"
    argv = [*TOALAB, "graph", str(TOPOLOGIES / "fullnat-6to4.yaml"), "--format", "png", "-o", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_quotes_and_backslashes_stay_quoted() -> None:
    text = (TOPOLOGIES / "fullnat-4to4.yaml").read_text()
    text = text.replace("description: client", 'description: a "quoted" \\ client').replace(
        "\n  web:\n", '\n  \'we"b\':\n')  # fmt: skip
    topo = topology.loads(text)
    d = graph.dot(topo)
    assert 'a \\"quoted\\" \\\\ client' in d and 'we\\"b: ' in d
    m = graph.mermaid(topo)
    assert "we#quot;b: " in m and 'we"b' not in m
    r = subprocess.run([_dot(), "-Tsvg"], input=d, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "we&quot;b" in r.stdout, r.stderr


def test_graph_of_a_running_lab_and_bad_requests(lab_name: str) -> None:
    needs_root()
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-6to4.yaml"), name=lab_name):
        r = subprocess.run([*TOALAB, "graph", lab_name], capture_output=True, text=True, timeout=60)
        want = graph.mermaid(topology.load(TOPOLOGIES / "fullnat-6to4.yaml"))
        assert r.returncode == 0 and r.stdout == want, r.stderr
    r = subprocess.run([*TOALAB, "graph", "no-such-lab"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no lab named 'no-such-lab'" in r.stderr
    r = subprocess.run([*TOALAB, "graph", "missing.yaml"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing.yaml: cannot read topology" in r.stderr
