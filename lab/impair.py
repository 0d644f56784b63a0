"""Link impairments: delay, jitter, loss and rate on a link end (tc netem, or
tbf for a rate alone), and its MTU -- declared in a topology or changed on
a running lab (``toalab link set|show|reset``).

A topology declares them on the mapping form of a link, per end::

    links:
      - {a: "switch:p1", b: "rs1:eth0", mtu: 1400, impair: {a: {loss: 5%, delay: 10ms}}}

An impairment shapes what the end *sends* (a qdisc is egress): ``a: {loss:
5%}`` loses 5% of the packets from the switch to rs1.  Every value is
checked against a fixed grammar before it reaches tc.  netem is a module
(sch_netem); a kernel without it (this CI machine's host kernel has no
module support) gets a one-line error naming the way out: the VM engine.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from lab import kinds
from lab.errors import LabError
from lab.programs import ProgOp, Qdisc

if TYPE_CHECKING:
    from lab.net import Lab
    from lab.topology import Topology

_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
_PCT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$", re.I)
KEYS = ("delay", "jitter", "loss", "rate", "mtu")


class ImpairError(LabError):
    """An impairment that is malformed or that the kernel cannot apply."""


@dataclass(frozen=True)
class Impairment:
    delay: str = ""  # "20ms"
    jitter: str = ""  # "5ms", with a delay
    loss: str = ""  # "1%"
    rate: str = ""  # "100mbit"
    mtu: int = 0  # 0: leave it

    @classmethod
    def parse(cls, kv: dict[str, object], where: str = "") -> Impairment:
        at = f"{where}: " if where else ""
        unknown = [k for k in kv if k not in KEYS]
        if unknown:
            raise ImpairError(f"{at}unknown impairment(s) {', '.join(unknown)} (one of {', '.join(KEYS)})")
        out: dict[str, object] = {}
        for k, v in kv.items():
            s = str(v).strip()
            if k in ("delay", "jitter") and not _TIME.match(s):
                raise ImpairError(f"{at}{k}={s}: a time such as 20ms, 500us or 1s")
            if k == "loss" and not (_PCT.match(s) and float(s[:-1]) <= 100):
                raise ImpairError(f"{at}loss={s}: a percentage such as 1% (0-100%)")
            if k == "rate" and not _RATE.match(s):
                raise ImpairError(f"{at}rate={s}: a rate such as 100mbit, 512kbit or 1gbit")
            if k == "mtu":
                if not s.isdigit() or not 68 <= int(s) <= 65535:
                    raise ImpairError(f"{at}mtu={s}: a whole number 68-65535")
                out[k] = int(s)
                continue
            out[k] = s.lower() if k == "rate" else s
        imp = cls(**out)  # type: ignore[arg-type]
        if imp.jitter and not imp.delay:
            raise ImpairError(f"{at}jitter needs a delay (delay=20ms jitter=5ms)")
        return imp

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay or self.loss)

    @property
    def shapes(self) -> bool:
        return bool(self.delay or self.loss or self.rate)

    def qdisc(self) -> list[str]:
        """tc's arguments after ``qdisc replace dev IF root``."""
        if self.needs_netem:
            out = ["netem"]
            if self.delay:
                out += ["delay", self.delay] + ([self.jitter] if self.jitter else [])
            if self.loss:
                out += ["loss", self.loss]
            if self.rate:
                out += ["rate", self.rate]
            return out
        return ["tbf", "rate", self.rate, "burst", "32kbit", "latency", "100ms"]

    def __str__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name)]
        return " ".join(parts) or "none"


def tc_error(stderr: str, imp: Impairment, where: str) -> ImpairError:
    if "qdisc kind is unknown" in stderr:
        return ImpairError(
            f"{where}: this kernel has no netem (sch_netem), which delay, jitter and loss need "
            "(a rate alone uses tbf); run the lab on the VM engine (--engine vm)"
        )
    return ImpairError(f"{where}: tc qdisc {' '.join(imp.qdisc())} failed: {stderr.strip()}")


def _bits(bytes_per_s: object) -> str:
    """tc -j's rates are bytes per second; tc's own words are bits."""
    try:
        b = int(bytes_per_s) * 8  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(bytes_per_s)
    for unit, n in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if b >= n and b % n == 0:
            return f"{b // n}{unit}"
    return f"{b}bit"


def parse_qdisc(doc: str) -> str:
    """What `tc -j qdisc show dev IF` says is on the root, in tc's words."""
    try:
        qs = json.loads(doc or "[]")
    except ValueError:
        return "?"
    for q in qs:
        if q.get("root") and q.get("kind") in ("netem", "tbf"):
            opts = q.get("options", {})
            if q["kind"] == "tbf":
                return f"tbf rate {_bits(opts.get('rate'))}"
            parts = ["netem"]
            if opts.get("delay"):
                d = opts["delay"]
                jitter = f" jitter {d.get('jitter')}s" if d.get("jitter") else ""
                parts.append(f"delay {d.get('delay')}s{jitter}")
            if opts.get("loss-random"):
                parts.append(f"loss {opts['loss-random'].get('loss')}")
            if opts.get("rate"):
                parts.append(f"rate {_bits(opts['rate'].get('rate'))}")
            return " ".join(parts)
    return "none"


def program_ops(topo: Topology, namespaces: dict[str, str]) -> list[ProgOp]:
    """The qdiscs of the impairments the topology's links declare."""
    out: list[ProgOp] = []
    for link in topo.links:
        for end, imp in sorted(link.impair.items()):
            ep = link.a if end == "a" else link.b
            if imp.shapes:
                out.append(Qdisc(namespaces[ep.node], ep.ifname, tuple(imp.qdisc())))
    return out


# -- a running lab ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkState:
    node: str
    ifname: str
    qdisc: str  # "none", or what tc says is on the root
    mtu: int


def _end_of(lab: Lab, where: str) -> tuple[str, str]:
    node, sep, ifname = where.partition(":")
    lab.ns(node)  # an unknown node: one line naming the lab's nodes
    if not sep or not ifname:
        raise ImpairError(f"'{where}': name the link end as NODE:IF")
    topo = lab.topology
    if topo is not None:
        linked = [a.ifname for a, _ in topo.links_of(node)]
        if ifname not in linked:
            raise ImpairError(f"{node} has no link on {ifname} (its links: {', '.join(linked) or 'none'})")
    elif not kinds.IFNAME.match(ifname):
        raise ImpairError(f"interface name {ifname!r} is not valid")
    return node, ifname


def set_link(lab: Lab, where: str, imp: Impairment) -> list[str]:
    """Impair what NODE:IF sends (and set its MTU); with an LB, its MSS clamp
    follows the new MTU.  What changed, one line each."""
    node, ifname = _end_of(lab, where)
    k, ns = lab.kernel(), lab.ns(node)
    if imp.shapes:
        r = k.exec(["tc", "-n", ns, "qdisc", "replace", "dev", ifname, "root", *imp.qdisc()])
        if r.returncode != 0:
            raise tc_error(r.stderr or r.stdout, imp, where)
    out = [f"{where}: {imp}"]
    if imp.mtu:
        k.run(["ip", "-n", ns, "link", "set", "dev", ifname, "mtu", str(imp.mtu)], f"setting {where}'s MTU")
        out += _follow_mtu(lab)
    return out


def reset_link(lab: Lab, where: str) -> list[str]:
    """No impairment on NODE:IF, and the MTU its topology gives it."""
    node, ifname = _end_of(lab, where)
    k, ns = lab.kernel(), lab.ns(node)
    k.exec(["tc", "-n", ns, "qdisc", "del", "dev", ifname, "root"])  # none there: nothing to do
    mtu = 1500
    for ln in lab.topology.links if lab.topology else []:
        if (node, ifname) in ((ln.a.node, ln.a.ifname), (ln.b.node, ln.b.ifname)):
            mtu = ln.mtu
    k.run(["ip", "-n", ns, "link", "set", "dev", ifname, "mtu", str(mtu)], f"setting the MTU of {where}")
    return [f"{where}: reset (mtu {mtu})", *_follow_mtu(lab)]


def show_links(lab: Lab) -> list[LinkState]:
    k = lab.kernel()
    out = []
    topo = lab.topology
    ends = [(ep.node, ep.ifname) for ln in topo.links for ep in (ln.a, ln.b)] if topo else []
    for node, ifname in ends:
        ns = lab.ns(node)
        q = k.exec(["tc", "-n", ns, "-j", "qdisc", "show", "dev", ifname])
        doc = k.run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname], f"reading {node}:{ifname}")
        link = json.loads(doc)
        out.append(LinkState(node, ifname, parse_qdisc(q.stdout), int(link[0]["mtu"])))
    return out


def _follow_mtu(lab: Lab) -> list[str]:
    topo = lab.topology
    if topo is None or not topo.services:
        return []
    from lab import lb, lbctl

    if not lb.enabled(topo):
        return []
    return lbctl.LbControl(lab).refresh_mss()
