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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import unsupported

from lab import bpf, kmod, lb, programs, topology, traffic
from lab.net import Lab
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
            _exchange(lab, art, svc.real_servers, family, vip, vport, rport)
        finally:
            handle.detach()
        left = guest.vm.run(["ls", str(programs.PIN_ROOT)]).stdout.split()
        expect("pins left in the guest after detach", left, [])


def _exchange(lab: Lab, art: kmod.Artifacts, rss: list[str], family: str, vip: str, vport: int,
              rport: int) -> None:  # fmt: skip
    ex = traffic.vip_exchange(lab, "client", rss, vip, vport, rport, programs=art, family=family)
    # TCP: the accepting server's getpeername / getsockname
    cli, acc, rs = ex.tcp_client, ex.accept, ex.tcp_server
    expect("tcp_client's peer", cli["peer"], ep(vip, vport))
    expect(f"{rs} getpeername (the client's own address)", acc["peer"], cli["sock"])
    expect(f"{rs} accept() address", acc["accept"], cli["sock"])
    expect(f"{rs} getsockname (VIP:vport)", acc["sock"], ep(vip, vport))
    expect(f"{rs} TOA lookup", (acc["lookup"], acc["lookup_error"]),
           ({"client": cli["sock"], "vip": ep(vip, vport)}, None))  # fmt: skip
    # UDP: the datagram's UOA lookup; the echo comes back through the LB
    cli, dg, rs = ex.udp_client, ex.datagram, ex.udp_server
    expect(f"{rs} UOA lookup (client, VIP:vport)", (dg["lookup"], dg["lookup_error"]),
           ({"client": cli["sock"], "vip": ep(vip, vport)}, None))  # fmt: skip
    expect("udp_client's reply (the echo back through the LB)", ex.udp_reply, True)
