"""``toalab graph``: a topology as a picture -- nodes by kind, links with their
interface names and addresses, the services (VIP, port, protocols, real
servers, scheduler) on their LB.

Two texts are generated from the topology alone: Graphviz DOT (rendered to
SVG or PNG by Graphviz's ``dot``) and a Mermaid flowchart (rendered by
GitHub and most Markdown viewers; the README's drawing is one, checked
against this code by the tests).
"""

from __future__ import annotations

import shutil
import subprocess

from lab.errors import LabError
from lab.topology import Node, Topology

FORMATS = ("mermaid", "dot", "svg", "png")

# how each kind looks: Graphviz shape and fill, Mermaid's node brackets
LOOK = {
    "client": ("box", "#dbeafe", '(["', '"])'),
    "lb": ("hexagon", "#fde68a", '{{"', '"}}'),
    "proxy": ("hexagon", "#fde68a", '{{"', '"}}'),
    "switch": ("diamond", "#e5e7eb", '{"', '"}'),
    "router": ("circle", "#e5e7eb", '(("', '"))'),
    "gateway": ("octagon", "#fecaca", '[["', '"]]'),
    "rs": ("box3d", "#bbf7d0", '[("', '")]'),
    "prober": ("box", "#dbeafe", '(["', '"])'),
    "host": ("box", "#f3f4f6", '["', '"]'),
}


def _addrs(node: Node, ifname: str) -> list[str]:
    return [a.with_prefixlen for a in node.interfaces.get(ifname, [])]


def _services(topo: Topology, node: str) -> list[str]:
    out = []
    for s in topo.services.values():
        if s.lb != node:
            continue
        rs = ", ".join(f"{r}×{s.weight(r)}" if s.weight(r) != 1 else r for r in s.real_servers)
        extra = f", persistence {s.persistence} s" if s.persistence else ""
        vx = ", VXLAN" if s.vxlan else ""
        out.append(f"{s.name}: {s.vip} port {s.port} {'/'.join(s.protocols)} -> {rs} port {s.rs_port} "
                   f"({s.scheduler}{extra}{vx})")  # fmt: skip
    return out


def _label(topo: Topology, node: Node, services: bool = True) -> list[str]:
    lines = [node.name, f"({node.role})"]
    lo = _addrs(node, "lo")
    if lo:
        lines.append("lo " + " ".join(lo))
    return lines + (_services(topo, node.name) if services else [])


def _end(topo: Topology, node: str, ifname: str) -> str:
    addrs = _addrs(topo.node(node), ifname)
    return " ".join([ifname, *addrs])


def _q(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def dot(topo: Topology) -> str:
    out = [f'graph "{_q(topo.name)}" {{', "  rankdir=LR; nodesep=0.4; ranksep=0.9;",
           '  node [style=filled, fontname="Helvetica", fontsize=11];',
           '  edge [fontname="Helvetica", fontsize=9];']  # fmt: skip
    if topo.description:
        out.append(f'  labelloc=t; label="{_q(topo.name)}: {_q(topo.description)}";')
    for n in topo.nodes.values():
        shape, fill, _, _ = LOOK.get(n.role, LOOK["host"])
        label = "\\n".join(_q(x) for x in _label(topo, n, services=False))
        out.append(f'  "{_q(n.name)}" [shape={shape}, fillcolor="{fill}", label="{label}"];')
        for i, text in enumerate(_services(topo, n.name)):
            note = f'shape=note, fillcolor="#fffbeb", fontsize=9, label="{_q(text)}"'
            out.append(f'  "{_q(n.name)}.svc{i}" [{note}];')
            out.append(f'  "{_q(n.name)}" -- "{_q(n.name)}.svc{i}" [style=dashed, constraint=false];')
    for link in topo.links:
        a, b = link.a, link.b
        parts = [_end(topo, a.node, a.ifname), _end(topo, b.node, b.ifname)]
        if link.mtu != 1500:
            parts.append(f"mtu {link.mtu}")
        label = "\\n".join(_q(x) for x in parts)
        out.append(f'  "{_q(a.node)}" -- "{_q(b.node)}" [label="{label}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def _mq(s: str) -> str:
    return s.replace('"', "#quot;")


def mermaid(topo: Topology) -> str:
    out = ["flowchart LR"]
    for n in topo.nodes.values():
        _, _, left, right = LOOK.get(n.role, LOOK["host"])
        label = "<br/>".join(_mq(x) for x in _label(topo, n))
        out.append(f"  {n.name}{left}{label}{right}")
    for link in topo.links:
        a, b = link.a, link.b
        text = f"{_end(topo, a.node, a.ifname)} — {_end(topo, b.node, b.ifname)}"
        if link.mtu != 1500:
            text += f", mtu {link.mtu}"
        out.append(f'  {a.node} ---|"{_mq(text)}"| {b.node}')
    return "\n".join(out) + "\n"


def render(topo: Topology, fmt: str) -> bytes:
    """The picture in fmt (FORMATS); svg and png need Graphviz's dot."""
    if fmt == "mermaid":
        return mermaid(topo).encode()
    if fmt == "dot":
        return dot(topo).encode()
    if fmt not in FORMATS:
        raise LabError(f"unknown format '{fmt}' (one of {', '.join(FORMATS)})")
    tool = shutil.which("dot")
    if tool is None:
        raise LabError(f"--format {fmt} needs Graphviz's dot: apt-get install graphviz (or use --format dot)")
    r = subprocess.run([tool, f"-T{fmt}"], input=dot(topo).encode(), capture_output=True, timeout=60)
    if r.returncode != 0:
        raise LabError(f"dot -T{fmt} failed: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout
