"""ns/packet of bpf/gwping.c on each branch, with BPF_PROG_TEST_RUN.

    python bench/bench_gwping.py [--repeat N] [--runs R] [--singles M] [--json]

Two measurements per branch:
- "repeat": one BPF_PROG_TEST_RUN with repeat=N, the kernel's average per
  run (median over R runs).  Right for the branches that leave the packet
  as it was.  Not for MAGIC: the kernel repeats on the same buffer, so run 1
  decrements the magic and runs 2..N see MAGIC_PASS (marked "n/a").
- "single": M runs of repeat=1 on fresh copies of the packet, median.  Every
  branch, MAGIC included, but each figure carries the timer's own overhead
  (two ktime reads); compare singles with singles (xdp_pass is the floor).
The port of the test run is configured (XDP_REDIRECT); the redirect itself
is not performed by BPF_PROG_TEST_RUN, so this is the program's cost only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402

from lab import bpf  # noqa: E402
from lab.gwping import BPF_PROG, COUNTERS, COUNTERS_MAP, MAGIC, MAGIC_PASS, PORTS_MAP, GwPort  # noqa: E402

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
IP4 = IP(src="192.0.2.1", dst="198.51.100.7")
IP6 = IPv6(src="2001:db8::1", dst="2001:db8:1::7")
LINUX_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (MAGIC, 0)), ("NOP", None), ("WScale", 7)]


def _syn(ip: object, tsval: int | None, flags: str = "S", opts: list | None = None) -> bytes:
    if opts is None:
        opts = [("Timestamp", (tsval, 0))] if tsval is not None else [("MSS", 1460)]
    return bytes(ETH / ip / TCP(sport=40000, dport=80, flags=flags, options=opts))


# name -> (frame, counter the branch must bump, does the program change the frame?)
BRANCHES: dict[str, tuple[bytes, str, bool]] = {
    "magic (v4)": (_syn(IP4, MAGIC), "ping_fwd", True),
    "magic, linux option layout": (_syn(IP4, None, opts=LINUX_OPTS), "ping_fwd", True),
    "magic (v6)": (_syn(IP6, MAGIC), "ping_fwd", True),
    "magic_pass (v4)": (_syn(IP4, MAGIC_PASS), "ping_pass", False),
    "magic_pass (v6)": (_syn(IP6, MAGIC_PASS), "ping_pass", False),
    "other tsval": (_syn(IP4, 0x12345678), "syn_ts_other", False),
    "not a syn (syn-ack)": (_syn(IP4, MAGIC, flags="SA"), "tcp_not_syn", False),
    "syn, no timestamps": (_syn(IP4, None), "syn_no_ts", False),
    "truncated tcp": (_syn(IP4, MAGIC)[:60], "tcp_trunc", False),
    "udp": (bytes(ETH / IP4 / UDP(sport=1, dport=2) / b"x"), "not_tcp", False),
    "arp": (bytes(ETH / ARP(pdst="192.0.2.9")), "not_ip", False),
}


@dataclass
class Row:
    branch: str
    repeat_ns: float | None
    single_ns: float
    action: str


def _updates() -> list[bpf.MapUpdate]:
    port = GwPort(7, bytes.fromhex("02aa00000001"), bytes.fromhex("02bb00000002"))
    return [bpf.MapUpdate(PORTS_MAP, GwPort.key(1), port.pack())]


def measure(obj: Path, frame: bytes, counter: str, mutates: bool, repeat: int, runs: int,
            singles: int, prog: str = BPF_PROG) -> tuple[float | None, float, str]:
    dump = [COUNTERS_MAP] if prog == BPF_PROG else []
    res = bpf.run_xdp_many(obj, prog, [frame] * singles, 1, map_updates=_updates() if dump else [],
                           dump_maps=dump)
    if dump:  # the frame takes the branch it is named after
        got = res[0].counters(COUNTERS_MAP)
        assert got.get(COUNTERS.index(counter), 0) == singles, (counter, got)
    single = statistics.median(r.duration_ns for r in res)
    rep: float | None = None
    if not mutates:
        rep = statistics.median(
            bpf.run_xdp(obj, prog, frame, repeat, map_updates=_updates() if dump else []).duration_ns
            for _ in range(runs)
        )
    return rep, single, res[0].action


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000, help="runs per repeat measurement")
    ap.add_argument("--runs", type=int, default=3, help="repeat measurements per branch")
    ap.add_argument("--singles", type=int, default=500, help="repeat=1 runs per branch")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()

    obj = bpf.obj_path("gwping")
    info = bpf.load_check(obj, BPF_PROG)
    rows = []
    base = bpf.obj_path("xdp_pass")
    measure(obj, BRANCHES["other tsval"][0], "syn_ts_other", False, 1000, 1, 100)  # warm up
    rep, single, action = measure(base, BRANCHES["magic (v4)"][0], "", False, args.repeat,
                                  args.runs, args.singles, prog="xdp_pass")
    rows.append(Row("xdp_pass (floor)", rep, single, action))
    for name, (frame, counter, mutates) in BRANCHES.items():
        rep, single, action = measure(obj, frame, counter, mutates, args.repeat, args.runs,
                                      args.singles)
        rows.append(Row(name, rep, single, action))

    if args.json:
        print(json.dumps({"verifier": asdict(info), "repeat": args.repeat,
                          "rows": [asdict(r) for r in rows]}, indent=1))
        return 0
    print(f"bpf/gwping.c {BPF_PROG}: {info.xlated_insns} insns, {info.jited_bytes} B jited, "
          f"{info.verified_insns} insns verified")
    print(f"{'branch':30} {'action':13} {'repeat=' + str(args.repeat):>15} "
          f"{'single (median)':>16}")
    for r in rows:
        rep_s = f"{r.repeat_ns:8.1f} ns" if r.repeat_ns is not None else "n/a"
        print(f"{r.branch:30} {r.action:13} {rep_s:>15} {r.single_ns:13.1f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
