"""fullnat-4to4 up + down on the host engine, and the same in Mininet.

Prints the median of 10 runs each (after one warm-up) and the ratio.
Mininet runs under Debian's python3; it is installed with apt when missing
and skipped with a note where it cannot be.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lab import topology
from lab.net import Lab

ROOT = Path(__file__).resolve().parent.parent
RUNS = 10


def toalab_runs(xdp_lb: bool = False) -> tuple[list[float], list[float]]:
    topo = topology.load(ROOT / "topologies" / "fullnat-4to4.yaml")
    # Like for like with Mininet: the network alone; the XDP LB measured apart.
    topo.node("lb").params["fullnat"] = {"xdp": xdp_lb}
    Lab.up(topo, name="bench").down()  # warm-up: imports, first netlink round trips
    ups, downs = [], []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        lab = Lab.up(topo, name="bench")
        t1 = time.perf_counter()
        lab.down()
        ups.append(t1 - t0)
        downs.append(time.perf_counter() - t1)
    return ups, downs


def mininet_runs() -> list[float] | str:
    syspy = "/usr/bin/python3"
    probe = [syspy, "-c", "import mininet.nodelib"]
    if subprocess.run(probe, capture_output=True).returncode != 0 or not shutil.which("brctl"):
        r = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mininet", "bridge-utils"],
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            return f"not installable here ({r.stderr.strip().splitlines()[-1:]})"
    r = subprocess.run([syspy, str(ROOT / "bench" / "mininet_fullnat.py")], capture_output=True, text=True)
    if r.returncode != 0:
        return f"failed: {r.stderr.strip().splitlines()[-1:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ups, downs = toalab_runs()
    total = [u + d for u, d in zip(ups, downs, strict=True)]
    med = statistics.median(total)
    print(f"toalab host engine, fullnat-4to4 (5 nodes, 4 links), median of {RUNS}:")
    print(f"  up {1e3 * statistics.median(ups):.1f} ms  down {1e3 * statistics.median(downs):.1f} ms  "
          f"up+down {1e3 * med:.1f} ms (target < 150 ms)")
    lb_ups, lb_downs = toalab_runs(xdp_lb=True)
    print(f"  with the XDP LB loaded and configured (bpftool): up {1e3 * statistics.median(lb_ups):.1f} ms "
          f"down {1e3 * statistics.median(lb_downs):.1f} ms")
    mn = mininet_runs()
    if isinstance(mn, str):
        print(f"mininet: {mn}")
        return 0
    mn_med = statistics.median(mn)
    print(f"mininet 2.3 LinuxBridge, no controller, same topology, median of {len(mn)}: "
          f"up+down {1e3 * mn_med:.1f} ms")
    print(f"  ratio: toalab is {mn_med / med:.1f}x faster (target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
