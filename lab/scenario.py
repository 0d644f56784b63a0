"""Scenarios: what `toalab list / run / matrix` run, as data (scenarios/scenarios.toml).

A scenario names a topology, the modules its real servers' kernel runs, the
traffic to drive and what the real server's application must see.  Running
one writes RUN_DIR/ID/result.json (every check with expected and observed, the
kernel, timings) and a pcap of every interface of every node.

    scs = scenario.select(["fullnat-6to4-udp", "http-4to4"])
    with scenario.Runner(engine="vm", out=Path("build/runs/x")) as run:
        for res in run.run(scs):
            print(res.verdict, res.saw)

The runner brings each topology up once for every scenario that uses it (one
guest boot for all of them on the VM engine), loads or unloads the modules
per scenario, and judges from the application's own report: the example
programs' JSON events, nginx's access log.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab import kmod, topology
from lab.capture import SETTLE_S, Capture, captures, slice_pcap
from lab.errors import LabError
from lab.net import Lab

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios" / "scenarios.toml"
TOPOLOGIES = REPO / "topologies"
TRAFFIC = ("tcp", "udp", "http", "l7", "gwping")
MODULES = ("toa", "uoa")
SOCKETS = ("auto", "inet", "inet6", "dual")
PEERS = ("client", "lb")
ENGINES = ("host", "vm")
# the runner's guest: TCG runs in one thread here (lab/vm/qemu.py says why), and one
# emulated CPU does the same work faster than two sharing that thread (measured:
# lab up 4.65 s against 6.19, LB attach 2.54 s against 3.61)
GUEST_CPUS = 1


@dataclass(frozen=True)
class Scenario:
    id: str
    description: str
    topology: str
    traffic: str
    modules: tuple[str, ...] = MODULES
    socket: str = "auto"
    peer: str = ""  # "" = after the modules: client with them, lb without
    lookup: str = ""
    target: str = ""  # gwping: the node probed
    port: int = 0  # gwping: its service's port
    trusted: str = "auto"  # the modules' `trusted` list; auto: the topology's option senders
    topologies: Path = field(default=TOPOLOGIES, repr=False)  # where `topology` is found

    @property
    def topology_path(self) -> Path:
        return self.topologies / f"{self.topology}.yaml"

    @property
    def expect_peer(self) -> str:
        return self.peer or ("client" if self.modules else "lb")

    @property
    def expect_lookup(self) -> str:
        return self.lookup or ("client" if self.modules else "none")


# -- the table --------------------------------------------------------------------------------
_FIELDS = {"description", "topology", "traffic", "modules", "socket", "peer", "lookup", "target", "port",
           "trusted"}  # fmt: skip


def load(path: Path = SCENARIOS) -> dict[str, Scenario]:
    """Every scenario of the file, by id; a malformed entry is one line naming it."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LabError(f"{path}: {e}") from None
    out = {}
    for sid, spec in raw.items():
        where = f"{path.name}: [{sid}]"
        if not isinstance(spec, dict):
            raise LabError(f"{where}: must be a table")
        unknown = sorted(set(spec) - _FIELDS)
        if unknown:
            raise LabError(f"{where}: unknown field {unknown[0]} (fields: {', '.join(sorted(_FIELDS))})")
        for key in ("description", "topology", "traffic"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise LabError(f"{where}: needs {key} (a string)")
        if spec["traffic"] == "gwping" and not (
            isinstance(spec.get("target"), str)
            and isinstance(spec.get("port"), int)
            and 0 < spec["port"] < 65536
        ):
            raise LabError(f"{where}: gwping needs target (a node) and port (1-65535)")
        mods = spec.get("modules", list(MODULES))
        if not isinstance(mods, list) or any(m not in MODULES for m in mods):
            raise LabError(f"{where}.modules: {mods!r} is not a list of {', '.join(MODULES)}")
        for key, allowed in (
            ("traffic", TRAFFIC),
            ("socket", SOCKETS),
            ("peer", PEERS),
            ("lookup", ("client", "none")),
        ):
            if key in spec and spec[key] not in allowed:
                raise LabError(f"{where}.{key}: {spec[key]!r} is not one of {', '.join(allowed)}")
        trusted = spec.get("trusted", "auto")
        if not (isinstance(trusted, str) and (trusted == "auto" or kmod.TRUSTED.match(trusted))):
            raise LabError(f"{where}.trusted: {spec['trusted']!r} is not auto, none or a list of prefixes")
        local = path.parent / "topologies"  # a table of one's own may bring its topologies
        sc = Scenario(
            id=sid,
            modules=tuple(mods),
            **{k: v for k, v in spec.items() if k != "modules"},
            topologies=local if (local / f"{spec['topology']}.yaml").exists() else TOPOLOGIES,
        )
        if not sc.topology_path.exists():
            shown = sc.topology_path.relative_to(REPO) if sc.topologies == TOPOLOGIES else sc.topology_path
            raise LabError(f"{where}.topology: no {shown}")
        out[sid] = sc
    return out


def trusted_for(sc: Scenario, topo: topology.Topology | None) -> str:
    """The modules' trusted list for a scenario: its own, or (auto) the addresses
    that send the option in its topology -- the LB's local addresses and the L7
    proxies' -- as a deployment would configure them."""
    if sc.trusted != "auto":
        return sc.trusted
    if topo is None:
        return ""
    senders = [str(a) for s in topo.services.values() for a in s.local]
    senders += [str(a.ip) for n in topo.nodes.values() if n.role == "proxy"
                for ifname, addrs in n.interfaces.items() if ifname != "lo" for a in addrs]  # fmt: skip
    return ",".join(dict.fromkeys(senders))


def select(ids: Sequence[str], path: Path = SCENARIOS) -> list[Scenario]:
    """The scenarios of these ids, in that order; an unknown id is one line with the close matches."""
    table = load(path)
    out = []
    for sid in ids:
        if sid not in table:
            close = difflib.get_close_matches(sid, list(table), n=4, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else " (toalab list shows them)"
            raise LabError(f"unknown scenario '{sid}'{hint}")
        out.append(table[sid])
    return out


# -- results ----------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    expected: Any
    observed: Any
    ok: bool


def check(name: str, expected: Any, observed: Any, ok: bool | None = None) -> Check:
    return Check(name, expected, observed, expected == observed if ok is None else ok)


@dataclass
class Result:
    id: str
    description: str
    verdict: str  # pass | fail | skip
    engine: str
    reason: str = ""
    saw: str = ""  # what the RS application saw, one line
    checks: list[Check] = field(default_factory=list)
    kernel: dict[str, Any] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    trusted: str = ""  # the modules' trusted list during the scenario ("": every source)
    timings: dict[str, float] = field(default_factory=dict)
    pcaps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def endpoint(addr: str, port: int | None = None) -> str:
    """addr[:port] with v4-mapped IPv6 shown as the IPv4 address (what it means)."""
    a = ipaddress.ip_address(addr)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
        a = a.ipv4_mapped
    if port is None:
        return str(a)
    return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"


def _ep(e: dict[str, Any] | None) -> str | None:
    return None if not e else endpoint(e["addr"], e["port"])


# -- running ----------------------------------------------------------------------------------
@dataclass
class Context:
    """What a traffic driver gets: the lab, its service, the example programs."""

    lab: Lab
    sc: Scenario
    programs: Any  # kmod.Programs / kmod.Artifacts

    @property
    def svc(self) -> topology.Service:
        topo = self.lab.topology
        assert topo is not None
        return next(iter(topo.services.values()))

    @property
    def rs_family(self) -> int:
        return self.svc.local[0].version

    @property
    def local(self) -> list[str]:
        return [str(a) for a in self.svc.local]

    def socket(self, rs_family: int | None = None) -> str:
        if self.sc.socket != "auto":
            return self.sc.socket
        return "inet6" if (rs_family or self.rs_family) == 6 else "inet"


def _lookup(ev: dict[str, Any]) -> tuple[str | None, str | None]:
    """(client, VIP) of a server event's TOA/UOA lookup, or (None, None)."""
    found = ev.get("lookup") or {}
    return _ep(found.get("client")), _ep(found.get("vip"))


def _no_lookup(rs: str, ev: dict[str, Any]) -> Check:
    """Without the module the lookup must fail (the server reports its errno)."""
    err = ev.get("lookup_error")
    seen = err or list(_lookup(ev))
    return check(f"{rs} lookup without the module", "an error (no entry)", seen, ok=bool(err))


def _drive_example(ctx: Context) -> tuple[list[Check], str]:
    from lab import lb, traffic

    sc, svc = ctx.sc, ctx.svc
    vip, vport, rport = str(svc.vip), svc.port, svc.rs_port
    fam = "-4" if ctx.socket() == "inet" else "-6"  # the example servers' -6 is dual-stack
    handle = lb.attached(ctx.lab) if svc.vxlan else None
    before = handle.counters() if handle else {}
    flow = traffic.vip_flow(
        ctx.lab,
        sc.traffic,
        _client(ctx),
        svc.real_servers,
        vip,
        vport,
        rport,
        programs=ctx.programs,
        family=fam,
    )
    client, ev, rs = _ep(flow.client["sock"]), flow.event, flow.server
    want_vip = endpoint(vip, vport)
    checks = []
    lookup = _lookup(ev)
    if sc.expect_lookup == "client":
        checks.append(
            check(f"{rs} {sc.traffic.upper()} lookup (client, VIP)", [client, want_vip], list(lookup))
        )
    else:
        checks.append(_no_lookup(rs, ev))
    peer = _ep(ev["peer"])
    if sc.traffic == "tcp":
        if sc.expect_peer == "client":
            checks.append(check(f"{rs} getpeername (the client)", client, peer))
            checks.append(check(f"{rs} accept() address", client, _ep(ev["accept"])))
            checks.append(check(f"{rs} getsockname (the VIP)", want_vip, _ep(ev["sock"])))
        else:
            addr = endpoint(ev["peer"]["addr"])
            checks.append(
                check(f"{rs} getpeername (the LB's local address)", ctx.local, addr, ok=addr in ctx.local)
            )
            checks.append(
                check(
                    f"{rs} getsockname (its own address)", endpoint(_rs_addr(ctx, rs), rport), _ep(ev["sock"])
                )
            )
        checks.append(check("the connection closed cleanly", True, flow.reply))
        saw = f"{rs} getpeername {peer}"
    else:
        src = endpoint(ev["peer"]["addr"])
        checks.append(
            check(f"{rs} recvfrom source (the LB's local address)", ctx.local, src, ok=src in ctx.local)
        )
        checks.append(check("the echo came back to the client", True, flow.reply))
        saw = f"{rs} from {_ep(ev['peer'])}"
    if handle is not None:  # the RS's replies came back through the tunnel, unwrapped by the LB
        after = handle.counters()
        moved = {k: after[k] - before.get(k, 0) for k in ("vxlan", "decap", "decap_fail")}
        ok = moved["vxlan"] >= 1 and moved["decap"] >= 1 and moved["decap_fail"] == 0
        checks.append(check("the LB sent in VXLAN and unwrapped the RS's replies (counters)",
                            "vxlan >= 1, decap >= 1, decap_fail 0", moved, ok=ok))  # fmt: skip
    if lookup[0]:
        saw += f", lookup {lookup[0]} -> {lookup[1]}"
    elif ev.get("lookup_error"):
        saw += f", lookup {ev['lookup_error']}"
    return checks, saw


def _drive_http(ctx: Context) -> tuple[list[Check], str]:
    from lab import apps

    svc = ctx.svc
    webs: dict[str, apps.Nginx] = {}
    try:
        for rs in svc.real_servers:
            webs[rs] = apps.Nginx.start(ctx.lab, rs, svc.rs_port, socket=ctx.socket())
        r = apps.http_get(ctx.lab, _client(ctx), str(svc.vip), svc.port)
        logs = {rs: w.log() for rs, w in webs.items()}
    finally:
        for w in webs.values():
            w.stop()
    checks = [check("HTTP status of the GET through the VIP", 200, r.status or r.error)]
    took = [rs for rs, lines in logs.items() if lines]
    if len(took) != 1 or len(logs[took[0]]) != 1:
        checks.append(
            check(
                "access log lines (one request, one real server)",
                1,
                {rs: len(v) for rs, v in logs.items()},
                ok=False,
            )
        )
        return checks, f"access logs: {logs}"
    rs, line = took[0], logs[took[0]][0]
    remote = endpoint(line["remote_addr"], line["remote_port"])
    server = endpoint(line["server_addr"], line["server_port"])
    client = endpoint(r.local_ip, r.local_port) if r.local_ip else "?"
    if ctx.sc.expect_peer == "client":
        checks.append(check(f"{rs} nginx $remote_addr:$remote_port (the client)", client, remote))
        checks.append(
            check(f"{rs} nginx $server_addr:$server_port (the VIP)", endpoint(str(svc.vip), svc.port), server)
        )
    else:
        addr = endpoint(line["remote_addr"])
        checks.append(
            check(f"{rs} nginx $remote_addr (the LB's local address)", ctx.local, addr, ok=addr in ctx.local)
        )
    checks.append(
        check(
            f"{rs} nginx's reply names what it logged",
            f"toalab {line['remote_addr']} {line['remote_port']}",
            r.body,
        )
    )
    return checks, f"{rs} nginx logged {remote} -> {server}"


def _drive_l7(ctx: Context) -> tuple[list[Check], str]:
    """The client connects to the proxy's VIP (its loopback address); the proxy
    connects to its upstream with set_ip_opt(client, VIP)."""
    from lab import kinds, traffic

    topo = ctx.lab.topology
    assert topo is not None
    proxy = next(n for n in topo.nodes.values() if n.role == "proxy")
    cfg = kinds.l7(proxy)
    vips = [str(a.ip) for a in proxy.interfaces.get("lo", [])]
    if not vips:
        raise LabError(f"proxy {proxy.name} has no address on lo (its VIP)")
    up = topo.node(cfg.upstream)
    rip = str(next(a.ip for ifn, lst in up.interfaces.items() if ifn != "lo" for a in lst))
    fam = "-4" if ctx.socket(ipaddress.ip_address(rip).version) == "inet" else "-6"
    flow = traffic.proxy_flow(ctx.lab, _client(ctx), proxy.name, up.name, vips[0], cfg.port, rip, cfg.rs_port,
                              programs=ctx.programs, family=fam)  # fmt: skip
    client, ev, rs = _ep(flow.client["sock"]), flow.event, up.name
    want_vip = endpoint(vips[0], cfg.port)
    checks = [check(f"{proxy.name} accepted the client", client, _ep(flow.accept["client"]))]
    lookup = _lookup(ev)
    if ctx.sc.expect_peer == "client":
        checks.append(check(f"{rs} getpeername (the client)", client, _ep(ev["peer"])))
        checks.append(check(f"{rs} getsockname (the proxy's VIP)", want_vip, _ep(ev["sock"])))
        checks.append(check(f"{rs} TOA lookup (client, VIP)", [client, want_vip], list(lookup)))
    else:
        checks.append(check(f"{rs} getpeername (the proxy's own connection)", _ep(flow.upstream["sock"]),
                            _ep(ev["peer"])))  # fmt: skip
        checks.append(_no_lookup(rs, ev))
    checks.append(check("the connection closed cleanly", True, flow.closed))
    via = _ep(flow.upstream["sock"])
    return checks, f"{rs} getpeername {_ep(ev['peer'])} (the proxy connected from {via})"


def _drive_gwping(ctx: Context) -> tuple[list[Check], str]:
    """A probe SYN (TSval MAGIC) from the prober to the scenario's target
    (a gateway that also runs a service on `port`): every gateway before it
    forwards it, the target's data plane hands it to the target's kernel,
    whose listener answers; an ordinary SYN to the same address is forwarded
    past the target by its data plane and gets no answer."""
    from lab import gwping, gwprobe, traffic

    topo = ctx.lab.topology
    assert topo is not None
    sc = ctx.sc
    prober = next(n for n in topo.nodes.values() if n.role == "prober")
    target = topo.node(sc.target)
    src, dst = str(prober.address(4)), str(target.address(4))
    dp = gwping.DataPlane.of(topo, ctx.lab.engine.record.namespaces, ctx.lab.kernel())
    ports = [(att.node, att.ifname) for att, _ns, _pid in dp.attached if att.prog == "gwping"]

    def counts() -> dict[tuple[str, str], dict[str, int]]:
        return {port: dp.counters(*port) for port in ports}

    job = ctx.lab.spawn(target.name, [ctx.programs.bin("tcp_server"), "-4", "--json", "--count", "100",
                                      str(sc.port)])  # fmt: skip
    try:
        traffic.wait_for(job, '"event":"listening"', 15.0, f"tcp_server on {target.name}")
        before = counts()
        probe, plain = gwprobe.probes_from(ctx.lab, prober.name, src, dst, sc.port,
                                           [(40001, gwping.MAGIC), (40002, 0x12345678)])  # fmt: skip
        after = counts()
    finally:
        job.terminate()
    delta = {f"{n}:{i}": {k: after[(n, i)][k] - before[(n, i)][k] for k in ("ping_fwd", "ping_pass")}
             for n, i in ports}  # fmt: skip
    passed = sum(d["ping_pass"] for port, d in delta.items() if port.startswith(f"{target.name}:"))
    forwarded = sum(d["ping_fwd"] for port, d in delta.items() if not port.startswith(f"{target.name}:"))
    checks = [
        check(f"the probe is answered by {target.name}'s kernel", {"answer": "synack", "from": dst}, probe),
        check(f"{target.name}'s data plane passed the probe to its kernel (ping_pass)", 1, passed),
        check(
            "the gateways before it forwarded the probe (ping_fwd)", True, forwarded >= 1, ok=forwarded >= 1
        ),
        check(f"an ordinary SYN to {dst} is forwarded past {target.name} (no answer)", None, plain["answer"]),
    ]
    moved = ", ".join(f"{port} {k} +{v}" for port, d in delta.items() for k, v in d.items() if v)
    return checks, f"{target.name}'s kernel answered the probe ({probe.get('answer')}); {moved}"


DRIVERS: dict[str, Callable[[Context], tuple[list[Check], str]]] = {
    "gwping": _drive_gwping,
    "tcp": _drive_example,
    "udp": _drive_example,
    "http": _drive_http,
    "l7": _drive_l7,
}


def _client(ctx: Context) -> str:
    topo = ctx.lab.topology
    assert topo is not None
    return next(n.name for n in topo.nodes.values() if n.role == "client")


def _rs_addr(ctx: Context, rs: str) -> str:
    topo = ctx.lab.topology
    assert topo is not None
    return str(topo.node(rs).address(ctx.rs_family))


def by_topology(scenarios: Sequence[Scenario]) -> list[Scenario]:
    """The scenarios with those of one topology together, in order of first
    appearance, and within a topology those of one module set together: an
    insmod or rmmod costs a few tenths of a second in a TCG guest, so a lab
    changes its modules as few times as it can."""
    order: dict[str, int] = {}
    sets: dict[tuple[str, tuple[str, ...]], int] = {}

    def group(sc: Scenario) -> tuple[str, tuple[str, ...]]:
        return sc.topology, tuple(sorted(sc.modules))

    for sc in scenarios:
        order.setdefault(sc.topology, len(order))
        sets.setdefault(group(sc), len(sets))
    return sorted(scenarios, key=lambda sc: (order[sc.topology], sets[group(sc)]))


def capture_points(topo: topology.Topology) -> list[tuple[str, str]]:
    """(node, interface) of every linked interface of every node.  The switch
    ports matter: frames an XDP program redirects bypass the packet taps of
    the port they leave by (the LB's own pcaps show only what its kernel
    handles), and the switch port at the other end of the link sees them."""
    out = []
    for node in topo.nodes.values():
        out += [(node.name, ep.ifname) for ep, _ in topo.links_of(node.name)]
    return out


class Runner:
    """Runs scenarios on one engine: `with Runner(engine="vm") as r: r.run(scs)`."""

    def __init__(
        self,
        engine: str = "vm",
        *,
        kernel: str | None = None,
        out: Path | None = None,
        progress: Callable[[str], None] | None = None,
        vm: Any = None,  # a running VMSession to borrow (the pytest plugin's)
        artifacts: Any = None,
    ) -> None:
        if engine not in ENGINES:
            raise LabError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self.engine = engine
        self.kernel = kernel
        self.out = Path(out or REPO / "build" / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
        self.progress = progress or (lambda _m: None)
        self._vm = vm
        self._art = artifacts
        self._stack = contextlib.ExitStack()
        self.kernel_info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._lab: tuple[Path, Lab, float, contextlib.ExitStack] | None = None
        self._caps: list[Capture] = []
        self._labs_made = 0

    # -- the engine's kernel -------------------------------------------------------------------
    def __enter__(self) -> Runner:
        self.out.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._close_lab()
        finally:
            self._stack.close()

    def programs(self) -> Any:
        if self._art is None:
            self._art = kmod.build(self.kernel) if self.engine == "vm" else kmod.userspace()
        return self._art

    def _guest(self) -> Any:
        if self._vm is None:
            from lab import bpf, lb
            from lab.vm.session import VMSession

            art = self.programs()
            t0 = time.monotonic()
            self.progress(f"booting the guest ({self.kernel or 'default kernel'})")
            vm = VMSession(kernel=self.kernel, progress=self.progress, results=self.out, cpus=GUEST_CPUS)
            self._vm = self._stack.enter_context(vm)
            self._vm.provide([*art.files(), bpf.obj_path(lb.BPF_OBJ), bpf.obj_path("xdp_pass")])
            self.timings["boot_s"] = round(time.monotonic() - t0, 2)
        if not self.kernel_info:
            build = self._vm.kernel_build.to_json()
            self.kernel_info = {"release": self._vm.release, "engine": "vm", "build": build}
        return self._vm

    def fits(self, sc: Scenario) -> str:
        """Why this engine cannot run the scenario, or ''."""
        if sc.modules and self.engine == "host":
            return (
                f"needs {', '.join(sc.modules)} loaded and the host engine shares the running kernel, "
                f"{os.uname().release}, which has no module support here: run it with --engine vm"
            )
        return ""

    # -- running -------------------------------------------------------------------------------
    def run(
        self, scenarios: Sequence[Scenario], on_result: Callable[[Result], None] | None = None
    ) -> list[Result]:
        """Every scenario, those of one topology one after the other (each topology
        up once), in the order of first appearance; on_result as each one finishes."""
        report = on_result or (lambda _r: None)
        results = {}
        for sc in by_topology(scenarios):
            results[sc.id] = self.run_one(sc)
            report(results[sc.id])
        return [results[sc.id] for sc in scenarios]

    def run_one(self, sc: Scenario) -> Result:
        """One scenario, on the lab of its topology (kept up for the next scenario
        of the same topology, taken down for another or at exit)."""
        why = self.fits(sc)
        if why:
            return self._finish(Result(sc.id, sc.description, "skip", self.engine, reason=why))
        try:
            lab, up_s = self._lab_for(sc.topology_path)
        except LabError as e:
            res = Result(sc.id, sc.description, "fail", self.engine, reason=f"lab {sc.topology}: {e}")
            return self._finish(res)
        return self._run_one(lab, sc, up_s)

    def _lab_for(self, path: Path) -> tuple[Lab, float]:
        if self._lab is not None and self._lab[0] == path:
            return self._lab[1], self._lab[2]
        self._close_lab()
        topo = topology.load(path)
        self._labs_made += 1
        name = f"sc{self._labs_made}-{os.getpid() % 100000}"
        vm = self._guest() if self.engine == "vm" else None
        if vm is None and not self.kernel_info:
            self.kernel_info = {"release": os.uname().release, "engine": "host"}
        t0 = time.monotonic()
        stack = contextlib.ExitStack()
        try:
            lab = stack.enter_context(vm.lab(topo, name=name) if vm is not None else Lab.up(topo, name=name))
            # one capture per interface for the lab's life (a tcpdump start costs about a
            # second of a TCG guest); each scenario gets its slice of them (slice_pcap)
            where = self.out / "labs" / f"{self._labs_made}-{topo.name}"
            where.mkdir(parents=True, exist_ok=True)
            self._caps = stack.enter_context(captures(lab, capture_points(topo), where))
        except BaseException:
            stack.close()
            raise
        self._lab = (path, lab, round(time.monotonic() - t0, 2), stack)
        return lab, self._lab[2]

    def _clock(self, lab: Lab) -> float:
        """Now, on the clock that stamps the lab's captures (its kernel's)."""
        if self.engine == "host":
            return time.time()
        return float(lab.kernel().run(["date", "+%s.%N"], "reading the guest's clock").strip())

    def _close_lab(self) -> None:
        if self._lab is not None:
            stack, self._lab, self._caps = self._lab[3], None, []
            stack.close()

    def _modules(self, want: Sequence[str], trusted: str = "") -> None:
        """Exactly the wanted modules loaded, each trusting `trusted` (kmod/README.md)."""
        if self.engine != "vm":
            return
        vm, art = self._guest(), self.programs()
        have = kmod.loaded(vm)
        for mod in MODULES:
            if mod in have and mod not in want:
                kmod.unload(vm, mod)
            elif mod in want and mod not in have:
                kmod.load(vm, mod, art)
        for mod in want:
            kmod.set_trusted(vm, mod, trusted)

    def _run_one(self, lab: Lab, sc: Scenario, up_s: float) -> Result:
        t0 = time.monotonic()
        res = Result(
            sc.id,
            sc.description,
            "fail",
            self.engine,
            kernel=self.kernel_info,
            modules=list(sc.modules),
            timings={"lab_up_s": up_s},
        )
        d = self.out / sc.id
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        res.trusted = trusted_for(sc, lab.topology) if sc.modules else ""
        try:
            self._modules(sc.modules, res.trusted)
        except LabError as e:
            res.reason = f"loading {', '.join(sc.modules)}: {e}"
            return self._finish(res)
        target = self._vm if self.engine == "vm" else None
        mark = kmod.dmesg_mark(target) if target is not None else 0
        t1 = time.monotonic()
        start = self._clock(lab)
        t2 = time.monotonic()
        try:
            res.checks, res.saw = DRIVERS[sc.traffic](Context(lab, sc, self.programs()))
        except LabError as e:
            res.checks.append(check("traffic", "the application answers", str(e), ok=False))
        t3 = time.monotonic()
        time.sleep(SETTLE_S)
        end = self._clock(lab)
        for cap in self._caps:
            if not cap.job or not cap.job.running:
                where = f"{cap.node}:{cap.ifname}"
                res.checks.append(check(f"the capture on {where}", "running", "stopped", ok=False))
            elif cap.path.exists():
                slice_pcap(cap.path, d / cap.path.name, start, end)
        if target is not None:
            problems = kmod.dmesg_problems(target, since=mark)
            res.checks.append(check("kernel log clean", [], problems[:5]))
        res.pcaps = sorted(str(p.relative_to(self.out)) for p in d.glob("*.pcap"))
        res.verdict = "pass" if res.checks and all(c.ok for c in res.checks) else "fail"
        if res.verdict == "fail" and not res.reason:
            bad = next(c for c in res.checks if not c.ok)
            res.reason = f"{bad.name}: expected {bad.expected}, observed {bad.observed}"
        res.timings.update(
            modules_s=round(t1 - t0, 2),
            clock_s=round(t2 - t1, 2),
            traffic_s=round(t3 - t2, 2),
            total_s=round(time.monotonic() - t0, 2),
        )
        return self._finish(res)

    def _finish(self, res: Result) -> Result:
        d = self.out / res.id
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").write_text(json.dumps(res.to_json(), indent=1) + "\n")
        return res


# -- reports ----------------------------------------------------------------------------------
def table_header() -> str:
    return f"{'scenario':<26} {'verdict':<7} {'time':>6}  what the RS application saw"


def table_row(res: Result) -> str:
    took = res.timings.get("total_s")
    t = f"{took:5.1f}s" if took is not None else "     -"
    what = res.saw if res.verdict == "pass" else (res.reason or res.saw)
    return f"{res.id:<26} {res.verdict.upper():<7} {t}  {what}"


def junit(results: Sequence[Result], suite: str = "toalab") -> str:
    """JUnit XML: one testcase per scenario (skips and failures with their reason)."""
    import xml.etree.ElementTree as ET

    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(sum(r.verdict == "fail" for r in results)),
        skipped=str(sum(r.verdict == "skip" for r in results)),
        time=f"{sum(r.timings.get('total_s', 0) for r in results):.2f}",
    )
    for r in results:
        tc = ET.SubElement(
            root,
            "testcase",
            classname=f"{suite}.{r.engine}",
            name=r.id,
            time=f"{r.timings.get('total_s', 0):.2f}",
        )
        if r.verdict == "fail":
            f = ET.SubElement(tc, "failure", message=r.reason)
            f.text = "\n".join(
                f"{'ok ' if c.ok else 'BAD'} {c.name}: expected {c.expected}, observed {c.observed}"
                for c in r.checks
            )
        elif r.verdict == "skip":
            ET.SubElement(tc, "skipped", message=r.reason)
        if r.saw:
            ET.SubElement(tc, "system-out").text = r.saw
    return ET.tostring(root, encoding="unicode") + "\n"
