"""iperf3 through the VIP (the XDP fullnat LB, source-IP persistence on)
against the kernel-routed path through the same lb node, same run.

Host engine.  4to4: the client to VIP:80 (LB -> rs1/rs2:8080), and the
client to rs1:8080 directly (XDP_PASS, then the lb's kernel routing).  6to4:
the IPv6 client to the VIP (NAT64 in the LB); Linux has no NAT64 of its own,
so its baseline is the 4to4 lab's routed path measured in the same run.
TCP: one stream; UDP: unlimited rate (-b 0), 1,400-byte datagrams, what the
server received and the loss.  Median of RUNS runs of SECONDS each.

    .venv/bin/python bench/bench_iperf.py [--seconds S] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from lab import topology
from lab.net import Lab

ROOT = Path(__file__).resolve().parent.parent
PORT, RPORT = 80, 8080


def load(name: str) -> topology.Topology:
    text = (ROOT / "topologies" / f"{name}.yaml").read_text() + "    persistence: 300\n"
    return topology.loads(text, f"{name}.yaml")


def iperf(lab: Lab, dst: str, port: int, udp: bool, seconds: float) -> tuple[float, float]:
    """(Gbit/s received, loss %)."""
    args = ["iperf3", "-c", dst, "-p", str(port), "-J", "-t", str(seconds)]
    if udp:
        args += ["-u", "-b", "0", "-l", "1400"]
    r = lab.exec("client", args, timeout=seconds + 30)
    doc = json.loads(r.stdout or "{}")
    if r.returncode or "error" in doc:
        raise SystemExit(f"iperf3 {' '.join(args[1:])}: {doc.get('error') or r.stderr.strip()}")
    end = doc["end"]
    if udp:
        return end["sum"]["bits_per_second"] / 1e9, end["sum"]["lost_percent"]
    return end["sum_received"]["bits_per_second"] / 1e9, 0.0


def serve(lab: Lab) -> list:
    jobs = [lab.spawn(n, ["iperf3", "-s", "-p", str(RPORT)]) for n in ("rs1", "rs2")]
    for n in ("rs1", "rs2"):
        rip = str(lab.topology.node(n).address(4))
        for _ in range(100):
            if lab.exec("lb", ["nc", "-z", "-w", "1", rip, str(RPORT)]).returncode == 0:
                break
            time.sleep(0.05)
    return jobs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("iperf3") is None:
        print("bench_iperf: iperf3 is not installed (make bootstrap)", file=sys.stderr)
        return 1
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    labs = {name: Lab.up(load(f"fullnat-{name}"), name=f"bi-{name}") for name in ("4to4", "6to4")}
    try:
        jobs = [j for lab in labs.values() for j in serve(lab)]
        rs1 = str(labs["4to4"].topology.node("rs1").address(4))
        paths = {
            "4to4 via the VIP": (labs["4to4"], "203.0.113.10", PORT),
            "kernel-routed 4to4": (labs["4to4"], rs1, RPORT),
            "6to4 via the VIP": (labs["6to4"], str(labs["6to4"].topology.services["web"].vip), PORT),
        }
        for _ in range(args.runs):  # interleaved: a slow moment of the machine hits every path
            for proto in ("tcp", "udp"):
                for path, (lab, dst, port) in paths.items():
                    got = iperf(lab, dst, port, proto == "udp", args.seconds)
                    results.setdefault((proto, path), []).append(got)
        for j in jobs:
            j.terminate()
    finally:
        for lab in labs.values():
            lab.down()
    print(f"iperf3 through the XDP LB vs the lb's kernel routing, same run "
          f"(median of {args.runs} x {args.seconds:g} s; UDP -b 0 -l 1400: received rate, loss)")  # fmt: skip
    for proto in ("tcp", "udp"):
        base = statistics.median(g for g, _ in results[(proto, "kernel-routed 4to4")])
        for path in paths:
            runs = results[(proto, path)]
            g = statistics.median(x for x, _ in runs)
            loss = statistics.median(x for _, x in runs)
            extra = f", loss {loss:.1f}%" if proto == "udp" else ""
            print(f"  {proto} {path:<20} {g:6.2f} Gbit/s  {g / base:5.2f}x of kernel-routed{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
