"""``make demo``: the lab's main job, end to end.

1. Host engine: bring up fullnat-4to4, check the client reaches both real
   servers through the lb, then have the lb's local address talk to rs1
   with the address option set (as an L7 LB with set_ip_opt does) and show,
   from the capture taken on rs1, that the option arrived byte-exact.
2. VM engine: boot the pinned Debian 6.1 kernel, build fullnat-4to4 inside
   it, and reproduce the seed's demo: a client with set_ip_opt(10.0.0.1:1
   -> 10.0.0.2:2) connects to rs1, whose server sees the real address
   without toa.ko and 10.0.0.1:1 / 10.0.0.2:2 with it; the same over UDP
   through uoa.ko's getsockopt lookup.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from lab import topology, wire
from lab.capture import Capture
from lab.decode import decode
from lab.errors import LabError
from lab.lab import Lab
from lab.traffic import optioned_exchange

ROOT = Path(__file__).resolve().parent.parent


def _ep(e: dict) -> str:
    return f"{e['family']}: {e['addr']}:{e['port']}"


def vm_demo(topo: topology.Topology) -> int:
    from lab import kmod
    from lab.vm.session import VMSession

    rs = str(topo.node("rs1").address(4))
    seed = ("10.0.0.1:1", "10.0.0.2:2")
    print("[demo] building toa.ko/uoa.ko for the pinned guest kernel and booting it (TCG: ~20 s)")
    art = kmod.build()
    t0 = time.perf_counter()
    with VMSession(progress=None) as vm, vm.lab(topo, name="demo-vm") as lab:
        print(f"[demo] guest {vm.release} up with {topo.name} inside in {time.perf_counter() - t0:.1f} s")
        for mod in ("toa", "uoa"):
            kmod.unload(vm, mod, missing_ok=True)
        before = kmod.tcp_exchange(lab, "rs1", "lb", rs, 8192, opt=seed, artifacts=art).event
        print(f"[demo] without toa.ko, rs1's server: getpeername: {_ep(before['peer'])}")
        kmod.load(vm, "toa", art, toa_map_table_bits=14)
        kmod.load(vm, "uoa", art)
        after = kmod.tcp_exchange(lab, "rs1", "lb", rs, 8192, opt=seed, artifacts=art).event
        print(f"[demo] with toa.ko:      getpeername: {_ep(after['peer'])}")
        print(f"[demo]                   getsockname: {_ep(after['sock'])}")
        udp = kmod.udp_exchange(lab, "rs1", "lb", rs, 8193, opt=seed, artifacts=art).event
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
    client = topo.node("client").address(4)
    opt = wire.AddrOption(client, 40000, svc.vip, svc.port)
    rs = topo.node("rs1").address(4)
    with tempfile.TemporaryDirectory(prefix="toalab-demo-") as tmp:
        pcap = Path(tmp) / "rs1-eth0.pcap"
        t0 = time.perf_counter()
        with Lab.up(topo, name="demo") as lab:
            print(f"[demo] {topo.name} up in {1e3 * (time.perf_counter() - t0):.0f} ms: {topo.description}")
            for node in svc.real_servers:
                addr = topo.node(node).address(4)
                lab.exec("client", ["ping", "-c1", "-W2", str(addr)]).check()
                print(f"[demo] client {client} -> {node} {addr}: ping ok through the lb")
            print(f"[demo] lb {svc.local[0]} -> rs1 {rs}:8080, TCP and UDP, option {opt}")
            with Capture(lab, "rs1", "eth0", pcap):
                optioned_exchange(lab, "lb", "rs1", str(svc.local[0]), str(rs), opt)
            found = list(decode(str(pcap)))
        print(f"[demo] rs1 captured {len(found)} packets carrying the option:")
        for d in found:
            print(f"         {d}")
        if not found or any(d.option != opt for d in found):
            print("[demo] FAILED: the real server did not receive the option byte-exact", file=sys.stderr)
            return 1
    print("[demo] the real server's packets carry the client and the VIP, not just the lb. lab removed.")
    return vm_demo(topo)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LabError as e:
        print(f"toalab demo: {e}", file=sys.stderr)
        sys.exit(2)
