"""``make demo``: the lab's main job, the whole path in one guest, side by side.

Boot the default Debian kernel under qemu, build fullnat-4to4 and fullnat-6to4
(NAT64) in it with the XDP fullnat LB on the lb node, and for a TCP connection
and a UDP datagram from the client to the VIP show what the real server's
application sees without toa.ko/uoa.ko and with them; then the option the RS
received, decoded from its capture, and where the pcaps are.  Each row is a
scenario of scenarios/scenarios.toml, judged as `toalab run` judges it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lab import scenario
from lab.decode import decode
from lab.errors import LabError

REPO = Path(__file__).resolve().parent.parent
ROWS = [  # (label, without the modules, with them)
    ("4to4 TCP  getpeername", "fullnat-4to4-tcp-nomod", "fullnat-4to4-tcp"),
    ("6to4 TCP  getpeername", "fullnat-6to4-tcp-nomod", "fullnat-6to4-tcp"),
    ("4to4 UDP  uoa lookup ", "fullnat-4to4-udp-nomod", "fullnat-4to4-udp"),
    ("6to4 UDP  uoa lookup ", "fullnat-6to4-udp-nomod", "fullnat-6to4-udp"),
]


def _cell(res: scenario.Result, tcp: bool) -> str:
    if res.verdict != "pass":
        return f"FAILED: {res.reason}"
    saw = res.saw.split(", lookup ")
    if tcp:
        return saw[0].split()[-1]  # "rs1 getpeername ADDR:PORT"
    return saw[1] if len(saw) > 1 else "-"


def main() -> int:
    out = REPO / "build" / "runs" / "demo"
    t0 = time.monotonic()
    print("[demo] the whole path in a guest: client -> XDP fullnat LB -> real server with toa.ko/uoa.ko")
    ids = [sid for _, a, b in ROWS for sid in (a, b)]
    scs = scenario.select(ids)

    def progress(msg: str) -> None:
        print(f"[demo] {msg}", flush=True)

    def done(res: scenario.Result) -> None:
        print(f"[demo]   {res.id:<24} {res.verdict} ({res.timings.get('total_s', 0):.1f} s)", flush=True)

    with scenario.Runner("vm", out=out, progress=progress) as runner:
        progress("building toa.ko/uoa.ko and the example programs for the guest kernel")
        runner.programs()
        results = {r.id: r for r in runner.run(scs, on_result=done)}
        release = runner.kernel_info.get("release", "?")
    print(f"\n[demo] what the real server's application sees (guest {release}):")
    print(f"         {'':<22} {'without the modules':<34} with toa.ko / uoa.ko")
    for label, off, on in ROWS:
        tcp = "TCP" in label
        print(f"         {label:<22} {_cell(results[off], tcp):<34} {_cell(results[on], tcp)}")
    for sid in ("fullnat-4to4-tcp", "fullnat-6to4-tcp"):
        res = results[sid]
        rs = res.saw.split()[0] if res.saw else ""
        pcap = out / sid / f"{rs}-eth0.pcap"
        found = list(decode(str(pcap))) if rs and pcap.exists() else []
        if found:
            print(f"[demo] {sid}: {rs} received  {found[0]}")
    failed = [r for r in results.values() if r.verdict != "pass"]
    print(f"[demo] pcaps of every interface: {out}/<scenario>/*.pcap (toalab decode FILE; with the option "
          "decoded: tshark -X lua_script:$(toalab wireshark path) -r FILE -Y toa)")  # fmt: skip
    if failed:
        for r in failed:
            print(f"[demo] FAILED {r.id}: {r.reason}", file=sys.stderr)
        return 1
    print(f"[demo] the real server's application sees the client, not the LB. {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LabError as e:
        print(f"toalab demo: {e}", file=sys.stderr)
        sys.exit(2)
