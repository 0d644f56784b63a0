"""The scenario matrix and the LB's attach time in a guest, under TCG here.

    python bench/bench_matrix.py [--runs N] [--kernel K] [--skip-matrix]

1. LB attach / detach in the guest (fullnat-4to4 up once, then N x detach +
   attach), against the floor measured in the same guest: one `bpftool prog
   load` of lb.o (the verifier, which attach cannot avoid) and one process
   start (`true` through the guest agent).  Target: attach < 0.5 s.
2. `toalab matrix` on the VM engine: every scenario, the guest boot included,
   wall time and per scenario.  Target: < 60 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import bpf, lb, scenario, topology  # noqa: E402
from lab.vm.session import VMSession  # noqa: E402

TARGET_ATTACH = 0.5
TARGET_MATRIX = 60.0


def _med(xs: list[float]) -> str:
    return f"median {statistics.median(xs):5.2f} s  min {min(xs):5.2f}  max {max(xs):5.2f}"


def attach_times(runs: int, kernel: str | None) -> None:
    topo = topology.load(ROOT / "topologies" / "fullnat-4to4.yaml")
    with VMSession(kernel=kernel, progress=None, cpus=scenario.GUEST_CPUS) as vm:  # as the runner's
        obj = bpf.obj_path(lb.BPF_OBJ)
        vm.provide([obj, bpf.obj_path("xdp_pass")])
        k = vm.kernel()
        floor, proc = [], []
        for _ in range(runs):
            t = time.perf_counter()
            load = f"bpftool prog load {obj} /sys/fs/bpf/bench-lb type xdp; rm -f /sys/fs/bpf/bench-lb"
            k.run(["sh", "-c", load], "loading lb.o")
            floor.append(time.perf_counter() - t)
            t = time.perf_counter()
            k.run(["true"], "true")
            proc.append(time.perf_counter() - t)
        attach, detach = [], []
        with vm.lab(topo, name="bench-attach") as lab:
            handle = lb.attached(lab)
            for _ in range(runs):
                t = time.perf_counter()
                handle.detach()
                detach.append(time.perf_counter() - t)
                t = time.perf_counter()
                handle = lb.attach(lab)
                attach.append(time.perf_counter() - t)
        print(f"guest {vm.release} ({vm.accel}), {runs} runs")
        print(f"  LB attach (lb.attach)         {_med(attach)}   target < {TARGET_ATTACH} s")
        print(f"  LB detach (handle.detach)     {_med(detach)}")
        print(f"  floor: bpftool prog load lb.o {_med(floor)}   (the verifier; attach/floor "
              f"{statistics.median(attach) / statistics.median(floor):.2f}x)")
        print(f"  floor: one process (true)     {_med(proc)}")


def matrix(kernel: str | None) -> None:
    scs = list(scenario.load().values())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="toalab-bench-") as tmp:
        with scenario.Runner("vm", kernel=kernel, out=Path(tmp)) as runner:
            runner.programs()  # built before the clock matters: make bench builds first anyway
            t0 = time.monotonic()
            results = runner.run(scs)
        wall = time.monotonic() - t0
    bad = [r.id for r in results if r.verdict != "pass"]
    boot = runner.timings.get("boot_s", 0)
    print(f"matrix: {len(results)} scenarios in {wall:.1f} s (guest boot {boot:.1f} s)"
          f"   target < {TARGET_MATRIX:.0f} s" + (f"; NOT PASSING: {bad}" if bad else ""))  # fmt: skip
    slow = sorted(results, key=lambda r: -r.timings.get("total_s", 0.0))[:5]
    print("  slowest: " + ", ".join(f"{r.id} {r.timings.get('total_s', 0):.1f} s" for r in slow))
    ups = {r.timings.get("lab_up_s") for r in results if r.timings.get("lab_up_s")}
    print(f"  lab ups (with the LB attached): {len(ups)}, {sum(u for u in ups if u):.1f} s in all")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kernel")
    ap.add_argument("--skip-matrix", action="store_true")
    args = ap.parse_args()
    attach_times(args.runs, args.kernel)
    if not args.skip_matrix:
        matrix(args.kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
