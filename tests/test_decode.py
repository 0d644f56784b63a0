"""Real packets with the option, captured on a real server and decoded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOPOLOGIES, needs_root
from scapy.layers.inet import IP, TCP
from scapy.utils import wrpcap

from lab import kmod, topology, traffic, wire
from lab.capture import Capture
from lab.decode import decode
from lab.net import Lab

OPT4 = wire.AddrOption("10.0.0.1", 1, "10.0.0.2", 2)
OPT6 = wire.AddrOption("2001:db8::1", 1, "2001:db8::2", 2)


@pytest.mark.host
@pytest.mark.parametrize(
    ("topo", "src", "dst", "opt", "form"),
    [
        ("fullnat-4to4", "192.0.2.2", "192.0.2.11", OPT4, "ipv4"),
        ("fullnat-4to4", "192.0.2.2", "192.0.2.11", OPT6, "ipv4"),
        ("fullnat-6to6", "2001:db8:5::2", "2001:db8:5::11", OPT4, "ipv6"),
        ("fullnat-6to6", "2001:db8:5::2", "2001:db8:5::11", OPT6, "ipv6"),
    ],
    ids=["v4-in-v4", "v6-in-v4", "v4-in-v6", "v6-in-v6"],
)
def test_captured_option_decodes(
    topo: str, src: str, dst: str, opt: wire.AddrOption, form: str, lab_name: str, tmp_path: Path
) -> None:
    needs_root()
    pcap = tmp_path / "rs1.pcap"
    with (
        Lab.up(topology.load(TOPOLOGIES / f"{topo}.yaml"), name=lab_name) as lab,
        Capture(lab, "rs1", "eth0", pcap),
    ):
        # the lb node plays an L7 LB: set_ip_opt on its own sockets (tcp_client/udp_client --opt)
        o = (wire.endpoint(opt.cip, opt.cport), wire.endpoint(opt.vip, opt.vport))
        progs = kmod.userspace()
        for proto, extra in (("tcp", ()), ("udp", ("--once",))):
            c = traffic.Client(opt=o, extra=(*extra, "--bind", src))
            traffic.exchanges(lab, proto, "rs1", "lb", dst, 8080, [c], artifacts=progs)
    found = list(decode(str(pcap)))
    protos = {d.outer.split()[-1] for d in found}
    assert protos == {"tcp", "udp"}, [str(d) for d in found]
    assert all(d.option == opt and d.form == form and d.error is None for d in found)
    assert all(d.outer.startswith(wire.endpoint(wire.ipaddress.ip_address(src), 0)[:-1]) for d in found)
    # the CLI prints the same lines
    out = subprocess.run([sys.executable, "-m", "lab", "decode", str(pcap)], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.count(f"[{form} option] {opt}") == len(found)


def test_decode_flags_forged_option_and_skips_plain(tmp_path: Path) -> None:
    pcap = tmp_path / "forged.pcap"
    good = IP(src="192.0.2.2", dst="192.0.2.11", options=[OPT4.pack_ipv4()]) / TCP(sport=1000, dport=80)
    forged = bytearray(bytes(good))
    forged[22] = 1  # operation says IPv6 inside a 16-byte option
    wrpcap(str(pcap), [IP(src="192.0.2.2", dst="192.0.2.11") / TCP(), good, IP(bytes(forged))])
    lines = [str(d) for d in decode(str(pcap))]
    assert lines == [
        "#2 192.0.2.2:1000 -> 192.0.2.11:80 tcp [ipv4 option] 10.0.0.1:1 -> 10.0.0.2:2",
        "#3 192.0.2.2:1000 -> 192.0.2.11:80 tcp malformed option: operation 0x01 says IPv6 inside "
        "but length 16 is for IPv4",
    ]


def test_decode_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "not.pcap"
    bad.write_text("nope")
    out = subprocess.run([sys.executable, "-m", "lab", "decode", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith(f"toalab: {bad}: cannot read capture")
