"""``toalab inspect``: everything a running lab is made of, read from its
kernel in one round trip -- every node's interfaces (state, MTU, MAC,
addresses, the XDP program and mode, the qdisc), the modules loaded in that
kernel with their counters, and the counters of the XDP LB and of the
gateway data planes.  ``--json`` for scripts (as containerlab's
``inspect --format json``)."""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

from lab import impair, kmod
from lab.kernel import xdp_prog_of

if TYPE_CHECKING:
    from lab.net import Lab

MODULES = ("toa", "uoa")
_MODE_NAMES = {1: "native", 2: "generic", 3: "offload"}  # ip -j's xdp.mode


def _script(lab: Lab) -> str:
    out = []
    for node in lab.engine.record.namespaces:
        ns = shlex.quote(lab.ns(node))
        out += [f"echo '@node {node}'", f"ip -n {ns} -j -d addr show",
                f"echo '@qdisc {node}'", f"tc -n {ns} -j qdisc show"]  # fmt: skip
    for m in MODULES:
        stats = f"grep -q '^{m} ' /proc/modules && cat /proc/net/{m}_stats 2>/dev/null || true"
        out += [f"echo '@module {m}'", stats]
    return "\n".join(out) + "\n"


def _sections(text: str) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], list[str]] = {}
    key = ("", "")
    for line in text.splitlines():
        if line.startswith("@") and " " in line:
            kind, name = line[1:].split(" ", 1)
            key = (kind, name)
            out[key] = []
        else:
            out.setdefault(key, []).append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def _interface(link: dict[str, Any], qdiscs: list[dict[str, Any]]) -> dict[str, Any]:
    xdp = link.get("xdp") or {}
    attached = [a["prog"] for a in xdp.get("attached", []) if a.get("prog")]
    prog = xdp.get("prog") or (attached[0] if attached else {})
    root = [q for q in qdiscs if q.get("dev") == link["ifname"]]
    return {
        "state": link.get("operstate", "?"),
        "mtu": link.get("mtu"),
        "mac": link.get("address"),
        "addresses": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                      if a.get("scope") != "link" or a.get("family") == "inet"],
        "xdp": None if xdp_prog_of(link) is None else
        {"id": xdp_prog_of(link), "name": prog.get("name"), "mode": _MODE_NAMES.get(xdp.get("mode"))},
        "qdisc": impair.parse_qdisc(json.dumps(root)),
    }


def inspect(lab: Lab) -> dict[str, Any]:
    k = lab.kernel()
    sec = _sections(k.run(["sh", "-c", _script(lab)], f"inspecting lab '{lab.name}'"))
    nodes: dict[str, Any] = {}
    roles = lab.engine.record.roles
    for node, ns in lab.engine.record.namespaces.items():
        links = json.loads(sec.get(("node", node), "[]") or "[]")
        qdiscs = json.loads(sec.get(("qdisc", node), "[]") or "[]")
        nodes[node] = {
            "role": roles.get(node, "?"),
            "netns": ns,
            "interfaces": {ln["ifname"]: _interface(ln, qdiscs) for ln in links},
        }
    out: dict[str, Any] = {**lab.status(), "kernel": k.where, "nodes": nodes}
    out["modules"] = {m: kmod.parse_stats(sec[("module", m)]) for m in MODULES
                      if sec.get(("module", m), "").strip()}  # fmt: skip
    topo = lab.topology
    if topo is not None and topo.services:
        from lab import lb

        try:
            out["lb"] = {"counters": {k: v for k, v in lb.attached(lab).counters().items() if v}}
        except lb.LbError as e:
            out["lb"] = {"error": str(e)}
    return out


def table(doc: dict[str, Any]) -> str:
    lines = [f"lab {doc['name']} on {doc['engine']} ({doc['topology']}), kernel: {doc['kernel']}"]
    for node, info in doc["nodes"].items():
        lines.append(f"  {node} ({info['role']}, netns {info['netns']})")
        for ifname, i in info["interfaces"].items():
            x = i["xdp"]
            xdp = f"  xdp {x['name'] or '?'} id {x['id']} {x['mode'] or ''}" if x else ""
            qd = f"  qdisc {i['qdisc']}" if i["qdisc"] != "none" else ""
            addrs = " ".join(i["addresses"])
            lines.append(f"    {ifname:<8} {i['state']:<5} mtu {i['mtu']:<5} {addrs}{xdp}{qd}")
    for m, counters in doc.get("modules", {}).items():
        nonzero = ", ".join(f"{k} {v}" for k, v in counters.items() if v) or "all zero"
        lines.append(f"  module {m}.ko loaded: {nonzero}")
    if "lb" in doc:
        c = doc["lb"].get("counters")
        lines.append("  xdp lb: " + (", ".join(f"{k} {v}" for k, v in c.items()) or "no packets yet")
                     if c is not None else f"  xdp lb: {doc['lb'].get('error')}")  # fmt: skip
    return "\n".join(lines)

