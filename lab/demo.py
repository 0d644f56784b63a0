"""``make demo``: the lab's main job, end to end.

1. Host engine: bring up fullnat-4to4 with the XDP fullnat LB, send TCP
   and UDP from the client to the VIP, and show from the capture on the
   real server that answered that its packets come from the lb's local
   address and carry the option naming the client and the VIP, byte-exact.
2. VM engine: boot the default Debian kernel (6.1), build fullnat-4to4 inside
   it, and reproduce the seed's demo: a client with set_ip_opt(10.0.0.1:1
   -> 10.0.0.2:2) connects to rs1, whose server sees the real address
   without toa.ko and 10.0.0.1:1 / 10.0.0.2:2 with it; the same over UDP
   through uoa.ko's getsockopt lookup.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
import tempfile
import time
from pathlib import Path

from lab import kmod, topology, traffic, wire
from lab.capture import Capture
from lab.decode import decode
from lab.errors import LabError
from lab.net import Lab

ROOT = Path(__file__).resolve().parent.parent


def _ep(e: dict) -> str:
    return f"{e['family']}: {e['addr']}:{e['port']}"


def vm_demo(topo: topology.Topology) -> int:
    from lab.vm.session import VMSession

    rs = str(topo.node("rs1").address(4))
    seed = ("10.0.0.1:1", "10.0.0.2:2")
    print("[demo] building toa.ko/uoa.ko for the default guest kernel and booting it (TCG: ~20 s)")
    art = kmod.build()
    t0 = time.perf_counter()
    with VMSession(progress=None) as vm, vm.lab(topo, name="demo-vm") as lab:
        print(f"[demo] guest {vm.release} up with {topo.name} inside in {time.perf_counter() - t0:.1f} s")
        for mod in ("toa", "uoa"):
            kmod.unload(vm, mod, missing_ok=True)
        before = traffic.tcp_exchange(lab, "rs1", "lb", rs, 8192, opt=seed, artifacts=art).event
        print(f"[demo] without toa.ko, rs1's server: getpeername: {_ep(before['peer'])}")
        kmod.load(vm, "toa", art, toa_map_table_bits=14)
        kmod.load(vm, "uoa", art)
        after = traffic.tcp_exchange(lab, "rs1", "lb", rs, 8192, opt=seed, artifacts=art).event
        print(f"[demo] with toa.ko:      getpeername: {_ep(after['peer'])}")
        print(f"[demo]                   getsockname: {_ep(after['sock'])}")
        udp = traffic.udp_exchange(lab, "rs1", "lb", rs, 8193, opt=seed, artifacts=art).event
        print(f"[demo] with uoa.ko, UDP lookup: client {_ep(udp['lookup']['client'])}, "
              f"vip {_ep(udp['lookup']['vip'])}")
        stats = kmod.stats(lab, "toa")
        print(f"[demo] /proc/net/toa_stats: parsed_v4_in4 {stats['parsed_v4_in4']}, "
              f"getname_hit {stats['getname_hit']}")
    ok = (
        before["peer"]["addr"] != "10.0.0.1"
        and (after["peer"]["addr"], after["peer"]["port"]) == ("10.0.0.1", 1)
        and (after["sock"]["addr"], after["sock"]["port"]) == ("10.0.0.2", 2)
        and udp["lookup"]["client"]["addr"] == "10.0.0.1"
    )
    if not ok:
        print("[demo] FAILED: the real server did not see the client through TOA/UOA", file=sys.stderr)
        return 1
    print("[demo] the real server's application sees the client and the VIP, not the lb. guest stopped.")
    return 0


def main() -> int:
    topo = topology.load(ROOT / "topologies" / "fullnat-4to4.yaml")
    svc = topo.services["web"]
    progs = kmod.userspace()  # the example programs, for the host engine's lab
    with tempfile.TemporaryDirectory(prefix="toalab-demo-") as tmp:
        t0 = time.perf_counter()
        with Lab.up(topo, name="demo") as lab:
            took = 1e3 * (time.perf_counter() - t0)
            print(f"[demo] {topo.name} up with the XDP fullnat LB in {took:.0f} ms: {topo.description}")
            for node in svc.real_servers:
                addr = topo.node(node).address(4)
                lab.exec("client", ["ping", "-c1", "-W2", str(addr)]).check()
                print(f"[demo] client -> {node} {addr}: ping ok through the lb")
            pcaps = {rs: Path(tmp) / f"{rs}-eth0.pcap" for rs in svc.real_servers}
            with contextlib.ExitStack() as caps:
                for rs, pcap in pcaps.items():
                    caps.enter_context(Capture(lab, rs, "eth0", pcap))
                ex = traffic.vip_exchange(lab, "client", svc.real_servers, str(svc.vip), svc.port,
                                          svc.rs_port, programs=progs)  # fmt: skip
        tcp_c, udp_c = ex.tcp_client["sock"], ex.udp_client["sock"]
        client = wire.endpoint(ipaddress.ip_address(tcp_c["addr"]), tcp_c["port"])
        print(f"[demo] client {client} -> VIP {wire.endpoint(svc.vip, svc.port)}: TCP answered by "
              f"{ex.tcp_server}, UDP by {ex.udp_server}")  # fmt: skip
        seen = wire.endpoint(ipaddress.ip_address(ex.accept["peer"]["addr"]), ex.accept["peer"]["port"])
        print(f"[demo] {ex.tcp_server}'s socket sees the lb's local address {seen} (fullnat); "
              "the real servers' packets carry:")  # fmt: skip
        found = [d for rs in sorted({ex.tcp_server, ex.udp_server}) for d in decode(str(pcaps[rs]))]
        for d in found:
            print(f"         {d}")
        want = {
            "tcp": wire.AddrOption(tcp_c["addr"], tcp_c["port"], svc.vip, svc.port),
            "udp": wire.AddrOption(udp_c["addr"], udp_c["port"], svc.vip, svc.port),
        }
        if {d.outer.split()[-1] for d in found} != {"tcp", "udp"} or any(
            d.option != want[d.outer.split()[-1]] for d in found
        ):
            print(f"[demo] FAILED: expected TCP and UDP packets carrying {want}", file=sys.stderr)
            return 1
    print("[demo] the option names the client and the VIP, byte-exact. lab removed.")
    return vm_demo(topo)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LabError as e:
        print(f"toalab demo: {e}", file=sys.stderr)
        sys.exit(2)
