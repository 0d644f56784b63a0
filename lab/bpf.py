"""BPF helpers for the lab: build the XDP objects and run them with
BPF_PROG_TEST_RUN, in the running kernel or, through a runner, a guest's.

Generic on purpose: the gateway-ping program and the fullnat LB both use
it.  ``run_xdp`` drives ``bpf/build/xdp_test_run`` (one JSON object per
call).  Attaching programs and live maps are the lab's kernel's
(lab/kernel.py: ``KernelHandle.attach_xdp``, ``map_update``, ...).
"""

from __future__ import annotations

import fcntl
import json
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.kernel import KernelError, MapEntry, Runner, local_runner

__all__ = ["BpfError", "LoadInfo", "MapEntry", "MapUpdate", "Runner", "XdpResult", "local_runner"]

ROOT = Path(__file__).resolve().parents[1]
BPF_DIR = ROOT / "bpf"
BUILD_DIR = BPF_DIR / "build"
TEST_RUN = BUILD_DIR / "xdp_test_run"
PORTS_MAX = 64  # xdp_test_run --ports: lo and dummy devices up to this ifindex
PORTS_NETNS = "toalab-xdp-ports"  # where xdp_test_run --ports runs; it keeps it between runs

XDP_ACTIONS = ("XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT")


class BpfError(KernelError):
    """Building, loading, running or attaching a BPF program failed."""


# -- building ------------------------------------------------------------------------


def build(target: str = "all", *, bpf_dir: Path = BPF_DIR) -> None:
    """Run ``make -C bpf TARGET`` (a no-op when up to date), serialised by a lock
    so that concurrent test sessions do not write the same objects."""
    build_dir = bpf_dir / "build"  # ignored by git, like everything built
    build_dir.mkdir(exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        p = subprocess.run(
            ["make", "-s", "-C", str(bpf_dir), target], capture_output=True, text=True
        )
    if p.returncode != 0:
        raise BpfError(f"make -C {bpf_dir} {target} failed:\n{p.stdout}{p.stderr}".rstrip())


def obj_path(name: str, *, build_first: bool = True) -> Path:
    """bpf/build/NAME.o, built on demand (NAME without .o, e.g. 'gwping')."""
    if build_first:
        build()
    p = BUILD_DIR / f"{name}.o"
    if not p.exists():
        raise BpfError(f"{p}: no such BPF object (is bpf/{name}.c in bpf/Makefile PROGS?)")
    return p


# -- BPF_PROG_TEST_RUN -----------------------------------------------------------------


@dataclass(frozen=True)
class XdpResult:
    retval: int
    action: str
    data_out: bytes
    duration_ns: int  # average per run over `repeat` runs
    repeat: int
    maps: dict[str, list[MapEntry]] = field(default_factory=dict)

    def counters(self, map_name: str) -> dict[int, int]:
        """A per-CPU array of u64 counters as {index: total over CPUs}."""
        return map_u64_counters(self.maps[map_name])


@dataclass(frozen=True)
class MapUpdate:
    map: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class LoadInfo:
    prog: str
    xlated_insns: int
    jited_bytes: int
    verified_insns: int


def map_u64_counters(entries: Iterable[MapEntry]) -> dict[int, int]:
    return {int.from_bytes(e.key, "little"): e.u64_sum() for e in entries}


def _tool() -> Path:
    build()
    return TEST_RUN


def _run_tool(argv: list[str], timeout: float, runner: Runner = local_runner) -> dict:
    code, out, err = runner(argv, timeout)
    if code != 0:
        raise BpfError(f"xdp_test_run failed ({code}):\n{err.strip()[-4000:]}")
    try:
        return json.loads(out)
    except ValueError as e:
        raise BpfError(f"xdp_test_run printed no JSON ({e}): {out[:200]!r}") from None


def _maps(doc: dict) -> dict[str, list[MapEntry]]:
    out: dict[str, list[MapEntry]] = {}
    for name, entries in doc.get("maps", {}).items():
        out[name] = [
            MapEntry(
                key=bytes.fromhex(e["key"]),
                values=tuple(bytes.fromhex(v) for v in e.get("values", [e.get("value", "")])),
            )
            for e in entries
        ]
    return out


def _pcap(path: Path, pkts: Sequence[bytes], ingress: Sequence[int] | None) -> list[str]:
    """A classic pcap of `pkts` as xdp_test_run's --file reads it; each packet's
    ingress ifindex, if given, in its record's microseconds (--ingress-in-pcap)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, p in enumerate(pkts):
        out.append(struct.pack("<IIII", 0, ingress[i] if ingress else 0, len(p), len(p)) + p)
    path.write_bytes(b"".join(out))
    return ["--ingress-in-pcap", "--file", str(path)] if ingress else ["--file", str(path)]


def run_xdp_many(
    obj: str | Path,
    prog: str,
    pkts: Sequence[bytes],
    repeat: int = 1,
    *,
    map_updates: Sequence[MapUpdate] = (),
    dump_maps: Sequence[str] = (),
    ifindex: int | None = None,
    ingress: Sequence[int] | None = None,
    self_map: str | None = None,
    timeout: float = 120.0,
    runner: Runner = local_runner,
    as_file: bool = False,
) -> list[XdpResult]:
    """Run PROG of OBJ once per packet (each `repeat` times) in one load of the
    object; map updates apply before the first run, dumps are taken after the
    last one (every result carries the same dump).  `self_map`: a program array
    of the object that gets the program at key 0 (it tail-calls itself).
    `ingress`: the ingress ifindex of each packet, 1 (lo) up to PORTS_MAX; the
    run then happens in a network namespace of its own with a device of each
    of those indexes (`ifindex` instead: one ifindex for all, of the current
    namespace).  `as_file`: the packets go to the tool in pcap files, not on its
    command line (thousands of packets; the files are this host's)."""
    if not pkts:
        raise BpfError("run_xdp_many: no packets")
    if ingress is not None and (len(ingress) != len(pkts) or not all(1 <= i <= PORTS_MAX for i in ingress)):
        raise BpfError(f"run_xdp_many: one ingress ifindex in 1..{PORTS_MAX} per packet")
    argv = [str(_tool()), str(obj), "--prog", prog, "--repeat", str(repeat)]
    for u in map_updates:
        argv += ["--map-update", u.map, u.key.hex(), u.value.hex()]
    for m in dump_maps:
        argv += ["--dump-map", m]
    if ifindex is not None:
        argv += ["--ifindex", str(ifindex)]
    if ingress is not None and max(ingress) > 1:
        argv += ["--ports", str(max(ingress))]
    if self_map:
        argv += ["--self", self_map]
    with tempfile.TemporaryDirectory(prefix="toalab-xdp-") as tmp:
        if as_file:
            argv += _pcap(Path(tmp) / "in.pcap", [bytes(p) for p in pkts], ingress)
        else:
            for i, pkt in enumerate(pkts):
                if ingress is not None and (i == 0 or ingress[i] != ingress[i - 1]):
                    argv += ["--ifindex", str(ingress[i])]
                argv += ["--hex", bytes(pkt).hex()]
        doc = _run_tool(argv, timeout, runner)
    maps = _maps(doc)
    return [
        XdpResult(
            retval=r["retval"],
            action=r["action"],
            data_out=bytes.fromhex(r["data_out"]),
            duration_ns=r["duration_ns"],
            repeat=r["repeat"],
            maps=maps,
        )
        for r in doc["results"]
    ]


def run_xdp(
    obj: str | Path,
    prog: str,
    pkt: bytes,
    repeat: int = 1,
    *,
    map_updates: Sequence[MapUpdate] = (),
    dump_maps: Sequence[str] = (),
    ifindex: int | None = None,
) -> XdpResult:
    """One packet through PROG with BPF_PROG_TEST_RUN."""
    return run_xdp_many(
        obj, prog, [pkt], repeat, map_updates=map_updates, dump_maps=dump_maps, ifindex=ifindex
    )[0]


def load_check(obj: str | Path, prog: str, *, runner: Runner = local_runner) -> LoadInfo:
    """Load PROG into the running kernel (the verifier runs) and unload it."""
    doc = _run_tool([str(_tool()), str(obj), "--prog", prog, "--load-only"], 120.0, runner)
    return LoadInfo(doc["prog"], doc["xlated_insns"], doc["jited_bytes"], doc["verified_insns"])
