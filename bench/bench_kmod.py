"""TOA/UOA cost, loaded vs not loaded, in one VM boot (issue 4, item 7).

    python bench/bench_kmod.py [--rounds R] [--conns N] [--calls M] [--datagrams D]
                               [--json FILE] [--strict]

fullnat-4to4 in one guest; lb runs the load generator (kmod/bench/toa_bench,
every connection and datagram carrying the option 10.0.0.1:1 -> 10.0.0.2:2),
rs1 the meter:
1. TCP accept rate: N sequential connections, accept() + getpeername() each,
   connections/s from the first accept to the last; with and without toa.ko.
2. getpeername cost: M calls on one accepted socket, ns/call; with and
   without toa.ko (with it, the socket has an entry: the rewritten path).
3. UDP receive rate: D datagrams sent as fast as possible, datagrams/s
   received; with and without uoa.ko.
Rounds alternate the order (unloaded first, then loaded first, ...); the
figures are medians over rounds, printed with their spread: under TCG on a
shared 2-core host one configuration varies by up to ~1.8x between rounds,
so a ratio from a few rounds is indicative, not a verdict.  Target: loaded >= 0.95 x unloaded (for the
getpeername cost: unloaded ns / loaded ns).  Each loaded run also checks the
module was really in the path (the rewritten peer, the parse counters).
--strict exits 1 when a ratio misses the target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import kmod, topology, traffic  # noqa: E402
from lab.errors import LabError  # noqa: E402
from lab.net import Lab  # noqa: E402
from lab.vm.session import VMSession  # noqa: E402

TARGET = 0.95
RS1 = "192.0.2.11"
CIP, VIP = "10.0.0.1:1", "10.0.0.2:2"
TCP_PORT, UDP_PORT = 8090, 9090


@dataclass
class Figures:
    accept_per_s: list[float] = field(default_factory=list)
    getpeername_ns: list[float] = field(default_factory=list)
    udp_rx_per_s: list[float] = field(default_factory=list)
    udp_received: list[int] = field(default_factory=list)


@dataclass
class Bench:
    vm: VMSession
    lab: Lab
    art: kmod.Artifacts
    conns: int
    calls: int
    datagrams: int

    def _pair(self, server: list[str], client: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        job = self.lab.spawn("rs1", server)
        try:
            traffic.wait_for(job, '"event":"listening"', 15.0, "toa_bench server")
            c = self.lab.exec("lb", client, timeout=300)
            if c.returncode != 0:
                raise LabError(f"{' '.join(client)} exited {c.returncode}: {c.stdout}{c.stderr}")
            if job.wait(120) != 0:
                raise LabError(f"{' '.join(server)} failed: {job.output()}")
        finally:
            if job.running:
                job.terminate()
        return {e["event"]: e for e in traffic.events(c.stdout)}, traffic.events(job.output()[0])

    def tcp(self, loaded: bool) -> tuple[float, float]:
        b = self.art.bin("toa_bench")
        _, ev = self._pair(
            [b, "tcp-server", "--count", str(self.conns), "--calls", str(self.calls), str(TCP_PORT)],
            [b, "tcp-client", "--opt", CIP, VIP, "--count", str(self.conns), RS1, str(TCP_PORT)],
        )
        by = {e["event"]: e for e in ev}
        acc, gpn = by["tcp_accept"], by["getpeername"]
        seen = gpn["peer"]["addr"]
        want = "10.0.0.1" if loaded else "192.0.2.1"
        if seen != want:
            raise LabError(f"toa {'loaded' if loaded else 'not loaded'}: expected peer {want}, saw {seen}")
        return float(acc["per_s"]), float(gpn["ns_per_call"])

    def udp(self, loaded: bool) -> tuple[float, int]:
        b = self.art.bin("toa_bench")
        before = kmod.stats(self.vm, "uoa") if loaded else {}
        _, ev = self._pair(
            [b, "udp-server", "--count", str(self.datagrams), "--idle-ms", "1000", str(UDP_PORT)],
            [b, "udp-client", "--opt", CIP, VIP, "--count", str(self.datagrams), RS1, str(UDP_PORT)],
        )
        rx = {e["event"]: e for e in ev}["udp_rx"]
        if loaded:
            parsed = kmod.stats(self.vm, "uoa")["parsed_v4_in4"] - before["parsed_v4_in4"]
            if parsed < rx["received"]:
                raise LabError(f"uoa loaded: expected >= {rx['received']} datagrams parsed, saw {parsed}")
        return float(rx["per_s"]), int(rx["received"])

    def set_modules(self, want: set[str]) -> None:
        have = kmod.loaded(self.vm)
        for m in sorted(have - want):
            kmod.unload(self.vm, m)
        for m in sorted(want - have):
            kmod.load(self.vm, m, self.art)

    def run_config(self, loaded: bool, figs: Figures) -> None:
        self.set_modules({"toa"} if loaded else set())
        rate, ns = self.tcp(loaded)
        figs.accept_per_s.append(rate)
        figs.getpeername_ns.append(ns)
        self.set_modules({"uoa"} if loaded else set())
        pps, n = self.udp(loaded)
        figs.udp_rx_per_s.append(pps)
        figs.udp_received.append(n)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=200, help="TCP connections per run")
    ap.add_argument("--calls", type=int, default=20000, help="getpeername calls per run")
    ap.add_argument("--datagrams", type=int, default=15000, help="UDP datagrams per run")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a ratio misses the target")
    ap.add_argument(
        "--kernel", help="VM kernel: series[-flavour] or release (default: $TOALAB_KERNEL, kernel.toml)"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_kmod: needs root (VM engine)", file=sys.stderr)
        return 1

    t0 = time.monotonic()
    art = kmod.build(args.kernel)
    topo = topology.load(ROOT / "topologies" / "fullnat-4to4.yaml")
    unloaded, loaded = Figures(), Figures()
    session = VMSession(kernel=args.kernel, progress=None)
    with session as vm, vm.lab(topo, name=f"bk{os.getpid() % 100000}") as lab:
        mark = kmod.dmesg_mark(vm)
        print(f"guest {vm.release} ({vm.accel}), ready in {time.monotonic() - t0:.1f} s; "
              f"{args.rounds} rounds of {args.conns} connections, {args.calls} getpeername calls, "
              f"{args.datagrams} datagrams")  # fmt: skip
        bench = Bench(vm, lab, art, args.conns, args.calls, args.datagrams)
        for r in range(args.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            for is_loaded in order:
                bench.run_config(is_loaded, loaded if is_loaded else unloaded)
            u, o = unloaded, loaded
            print(f"  round {r + 1}: accept/s {u.accept_per_s[-1]:.0f} -> {o.accept_per_s[-1]:.0f}, "
                  f"getpeername ns {u.getpeername_ns[-1]:.0f} -> {o.getpeername_ns[-1]:.0f}, "
                  f"udp rx/s {u.udp_rx_per_s[-1]:.0f} -> {o.udp_rx_per_s[-1]:.0f}")  # fmt: skip
        bench.set_modules(set())
        problems = kmod.dmesg_problems(vm, mark)
        accel = vm.accel

    med = statistics.median
    series = [
        ("TCP accept + getpeername (conn/s)", unloaded.accept_per_s, loaded.accept_per_s, False),
        ("getpeername (ns/call)", unloaded.getpeername_ns, loaded.getpeername_ns, True),
        ("UDP received (datagrams/s)", unloaded.udp_rx_per_s, loaded.udp_rx_per_s, False),
    ]
    print("\nspread over rounds (min..max):")
    for name, u, o, _ in series:
        print(f"  {name:36} unloaded {min(u):.0f}..{max(u):.0f}  loaded {min(o):.0f}..{max(o):.0f}")
    rows = [(name, med(u), med(o), cost) for name, u, o, cost in series]
    print(f"\n{'figure':36} {'unloaded':>12} {'loaded':>12} {'ratio':>7}  target >= {TARGET}x ({accel})")
    ok = True
    result: dict[str, Any] = {"accel": accel, "target": TARGET, "figures": {}}
    for name, off, on, cost in rows:
        ratio = off / on if cost else on / off
        verdict = "ok" if ratio >= TARGET else "BELOW"
        ok &= ratio >= TARGET
        print(f"{name:36} {off:12.1f} {on:12.1f} {ratio:7.3f}  {verdict}")
        fig = {"unloaded": off, "loaded": on, "ratio": round(ratio, 4), "ok": ratio >= TARGET}
        result["figures"][name] = fig
    lost = [args.datagrams - n for n in unloaded.udp_received + loaded.udp_received]
    print(f"(ratio of a cost: unloaded/loaded; UDP lost per run: max {max(lost)} of {args.datagrams})")
    if problems:
        print("kernel log problems:\n  " + "\n  ".join(problems))
        ok = False
    result.update(rounds={"unloaded": asdict(unloaded), "loaded": asdict(loaded)}, dmesg=problems)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"total {time.monotonic() - t0:.1f} s")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
