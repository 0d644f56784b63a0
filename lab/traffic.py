"""Real traffic between lab nodes: the one traffic driver of the lab.

It drives the example programs of kmod/examples (tcp/udp server and client,
static C, --json events), so the same exchange runs on any engine: on the
host's namespaces, or in a guest, where Python would take seconds to start
and scapy tens of seconds.  The servers report what their application sees
(accept(), getpeername/getsockname, the TOA and UOA lookups); the clients
report their own addresses, so a check compares the two.

    progs = kmod.build()                        # or kmod.userspace() for the host
    ex = traffic.tcp_exchange(lab, "rs1", "lb", "192.0.2.11", 8080,
                              opt=("10.0.0.1:1", "10.0.0.2:2"), artifacts=progs)
    ex.event["peer"]                             # {"family": "ipv4", "addr": "10.0.0.1", "port": 1}
    f = traffic.vip_flow(lab, "tcp", "client", ["rs1", "rs2"], "203.0.113.10", 80, 8080, programs=progs)
    f.event["peer"] == f.client["sock"]          # with toa.ko on the RS
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lab.errors import LabError
from lab.net import Lab


class Programs(Protocol):
    """Where the example programs are (kmod.Artifacts, kmod.userspace())."""

    def bin(self, name: str) -> str: ...


@dataclass(frozen=True)
class Client:
    """One client run: the option (CIP:CPORT, VIP:VPORT), raw option bytes, or none."""

    opt: tuple[str, str] | None = None
    raw_opt: str | None = None
    extra: tuple[str, ...] = ()

    def argv(self, program: str, host: str, port: int) -> list[str]:
        argv = [program, "--json"]
        if self.opt:
            argv += ["--opt", *self.opt]
        if self.raw_opt:
            argv += ["--raw-opt", self.raw_opt]
        return [*argv, *self.extra, host, str(port)]


@dataclass
class Exchange:
    """The server's events for one client, and that client's own events."""

    proto: str
    server: list[dict[str, Any]]
    client: list[dict[str, Any]]
    server_output: str = ""
    client_output: str = ""

    @property
    def event(self) -> dict[str, Any]:
        """The server's accept (TCP) or datagram (UDP) event."""
        want = "accept" if self.proto == "tcp" else "datagram"
        for ev in self.server:
            if ev.get("event") == want:
                return ev
        raise LabError(f"the {self.proto} server reported no {want} event: {self.server_output!r}")

    def client_event(self, name: str) -> dict[str, Any]:
        for ev in self.client:
            if ev.get("event") == name:
                return ev
        raise LabError(f"the {self.proto} client reported no {name} event: {self.client_output!r}")


@dataclass
class _Split:
    per_client: list[list[dict[str, Any]]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)


def events(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


MARK = "--toalab-client--"


def exchanges(
    lab: Lab,
    proto: str,
    server_node: str,
    client_node: str,
    host: str,
    port: int,
    clients: Sequence[Client],
    *,
    artifacts: Programs,
    server_family: str | None = None,
    timeout: float = 60.0,
) -> list[Exchange]:
    """Start one server (--json --count N) on server_node, run the N clients one after
    the other on client_node (one command), return one Exchange per client.

    The server listens on IPv4 or IPv6 after `host`'s family, or `server_family`
    ("-4", "-6": dual-stack, so an IPv4 connection shows v4-mapped addresses)."""
    if proto not in ("tcp", "udp"):
        raise LabError(f"proto must be tcp or udp, not {proto!r}")
    n = len(clients)
    family = server_family or ("-6" if ":" in host else "-4")
    srv = [artifacts.bin(f"{proto}_server"), family, "--json", "--count", str(n)]
    if proto == "tcp":
        srv += ["--timeout", "5"]
    srv.append(str(port))
    job = lab.spawn(server_node, srv)
    try:
        wait_for(job, '"event":"listening"', 15.0, f"{proto}_server on {server_node}")
        prog = artifacts.bin(f"{proto}_client")
        script = "\n".join(
            f"echo {MARK}; " + shlex.join(c.argv(prog, host, port)) for c in clients
        )  # one client after the other, each marked
        res = lab.exec(client_node, ["sh", "-c", script], timeout=timeout)
        split = _split_clients(res.stdout, n)
        failed = [i for i, evs in enumerate(split.per_client) if any(e.get("event") == "error" for e in evs)]
        if failed:
            raise LabError(
                f"{proto}_client #{failed[0]} on {client_node} failed: {split.raw[failed[0]].strip()} "
                f"{res.stderr.strip()}"
            )
        code = job.wait(timeout=15.0)
    finally:
        if job.running:
            job.terminate()
    out, err = job.output()
    sevents = events(out)
    if code != 0:
        raise LabError(f"{proto}_server on {server_node} exited {code}: {out}{err}")
    want = "accept" if proto == "tcp" else "datagram"
    accepted = [ev for ev in sevents if ev.get("event") == want]
    result = []
    for i in range(n):
        evs = [ev for ev in sevents if ev.get("event") != want]
        evs += [ev for ev in accepted if ev.get("n") == i]
        evs += [ev for ev in sevents if ev.get("event") == "close" and ev.get("n") == i]
        result.append(Exchange(proto, evs, split.per_client[i], out, split.raw[i]))
    return result


def tcp_exchange(
    lab: Lab, server_node: str, client_node: str, host: str, port: int,
    *, opt: tuple[str, str] | None = None, raw_opt: str | None = None, artifacts: Programs,
) -> Exchange:  # fmt: skip
    """One TCP connection; `.event` is the server's parsed accept event."""
    c = Client(opt=opt, raw_opt=raw_opt)
    return exchanges(lab, "tcp", server_node, client_node, host, port, [c], artifacts=artifacts)[0]


def udp_exchange(
    lab: Lab, server_node: str, client_node: str, host: str, port: int,
    *, opt: tuple[str, str] | None = None, raw_opt: str | None = None, artifacts: Programs,
) -> Exchange:  # fmt: skip
    """One datagram; `.event` is the server's datagram event (with the UOA lookup)."""
    c = Client(opt=opt, raw_opt=raw_opt, extra=("--once",))
    return exchanges(lab, "udp", server_node, client_node, host, port, [c], artifacts=artifacts)[0]


def _split_clients(stdout: str, n: int) -> _Split:
    chunks = stdout.split(MARK + "\n")[1:]
    if len(chunks) != n:
        raise LabError(f"expected the output of {n} clients, got {len(chunks)}: {stdout!r}")
    return _Split([events(c) for c in chunks], chunks)


def wait_for(job: Any, needle: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        out, err = job.output()
        if needle in out:
            return
        if not job.running:
            raise LabError(f"{what} ended before {needle}: {out}{err}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise LabError(f"{what}: no {needle} within {timeout} s")


# -- raw packets ---------------------------------------------------------------------------------
# Plain python3 in the node (no scapy there): IPv4 packets, built by the caller, sent as they are.
_SEND_RAW = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
    "for h in sys.argv[2:]:\n"
    "    s.sendto(bytes.fromhex(h), (sys.argv[1], 0))\n"
)


def send_raw(lab: Lab, node: str, dst: str, packets: Sequence[bytes]) -> None:
    """IPv4 packets (whole, header included) sent from `node` towards `dst` through
    a raw socket: forged options, bad checksums, what no socket API would send."""
    lab.exec(node, ["python3", "-c", _SEND_RAW, dst, *(bytes(p).hex() for p in packets)], timeout=60).check()


# -- through a VIP ------------------------------------------------------------------------------
@dataclass
class VipFlow:
    """One TCP connection or one UDP datagram from a client to VIP:vport, as both
    ends saw it: the client's own connect event (its sock is the client's
    address), which real server took it, and that server's accept / datagram
    event (peer, sock, accept, lookup)."""

    proto: str
    client: dict[str, Any]
    server: str
    event: dict[str, Any]
    reply: bool  # UDP: the server's echo came back to the client; TCP: the connection closed cleanly


def vip_flow(
    lab: Lab, proto: str, client: str, servers: Sequence[str], vip: str, vport: int, rport: int,
    *, programs: Programs, family: str | None = None, timeout: float = 15.0,
) -> VipFlow:  # fmt: skip
    """A server on every real server (the LB picks one per flow), the client on
    `client` with no option of its own.  `family`: the servers' socket family
    ("-4", "-6" dual-stack; default the VIP's).  Raises LabError naming what was
    expected and what was seen when a program fails, nobody or more than one
    server answers."""
    if proto not in ("tcp", "udp"):
        raise LabError(f"proto must be tcp or udp, not {proto!r}")
    fam = family or ("-6" if ":" in vip else "-4")
    want, what = ("accept", "tcp_server") if proto == "tcp" else ("datagram", "udp_server")
    srv = [programs.bin(what), fam, "--json", "--once"]
    srv += ["--timeout", "5"] if proto == "tcp" else ["--echo"]
    cli = [programs.bin(f"{proto}_client"), "--json", "--once"]
    cli += [] if proto == "tcp" else ["--wait-reply", "5000"]
    jobs: dict[str, Any] = {}
    try:
        for rs in servers:
            jobs[rs] = lab.spawn(rs, [*srv, str(rport)])
        for rs in servers:
            wait_for(jobs[rs], '"event":"listening"', timeout, f"{what} on {rs}")
        res = lab.exec(client, [*cli, vip, str(vport)], timeout=30 + timeout)
        cevs = events(res.stdout)
        _no_error(cevs, f"{proto}_client on {client}", res.stderr.strip())
        rs = _first(jobs, f'"event":"{want}"', timeout, f"a {what} {want}ing for {vip}:{vport}")
        code = jobs[rs].wait(timeout)
        if code != 0:
            raise LabError(f"{what} on {rs} exited {code}: {jobs[rs].output()}")
        others = [n for n in servers if n != rs and f'"event":"{want}"' in jobs[n].output()[0]]
        if others:
            raise LabError(f"one {proto} flow, taken by {rs} and also by {others}")
        reply = any(e.get("event") == "reply" for e in cevs) if proto == "udp" else res.returncode == 0
        return VipFlow(
            proto=proto,
            client=_event(cevs, "connect", f"{proto}_client"),
            server=rs,
            event=_event(events(jobs[rs].output()[0]), want, f"{what} on {rs}"),
            reply=reply,
        )
    finally:
        _stop(jobs.values())


@dataclass
class ProxyFlow:
    """One TCP connection through an L7 proxy: the client's connect event, the
    proxy's accept and upstream events, the real server's accept event."""

    client: dict[str, Any]
    accept: dict[str, Any]  # the proxy's: client, vip
    upstream: dict[str, Any]  # the proxy's own connection: sock, peer
    event: dict[str, Any]  # the real server's accept event
    closed: bool


def proxy_flow(
    lab: Lab, client: str, proxy: str, server: str, vip: str, port: int, rip: str, rport: int,
    *, programs: Programs, family: str | None = None, timeout: float = 15.0,
) -> ProxyFlow:  # fmt: skip
    """tcp_server on `server`, tcp_proxy on `proxy` (port -> rip:rport, with
    set_ip_opt), tcp_client on `client` to vip:port."""
    fam = family or ("-6" if ":" in rip else "-4")
    jobs: dict[str, Any] = {}
    try:
        jobs["server"] = lab.spawn(server, [programs.bin("tcp_server"), fam, "--json", "--once", "--timeout",
                                            "5", str(rport)])  # fmt: skip
        wait_for(jobs["server"], '"event":"listening"', timeout, f"tcp_server on {server}")
        jobs["proxy"] = lab.spawn(proxy, [programs.bin("tcp_proxy"), "-6", "--json", "--once", str(port), rip,
                                          str(rport)])  # fmt: skip
        wait_for(jobs["proxy"], '"event":"listening"', timeout, f"tcp_proxy on {proxy}")
        res = lab.exec(client, [programs.bin("tcp_client"), "--json", "--once", vip, str(port)],
                       timeout=30 + timeout)  # fmt: skip
        cevs = events(res.stdout)
        _no_error(cevs, f"tcp_client on {client}", res.stderr.strip())
        for name, node in (("proxy", proxy), ("server", server)):
            code = jobs[name].wait(timeout)
            if code != 0:
                raise LabError(f"tcp_{name} on {node} exited {code}: {jobs[name].output()}")
        pevs = events(jobs["proxy"].output()[0])
        _no_error(pevs, f"tcp_proxy on {proxy}")
        return ProxyFlow(
            client=_event(cevs, "connect", "tcp_client"),
            accept=_event(pevs, "accept", f"tcp_proxy on {proxy}"),
            upstream=_event(pevs, "upstream", f"tcp_proxy on {proxy}"),
            event=_event(events(jobs["server"].output()[0]), "accept", f"tcp_server on {server}"),
            closed=res.returncode == 0,
        )
    finally:
        _stop(jobs.values())


def _no_error(evs: list[dict[str, Any]], what: str, detail: str = "") -> None:
    """LabError when a program reported an error event."""
    err = next((e for e in evs if e.get("event") == "error"), None)
    if err is not None:
        raise LabError(f"{what} failed: {err} {detail}".rstrip())


def _stop(jobs: Iterable[Any]) -> None:
    for job in jobs:
        if job.running:
            job.terminate()


def _first(jobs: dict[str, Any], needle: str, timeout: float, what: str) -> str:
    """The node whose job printed needle first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node, job in jobs.items():
            if needle in job.output()[0]:
                return node
        time.sleep(0.05)
    seen = {n: j.output() for n, j in jobs.items()}
    raise LabError(f"{what}: expected {needle} from one of {sorted(jobs)}, saw {seen}")


def _event(evs: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for ev in evs:
        if ev.get("event") == name:
            return ev
    raise LabError(f"{what}: expected a {name} event, saw {evs}")
