"""``make demo``: the lab's main job, end to end, on the host engine.

Brings up fullnat-4to4, checks the client reaches both real servers through
the lb, then has the lb's local address talk to rs1 with the address option
set (as an L7 LB with set_ip_opt does) and shows, from the capture taken on
rs1, that the option carrying the client and the VIP arrived byte-exact.
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
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LabError as e:
        print(f"toalab demo: {e}", file=sys.stderr)
        sys.exit(2)
