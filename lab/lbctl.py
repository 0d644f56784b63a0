"""The LB of a running lab as an operator drives it: ``toalab lb show|set|health``.

The kernel's maps are the state.  ``show`` reads the services (scheduler,
persistence), their real servers (weight, up or down), the per-RS count of
new flows and the live entries of the flow table; ``set`` changes a
service's scheduler or persistence, or a real server's weight or state,
and rebuilds the service's ring (lab/sched.py) from what the maps hold, so
two commands, or a command and the health checker, act on one truth.
Through the lab's kernel handle, on every engine.

Marking a server down keeps its established flows where they are (they
drain) and gives it no new flow, not even a persistent client's; weight 0
gives it no new flow except from clients persistence already sends there
(LVS's quiescing).  ``health`` probes every real server from the lb node
(``tcp``: a connection to rs_port, ``ping``: an ICMP echo), and marks it
down after ``fall`` failures in a row and up after ``rise`` good probes
(``health:`` of the service in the topology); while it runs it owns the
up/down state.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lab import kinds, lb, sched
from lab.errors import LabError
from lab.topology import HealthCheck, Service

if TYPE_CHECKING:
    from lab.net import Lab


class LbCtlError(LabError):
    """A request about a running lab's LB that cannot be done as asked."""


@dataclass
class ServerView:
    name: str
    slot: int
    address: str
    weight: int
    up: bool
    new_flows: int  # since the LB was attached
    flows: int  # live entries of the flow table (idle less than the lifetime)


@dataclass
class ServiceView:
    name: str
    vip: str
    port: int
    protocols: list[str]
    scheduler: str
    persistence: int
    ring: int  # slots in use: 0 when no server takes new flows
    servers: list[ServerView] = field(default_factory=list)


PROTO_NAMES = {v: k for k, v in lb.PROTO.items()}


class LbControl:
    """Read and change the LB of a running lab."""

    def __init__(self, lab: Lab) -> None:
        if lab.topology is None or not lab.topology.services:
            raise LbCtlError(f"lab '{lab.name}' has no services: no LB to show or set")
        self.lab = lab
        self.topo = lab.topology
        self.handle = lb.attached(lab)
        self.k = self.handle.kernel
        self.ids = lb.service_ids(self.topo)

    # -- names -------------------------------------------------------------------------------
    def service(self, name: str) -> Service:
        if name not in self.topo.services:
            near = difflib.get_close_matches(name, self.topo.services, n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise LbCtlError(f"no service '{name}' in lab '{self.lab.name}'{hint}; services: "
                             f"{', '.join(self.topo.services)}")  # fmt: skip
        return self.topo.services[name]

    def slot(self, svc: Service, rs: str) -> int:
        if rs not in svc.real_servers:
            raise LbCtlError(f"'{rs}' is not a real server of service {svc.name} "
                             f"(real servers: {', '.join(svc.real_servers)})")  # fmt: skip
        return svc.real_servers.index(rs)

    # -- the maps ----------------------------------------------------------------------------
    def _mid(self, name: str) -> int:
        return self.handle.map_id(name)

    def _entries(self, sid: int) -> list[tuple[bytes, lb.Svc, int]]:
        """The lb_services entries of a service id (one per protocol)."""
        out = []
        for e in self.k.map_dump(self._mid(lb.M_SERVICES)):
            svc, ring_len = lb.Svc.parse(e.key, e.value)
            if svc.id == sid:
                out.append((e.key, svc, ring_len))
        if not out:
            raise LbCtlError(f"service id {sid} is not in the LB's maps (was the LB attached by this lab?)")
        return out

    def _servers(self, svc: Service) -> list[lb.Rs]:
        sid, mid = self.ids[svc.name], self._mid(lb.M_RS)
        out = []
        for i, name in enumerate(svc.real_servers):
            e = self.k.map_lookup(mid, lb.u32(sid * lb.MAX_RS + i))
            if e is None:
                raise LbCtlError(f"real server {name} of {svc.name} is not in the LB's maps")
            out.append(lb.Rs.parse(e.value, name))
        return out

    def services(self) -> list[ServiceView]:
        now = self.k.monotonic_ns()
        cfg = self.k.map_lookup(self._mid(lb.M_CFG), lb.u32(0))
        idle = {6: 300e9, 17: 60e9}
        if cfg is not None:
            idle = {6: int.from_bytes(cfg.value[:8], "little"), 17: int.from_bytes(cfg.value[8:16], "little")}
        live: dict[int, int] = {}
        for f in self.handle.flows():
            if now - f.last_ns <= idle.get(f.proto, 60e9):
                live[f.rs_idx] = live.get(f.rs_idx, 0) + 1
        counts = self._mid(lb.M_RS_FLOWS)
        out = []
        for name, svc in self.topo.services.items():
            sid = self.ids[name]
            entries = self._entries(sid)
            first = entries[0][1]
            view = ServiceView(name, str(svc.vip), svc.port, sorted(PROTO_NAMES.get(s.proto, "?")
                               for _, s, _ in entries), first.scheduler, first.persist_s,
                               entries[0][2])  # fmt: skip
            for i, rs in enumerate(self._servers(svc)):
                idx = sid * lb.MAX_RS + i
                c = self.k.map_lookup(counts, lb.u32(idx))
                addr = f"[{rs.rip}]:{rs.rport}" if ":" in str(rs.rip) else f"{rs.rip}:{rs.rport}"
                view.servers.append(ServerView(rs.name, i, addr, rs.weight, not rs.down,
                                               c.u64_sum() if c else 0, live.get(idx, 0)))  # fmt: skip
            out.append(view)
        return out

    def set_service(self, name: str, *, scheduler: str | None = None, persistence: int | None = None) -> None:
        svc = self.service(name)
        if scheduler is not None and scheduler not in sched.SCHEDULERS:
            raise LbCtlError(f"unknown scheduler '{scheduler}' (one of {', '.join(sched.SCHEDULERS)})")
        if persistence is not None and not 0 <= persistence <= 86400:
            raise LbCtlError(f"persistence {persistence}: seconds in 0..86400 (0: off)")
        entries = self._entries(self.ids[name])
        changes = {k: v for k, v in (("scheduler", scheduler), ("persist_s", persistence)) if v is not None}
        self._commit(svc, [(key, replace(s, **changes), n) for key, s, n in entries], self._servers(svc))

    def set_server(self, service: str, rs: str, *, weight: int | None = None, up: bool | None = None) -> None:
        svc = self.service(service)
        i = self.slot(svc, rs)
        if weight is not None and not 0 <= weight <= sched.MAX_WEIGHT:
            raise LbCtlError(f"weight {weight}: 0..{sched.MAX_WEIGHT}")
        servers = self._servers(svc)
        old = servers[i]
        servers[i] = replace(old, weight=old.weight if weight is None else weight,
                             down=old.down if up is None else not up)  # fmt: skip
        if servers[i] == old:
            return
        # the server's own entry first: a down server loses its persistent clients at once
        self.k.map_update(self._mid(lb.M_RS), lb.u32(self.ids[service] * lb.MAX_RS + i), servers[i].pack())
        self._commit(svc, self._entries(self.ids[service]), servers)

    def refresh_mss(self) -> list[str]:
        """Clamp the MSS again to the MTUs the lab's links have now (``toalab link set
        ... mtu=N``): what the MSS rule of bpf/lb.c computes from the topology at up.
        The changes, one line each."""
        fn = kinds.fullnat(self.topo.node(next(iter(self.topo.services.values())).lb))
        mtus: dict[tuple[str, str], int] = {}
        for node in self.topo.nodes:
            doc = self.k.run(["ip", "-n", self.lab.ns(node), "-j", "link", "show"], f"reading {node}'s links")
            for link in json.loads(doc or "[]"):
                mtus[(node, link["ifname"])] = int(link["mtu"])
        changes = []
        for name, svc in self.topo.services.items():
            peer = lb.peer_of(self.topo, svc.lb, fn.client_if)
            client_mtu = min(mtus.get((svc.lb, fn.client_if), 1500), mtus.get(peer, 1500))
            rs_mtu = lb.rs_side_mtu(self.topo, svc, fn.rs_if, mtus)
            syn, synack = lb.mss_rules(svc.vip.version, svc.local[0].version, client_mtu, rs_mtu, svc.vxlan)
            for key, s, n in self._entries(self.ids[name]):
                if (s.mss_syn, s.mss_synack, s.mtu_rs) == (syn, synack, rs_mtu):
                    continue
                new = replace(s, mss_syn=syn, mss_synack=synack, mtu_rs=rs_mtu)
                self.k.map_update(self._mid(lb.M_SERVICES), key, new.pack(n))
                changes.append(f"{name}/{PROTO_NAMES.get(s.proto)}: MSS clamp {s.mss_syn}/{s.mss_synack} -> "
                               f"{syn}/{synack} (MTU: client side {client_mtu}, RS {rs_mtu})")  # fmt: skip
        return changes

    def _commit(self, svc: Service, entries: list[tuple[bytes, lb.Svc, int]], servers: list[lb.Rs]) -> None:
        """Write the ring the servers and the scheduler make, and the services that use it.  A
        shrinking ring's length goes first, a growing one's last: every position a new
        flow can pick holds a server of the old ring or of the new."""
        sid = self.ids[svc.name]
        table = sched.ring(entries[0][1].scheduler, [r.server() for r in servers])
        svc_mid, ring_mid = self._mid(lb.M_SERVICES), self._mid(lb.M_RING)

        def services() -> None:
            for key, s, _ in entries:
                self.k.map_update(svc_mid, key, s.pack(len(table)))

        shrinking = len(table) < min(n for _, _, n in entries)
        if shrinking:
            services()
        self.k.map_update(ring_mid, lb.u32(sid), lb.ring_value(table))
        if not shrinking:
            services()


# -- health ---------------------------------------------------------------------------------


def check_of(svc: Service) -> HealthCheck:
    """The service's declared check, or the default: tcp for a TCP service, else ping."""
    if svc.health is not None:
        return svc.health
    return HealthCheck() if "tcp" in svc.protocols else HealthCheck(check="ping")


@dataclass
class HealthChecker:
    """Probes every real server from the lb node and keeps its up/down state."""

    ctl: LbControl
    streak: dict[tuple[str, str], int] = field(default_factory=dict)  # >0 good probes in a row, <0 bad

    def probe(self, svc: Service, rs: str) -> bool:
        hc = check_of(svc)
        rip = str(self.ctl.topo.node(rs).address(svc.local[0].version))
        t = str(max(1, math.ceil(hc.timeout)))
        argv = (["nc", "-z", "-w", t, rip, str(svc.rs_port)] if hc.check == "tcp"
                else ["ping", "-n", "-q", "-c", "1", "-W", t, rip])  # fmt: skip
        return self.ctl.lab.exec(svc.lb, argv, timeout=hc.timeout + 5).returncode == 0

    def round(self) -> list[str]:
        """One probe of every real server; the state changes made, one line each."""
        changes = []
        for name, svc in self.ctl.topo.services.items():
            hc = check_of(svc)
            for rs, cur in zip(svc.real_servers, self.ctl._servers(svc), strict=True):
                ok = self.probe(svc, rs)
                prev = self.streak.get((name, rs), 0)
                n = (max(prev, 0) + 1) if ok else (min(prev, 0) - 1)
                self.streak[(name, rs)] = n
                if cur.down and n >= hc.rise:
                    self.ctl.set_server(name, rs, up=True)
                    changes.append(f"{name}/{rs}: up ({n} good {hc.check} probes)")
                elif not cur.down and -n >= hc.fall:
                    self.ctl.set_server(name, rs, up=False)
                    changes.append(f"{name}/{rs}: down ({-n} failed {hc.check} probes)")
        return changes

    def interval(self) -> float:
        return min(check_of(s).interval for s in self.ctl.topo.services.values())


def start_checker(lab: Lab) -> tuple[int, Path]:
    """Run ``toalab lb health`` for the lab in the background until its down."""
    from lab.engines import start_helper

    argv = [sys.executable, "-m", "lab", "lb", "health", "-L", lab.name]
    return start_helper(lab.engine.record, "health", argv)


# -- command line ---------------------------------------------------------------------------


def table(views: list[ServiceView]) -> str:
    lines = []
    for v in views:
        pers = f"persistence {v.persistence} s" if v.persistence else "no persistence"
        lines.append(f"{v.name}: {v.vip} port {v.port} {'/'.join(v.protocols)}, {v.scheduler}, {pers}, "
                     f"ring {v.ring} slots")  # fmt: skip
        head = f"{'server':<10} {'address':<26} {'weight':>6}  {'state':<5} {'new flows':>9} {'flows':>6}"
        lines.append("  " + head)
        for s in v.servers:
            lines.append(f"  {s.name:<10} {s.address:<26} {s.weight:>6}  {'up' if s.up else 'down':<5} "
                         f"{s.new_flows:>9} {s.flows:>6}")  # fmt: skip
    return "\n".join(lines)


SERVICE_KEYS = {"scheduler", "persistence"}
SERVER_KEYS = {"weight", "state"}


def parse_set(words: list[str]) -> tuple[str, str | None, dict[str, str]]:
    """``SERVICE [SERVER] KEY=VALUE...`` -> (service, server, settings)."""
    if not words or "=" in words[0]:
        raise LbCtlError("usage: toalab lb set SERVICE [SERVER] KEY=VALUE... (see toalab lb set -h)")
    service, rest = words[0], words[1:]
    server = None
    if rest and "=" not in rest[0]:
        server, rest = rest[0], rest[1:]
    if not rest:
        raise LbCtlError("nothing to set: KEY=VALUE (service: scheduler, persistence; server: weight, state)")
    allowed = SERVER_KEYS if server else SERVICE_KEYS
    out: dict[str, str] = {}
    for w in rest:
        k, sep, v = w.partition("=")
        if not sep or k not in allowed:
            what = f"server {server}" if server else f"service {service}"
            raise LbCtlError(f"'{w}': a {what} takes {', '.join(sorted(allowed))} (KEY=VALUE)")
        out[k] = v
    return service, server, out


def _int(v: str, what: str) -> int:
    try:
        return int(v, 10)
    except ValueError:
        raise LbCtlError(f"{what} '{v}' is not a whole number") from None


def apply_set(ctl: LbControl, service: str, server: str | None, kv: dict[str, str]) -> None:
    if server is None:
        pers = _int(kv["persistence"], "persistence") if "persistence" in kv else None
        ctl.set_service(service, scheduler=kv.get("scheduler"), persistence=pers)
        return
    state = kv.get("state")
    if state is not None and state not in ("up", "down"):
        raise LbCtlError(f"state '{state}': up or down")
    ctl.set_server(service, server, weight=_int(kv["weight"], "weight") if "weight" in kv else None,
                   up=None if state is None else state == "up")  # fmt: skip
