"""The whole path in one guest: the XDP fullnat LB inserts the option, toa.ko / uoa.ko
on the real servers read it, and the RS application sees the client.

One guest boot for the module; toa and uoa are loaded in it.  For each fullnat
topology (4to4, 6to6, 6to4 = NAT64, 4to4 through VXLAN) the lab is built in the
guest and lab.lb.attach loads bpf/lb.c on its lb node there (the VM engine
attaches nothing at ``up``; the host engine does).  The example servers run on
both real servers (the LB hashes the flow to one of them), the example clients
on the client node connect to VIP:vport *without* ``--opt``: the only option on
the wire is the one the LB inserts.  The accepting server must see
getpeername == the client's own address and port (the client's connect event)
and getsockname == VIP:vport; the UDP server's UOA lookup must give the same
pair.  In 6to4 the IPv4 socket gets the IPv6 client (kmod/README.md).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import unsupported

from lab import bpf, kmod, lb, programs, topology
from lab.net import Lab
from lab.vm.client import RemoteJob
from lab.vm.session import VMSession

pytestmark = [pytest.mark.vm, pytest.mark.bpf]

ROOT = Path(__file__).resolve().parent.parent
CASES = ["fullnat-4to4", "fullnat-6to6", "fullnat-6to4", "fullnat-4to4-vxlan"]


def ep(addr: object, port: int) -> dict[str, Any]:
    a = str(addr)
    return {"family": "ipv6" if ":" in a else "ipv4", "addr": a, "port": port}


def expect(what: str, seen: object, want: object) -> None:
    assert seen == want, f"{what}: expected {want!r}, saw {seen!r}"


@dataclass
class Guest:
    vm: VMSession
    art: kmod.Artifacts


@pytest.fixture(scope="module")
def guest(path_kernel: str) -> Iterator[Guest]:
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root (9p export of /, namespaces in the guest)")
    for obj in (lb.BPF_OBJ, "xdp_pass"):
        bpf.obj_path(obj)  # built on the host; the guest reads bpf/build over its 9p root
    art = kmod.build(path_kernel)
    with VMSession(kernel=path_kernel, progress=None) as vm:
        expect("guest kernel vs the one the modules were built for", vm.release, art.release)
        vm.provide([*art.files(), bpf.obj_path(lb.BPF_OBJ), bpf.obj_path("xdp_pass")])
        for mod in kmod.MODULES:
            try:
                kmod.load(vm, mod, art)
            except kmod.Unsupported as e:
                unsupported(path_kernel, e)
        expect("loaded modules", kmod.loaded(vm), set(kmod.MODULES))
        yield Guest(vm, art)


def _first(jobs: dict[str, RemoteJob], needle: str, timeout: float, what: str) -> str:
    """The node whose job printed needle first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node, job in jobs.items():
            if needle in job.output()[0]:
                return node
        time.sleep(0.05)
    outs = {n: j.output() for n, j in jobs.items()}
    raise AssertionError(f"{what}: expected {needle} from one of {sorted(jobs)}, saw {outs}")


def _event(evs: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for ev in evs:
        if ev.get("event") == name:
            return ev
    raise AssertionError(f"{what}: expected a {name} event, saw {evs}")


@pytest.mark.parametrize("topo_file", CASES)
def test_rs_application_sees_the_client(guest: Guest, topo_file: str) -> None:
    topo = topology.load(ROOT / "topologies" / f"{topo_file}.yaml")
    svc = next(iter(topo.services.values()))
    vip, vport, rport = str(svc.vip), svc.port, svc.rs_port
    family = "-6" if svc.local[0].version == 6 else "-4"  # the RS side's sockets
    art = guest.art
    name = f"lt{CASES.index(topo_file)}-{os.getpid() % 100000}"
    with guest.vm.lab(topo, name=name) as lab:
        handle = lb.attached(lab)  # the VM engine attached it at up
        try:
            _exchange(lab, handle, art, svc.real_servers, family, vip, vport, rport, svc.vxlan)
        finally:
            handle.detach()
        left = guest.vm.run(["ls", str(programs.PIN_ROOT)]).stdout.split()
        expect("pins left in the guest after detach", left, [])


def _exchange(lab: Lab, handle: lb.LbHandle, art: kmod.Artifacts, rss: list[str], family: str,
              vip: str, vport: int, rport: int, vxlan: bool) -> None:  # fmt: skip
    tcp: dict[str, RemoteJob] = {}
    udp: dict[str, RemoteJob] = {}
    try:
        for rs in rss:
            tcp[rs] = lab.spawn(rs, [art.bin("tcp_server"), family, "--json", "--once", "--timeout", "5",
                                     str(rport)])  # fmt: skip
            udp[rs] = lab.spawn(rs, [art.bin("udp_server"), family, "--json", "--once", "--echo", str(rport)])
        for rs in rss:
            kmod.wait_for(tcp[rs], '"event":"listening"', 15.0, f"tcp_server on {rs}")
            kmod.wait_for(udp[rs], '"event":"listening"', 15.0, f"udp_server on {rs}")
        clients = [
            [art.bin("tcp_client"), "--json", "--once", vip, str(vport)],
            [art.bin("udp_client"), "--json", "--once", "--wait-reply", "5000", vip, str(vport)],
        ]
        script = "; ".join(f"echo {kmod.MARK}; " + shlex.join(argv) for argv in clients)
        res = lab.exec("client", ["sh", "-c", script], timeout=30)
        chunks = res.stdout.split(kmod.MARK + "\n")[1:]
        expect("client outputs (tcp, udp)", len(chunks), 2)
        tcp_c, udp_c = (kmod.events(c) for c in chunks)
        for proto, evs in (("tcp", tcp_c), ("udp", udp_c)):
            errors = [e for e in evs if e.get("event") == "error"]
            expect(f"{proto}_client errors ({res.stderr.strip()})", errors, [])

        # TCP: the accepting server's getpeername / getsockname
        cli = _event(tcp_c, "connect", "tcp_client")
        expect("tcp_client's peer", cli["peer"], ep(vip, vport))
        rs = _first(tcp, '"event":"accept"', 15.0, "tcp accept")
        expect(f"tcp_server on {rs} exit", tcp[rs].wait(15.0), 0)
        srv = kmod.events(tcp[rs].output()[0])
        acc = _event(srv, "accept", f"tcp_server on {rs}")
        expect(f"{rs} getpeername (the client's own address)", acc["peer"], cli["sock"])
        expect(f"{rs} accept() address", acc["accept"], cli["sock"])
        expect(f"{rs} getsockname (VIP:vport)", acc["sock"], ep(vip, vport))
        expect(f"{rs} TOA lookup", (acc["lookup"], acc["lookup_error"]),
               ({"client": cli["sock"], "vip": ep(vip, vport)}, None))  # fmt: skip
        others = [n for n in rss if n != rs and '"event":"accept"' in tcp[n].output()[0]]
        expect("other real servers that accepted", others, [])

        # UDP: the datagram's UOA lookup; the echo comes back through the LB
        cli = _event(udp_c, "connect", "udp_client")
        rs = _first(udp, '"event":"datagram"', 15.0, "udp datagram")
        expect(f"udp_server on {rs} exit", udp[rs].wait(15.0), 0)
        dg = _event(kmod.events(udp[rs].output()[0]), "datagram", f"udp_server on {rs}")
        expect(f"{rs} UOA lookup (client, VIP:vport)", (dg["lookup"], dg["lookup_error"]),
               ({"client": cli["sock"], "vip": ep(vip, vport)}, None))  # fmt: skip
        expect("udp_client's reply (the echo back through the LB)",
               [e["event"] for e in udp_c if e.get("event") in ("reply", "no_reply")], ["reply"])  # fmt: skip
    finally:
        for job in (*tcp.values(), *udp.values()):
            if job.running:
                job.terminate()
    c = handle.counters()
    assert c["fwd_opt"] >= 2, f"expected the LB to insert the option (fwd_opt >= 2), saw {c}"
    assert bool(c["vxlan"]) == vxlan, f"expected vxlan counter {'> 0' if vxlan else '0'}, saw {c}"
