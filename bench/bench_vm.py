"""VM engine timings under the accelerator this host gets (TCG here).

    python bench/bench_vm.py [--runs N] [--accel auto|tcg|kvm] [--kernels LIST|all]

1. boot-to-ready: VMSession start (image up to date) until the guest agent
   answers; split into host-side launch and the guest's own uptime at ready.
2. topology ready: boot + fullnat-4to4 built in the guest + one ping from
   the client to a real server answered.
3. boot-to-ready of every other kernel of --kernels (default: kernel.toml's
   other series; 'all': every series x flavour), same runs.
Targets (TCG): ready <= 4 s, topology ready <= 8 s (on the first kernel).
Runs are sequential: one guest at a time.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import lb, topology  # noqa: E402
from lab.net import Lab  # noqa: E402
from lab.vm import kernels  # noqa: E402
from lab.vm.image import ImageBuilder  # noqa: E402
from lab.vm.session import VMSession  # noqa: E402

TARGET_READY = 4.0
TARGET_TOPO = 8.0
_INIT = re.compile(r"toalab-init: (start|modules loaded|switching root) at ([\d.]+)s")


def _stats(xs: list[float]) -> str:
    return f"median {statistics.median(xs):5.2f} s  min {min(xs):5.2f}  max {max(xs):5.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--accel", default="auto")
    ap.add_argument(
        "--kernel", help="the kernel of the full figures (default: $TOALAB_KERNEL or kernel.toml's)"
    )
    ap.add_argument("--kernels", help="boot-to-ready also on these: a comma list, or 'all'")
    args = ap.parse_args()

    cfg = kernels.config()
    first = args.kernel or None
    if args.kernels == "all":
        others = [f"{s}-{f}" for s in cfg.series for f in cfg.flavours]
    elif args.kernels is not None:
        others = [k for k in args.kernels.split(",") if k]
    else:
        others = list(cfg.other)
    t0 = time.monotonic()
    image = ImageBuilder(first).build()
    print(f"image {image.release} up to date in {time.monotonic() - t0:.2f} s")
    topo = topology.load(ROOT / "topologies" / "fullnat-4to4.yaml")
    # The network alone, as the target was set; the XDP LB's attach apart.
    topo.node("lb").params["fullnat"] = {"xdp": False}

    ready: list[float] = []
    guest: list[float] = []
    phases: dict[str, list[float]] = {}
    topo_ready: list[float] = []
    up_only: list[float] = []
    lb_attach: list[float] = []
    accel = "?"
    for i in range(args.runs):
        t0 = time.monotonic()
        with VMSession(kernel=first, progress=None, accel=args.accel) as vm:
            t_ready = time.monotonic() - t0
            accel = vm.accel
            ready.append(t_ready)
            guest.append(vm.info["guest_uptime_at_ready_ms"] / 1000)
            for m in _INIT.finditer(vm.console_log.read_text(errors="replace")):
                phases.setdefault(m.group(1), []).append(float(m.group(2)))
            with Lab.up(topo, name=f"bench{i}", engine="vm", vm=vm.name) as lab:
                r = lab.exec("client", ["ping", "-c1", "-W5", "192.0.2.11"], timeout=30)
                t_topo = time.monotonic() - t0
                if r.returncode != 0:
                    print(f"run {i}: ping failed: {r.stdout}{r.stderr}", file=sys.stderr)
                    return 1
                t1 = time.monotonic()
                lb.attach(lab).detach()
                lb_attach.append(time.monotonic() - t1)
            topo_ready.append(t_topo)
            up_only.append(t_topo - t_ready)
        print(
            f"run {i + 1}: ready {t_ready:.2f} s (guest uptime {guest[-1]:.2f} s), "
            f"topology + ping {t_topo:.2f} s"
        )

    per_kernel: dict[str, list[float]] = {image.release: ready}
    for k in others:
        img = ImageBuilder(k).build()
        if img.release in per_kernel:
            continue
        per_kernel[img.release] = []
        for _ in range(args.runs):
            t0 = time.monotonic()
            with VMSession(kernel=k, progress=None, accel=args.accel) as vm:
                per_kernel[img.release].append(time.monotonic() - t0)
                if vm.run(["uname", "-r"]).stdout.strip() != img.release:
                    print(f"{k}: the guest does not run {img.release}", file=sys.stderr)
                    return 1

    print(f"\naccelerator: {accel}, {args.runs} runs, full figures on {image.kernel.describe()}")
    print(f"boot-to-ready            {_stats(ready)}   target <= {TARGET_READY} s")
    print(f"  guest uptime at ready  {_stats(guest)}")
    for name, xs in phases.items():
        print(f"  init {name:<18}{_stats(xs)}  (guest uptime)")
    print(f"  fullnat-4to4 up + ping {_stats(up_only)}")
    print(f"boot + topology + ping   {_stats(topo_ready)}   target <= {TARGET_TOPO} s")
    print(f"  XDP fullnat LB attach + detach in the guest (not in the target) {_stats(lb_attach)}")
    print("boot-to-ready per kernel:")
    for rel, xs in per_kernel.items():
        print(f"  {rel:<28} {_stats(xs)}")
    ok_ready = statistics.median(ready) <= TARGET_READY
    ok_topo = statistics.median(topo_ready) <= TARGET_TOPO
    print(f"ready target: {'met' if ok_ready else 'MISSED'}; topology target: "
          f"{'met' if ok_topo else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
