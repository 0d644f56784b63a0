"""The XDP programs on each VM kernel of the axis (6.1: make test; 6.12: make test-extended):
verifier-clean there too, and the same packets in give the same packets out
as on the host kernel.

The guest runs the host's own bpf/build/xdp_test_run (the host's / is its
root over 9p), so only the kernel differs between the two runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether
from test_lb_bpf import FAMILIES, LPORT, RPORT, Scenario, ingress_of, l4seg
from test_lb_icmp_bpf import PORT_UNREACH, TOO_BIG, client_error, flow, l3_of, rs_error

from lab import bpf, gwping, gwprobe, lb
from lab.vm import kernels
from lab.vm.session import VMSession

pytestmark = [pytest.mark.vm, pytest.mark.bpf]

PROGRAMS = [("gwping", "xdp_gwping"), ("xdp_pass", "xdp_pass"), ("lb", "xdp_lb"), ("lb_mactx", "xdp_mactx")]


@pytest.fixture(scope="module")
def guest(kernel: str) -> Iterator[bpf.Runner]:
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root")
    for obj, _ in PROGRAMS:
        bpf.obj_path(obj)  # build on the host before the guest reads the files
    with VMSession(kernel=kernel, progress=None) as vm:
        series = kernels.parse_request(kernel).series
        assert vm.kernel_build.series == series, f"expected a {series} guest, got {vm.release}"
        k = vm.kernel()
        k.provide([bpf.obj_path(obj) for obj, _ in PROGRAMS] + [bpf.TEST_RUN])
        yield k.runner


@pytest.mark.parametrize(("obj", "prog"), PROGRAMS, ids=[p for _, p in PROGRAMS])
def test_verifier_accepts_on_both_kernels(guest: bpf.Runner, obj: str, prog: str) -> None:
    host = bpf.load_check(bpf.obj_path(obj), prog)
    vm = bpf.load_check(bpf.obj_path(obj), prog, runner=guest)
    assert (host.prog, vm.prog) == (prog, prog)
    assert vm.xlated_insns > 0 and vm.verified_insns > 0, f"guest verifier: {vm}"


def _same(host: list[bpf.XdpResult], vm: list[bpf.XdpResult]) -> None:
    assert len(host) == len(vm)
    for i, (h, v) in enumerate(zip(host, vm, strict=True)):
        assert (v.action, v.data_out.hex()) == (h.action, h.data_out.hex()), f"packet {i} differs"


@pytest.mark.parametrize("family", [4, 6])
def test_gwping_same_output_on_both_kernels(guest: bpf.Runner, family: int) -> None:
    src, dst = ("198.18.1.10", "198.18.2.2") if family == 4 else ("2001:db8:70:1::10", "2001:db8:70:2::2")
    frames = [
        bytes(Ether() / gwprobe.probe_packet(src, dst, 40000 + i, 8080, i, tsval))
        for i, tsval in enumerate((gwping.MAGIC, gwping.MAGIC_PASS, 0x12345678))
    ]
    obj = bpf.obj_path("gwping")
    host = bpf.run_xdp_many(obj, "xdp_gwping", frames)
    vm = bpf.run_xdp_many(obj, "xdp_gwping", frames, runner=guest)
    _same(host, vm)
    assert host[0].data_out != frames[0], "MAGIC must be rewritten on both kernels"


@pytest.mark.parametrize(("cfam", "rfam"), FAMILIES, ids=[f"{c}to{r}" for c, r in FAMILIES])
def test_lb_same_output_on_both_kernels(guest: bpf.Runner, cfam: int, rfam: int) -> None:
    sc = Scenario(cfam, rfam)
    frames = [
        sc.client(l4seg("tcp", "S")),
        sc.rs(TCP(sport=RPORT, dport=LPORT, flags="SA", seq=5000, ack=1001)),
        sc.client(l4seg("tcp", "A", ack=5001)),
        sc.client(l4seg("udp", "", b"datagram")),
    ]
    obj = bpf.obj_path(lb.BPF_OBJ)
    ports = ingress_of(frames)
    host = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=sc.updates(), ingress=ports)
    vm = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=sc.updates(), ingress=ports, runner=guest)
    _same(host, vm)
    assert [r.action for r in host] == ["XDP_REDIRECT"] * 4


@pytest.mark.parametrize(("cfam", "rfam"), FAMILIES, ids=[f"{c}to{r}" for c, r in FAMILIES])
def test_lb_icmp_same_output_on_both_kernels(guest: bpf.Runner, cfam: int, rfam: int) -> None:
    """ICMP errors about a flow, both ways, are translated alike on both kernels."""
    sc = Scenario(cfam, rfam)
    obj = bpf.obj_path(lb.BPF_OBJ)
    first, reply = flow(sc, "udp")
    sent = bpf.run_xdp_many(obj, lb.BPF_PROG, [first, reply], map_updates=sc.updates(), ingress=[1, 2])
    t, c = PORT_UNREACH.of(rfam)
    t2, c2 = TOO_BIG.of(cfam)
    frames = [first, reply, rs_error(sc, l3_of(sent[0].data_out), t, c),
              client_error(sc, l3_of(sent[1].data_out), t2, c2, TOO_BIG.rest(cfam, 1400))]  # fmt: skip
    ports = ingress_of(frames)
    host = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=sc.updates(), ingress=ports)
    vm = bpf.run_xdp_many(obj, lb.BPF_PROG, frames, map_updates=sc.updates(), ingress=ports, runner=guest)
    _same(host, vm)
    assert [r.action for r in host] == ["XDP_REDIRECT"] * 4
