"""bpf/build/xdp_test_run, the generic BPF_PROG_TEST_RUN driver, and lab.bpf."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from lab import bpf
from lab.gwping import BPF_PROG, COUNTERS, COUNTERS_MAP, MAGIC, PORTS_MAP, GwPort

pytestmark = pytest.mark.bpf

SYN = bytes(
    Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    / IP(src="192.0.2.1", dst="198.51.100.7")
    / TCP(flags="S", options=[("Timestamp", (MAGIC, 0))])
)


@pytest.fixture(scope="module")
def gwping() -> Path:
    return bpf.obj_path("gwping")


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    bpf.build()
    return subprocess.run([str(bpf.TEST_RUN), *args], capture_output=True, text=True)


def test_hex_input_and_json_shape(gwping: Path) -> None:
    p = tool(str(gwping), "--prog", BPF_PROG, "--hex", SYN.hex(" "), "--repeat", "2")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["prog"] == BPF_PROG
    (r,) = doc["results"]
    assert set(r) == {"retval", "action", "data_out", "duration_ns", "repeat"}
    assert r["repeat"] == 2
    assert r["action"] == "XDP_PASS"  # no port configured; run 2 sees MAGIC_PASS
    out = bytes.fromhex(r["data_out"])
    assert bytes.fromhex("deadbeef") in SYN
    assert out == SYN.replace(bytes.fromhex("deadbeef"), bytes.fromhex("ddadbeef"))[:48] + out[48:]
    assert doc["maps"] == {}


def test_pcap_input_gives_one_result_per_packet(gwping: Path, tmp_path: Path) -> None:
    pcap = tmp_path / "in.pcap"
    wrpcap(str(pcap), [Ether(SYN), Ether(SYN[:30])])  # 2nd: IP header cut
    p = tool(str(gwping), "--prog", BPF_PROG, "--file", str(pcap))
    assert p.returncode == 0, p.stderr
    assert [r["action"] for r in json.loads(p.stdout)["results"]] == ["XDP_PASS", "XDP_DROP"]


def test_raw_file_input(gwping: Path, tmp_path: Path) -> None:
    raw = tmp_path / "pkt.bin"
    raw.write_bytes(SYN)
    p = tool(str(gwping), "--prog", BPF_PROG, "--file", str(raw))
    assert json.loads(p.stdout)["results"][0]["action"] == "XDP_PASS"


def test_map_update_and_dump(gwping: Path) -> None:
    port = GwPort(3, bytes(6), bytes(6))
    res = bpf.run_xdp(
        gwping, BPF_PROG, SYN,
        map_updates=[bpf.MapUpdate(PORTS_MAP, GwPort.key(1), port.pack())],
        dump_maps=[PORTS_MAP, COUNTERS_MAP],
    )
    assert res.action == "XDP_REDIRECT"
    (entry,) = res.maps[PORTS_MAP]
    assert (entry.key, entry.value) == (GwPort.key(1), port.pack())
    assert len(res.maps[COUNTERS_MAP]) == len(COUNTERS)
    assert all(len(e.values) == len(res.maps[COUNTERS_MAP][0].values) for e in res.maps[COUNTERS_MAP])
    assert res.counters(COUNTERS_MAP)[COUNTERS.index("ping_fwd")] == 1


def test_ifindex_sets_the_ingress_device(gwping: Path) -> None:
    port = GwPort(3, bytes(6), bytes(6))
    upd = [bpf.MapUpdate(PORTS_MAP, GwPort.key(1), port.pack())]
    # ingress lo (1): configured; without a real device the kernel refuses
    assert bpf.run_xdp(gwping, BPF_PROG, SYN, map_updates=upd, ifindex=1).action == "XDP_REDIRECT"
    with pytest.raises(bpf.BpfError):
        bpf.run_xdp(gwping, BPF_PROG, SYN, map_updates=upd, ifindex=999_999)


def test_load_only_reports_the_verifier(gwping: Path) -> None:
    info = bpf.load_check(gwping, BPF_PROG)
    assert info.prog == BPF_PROG and info.jited_bytes > 0 and info.verified_insns > 0


@pytest.mark.parametrize(
    ("args", "rc", "msg"),
    [
        ([], 2, "usage"),
        (["--prog", BPF_PROG], 2, "usage"),
        (["GW", "--prog", "nope", "--hex", "00" * 14], 1, "no program named nope"),
        (["GW", "--prog", BPF_PROG], 1, "no packet"),
        (["GW", "--prog", BPF_PROG, "--hex", "0g"], 1, "bad hex digit"),
        (["GW", "--prog", BPF_PROG, "--hex", "000"], 1, "odd number of hex digits"),
        (["GW", "--prog", BPF_PROG, "--hex", "00"], 1, "BPF_PROG_TEST_RUN"),
        (["GW", "--prog", BPF_PROG, "--hex", "00" * 14, "--dump-map", "nomap"], 1, "no map named"),
        (["GW", "--prog", BPF_PROG, "--hex", "00" * 14, "--map-update", PORTS_MAP, "00", "00"],
         1, "key is 4 bytes"),
        (["/nonexistent.o", "--prog", BPF_PROG, "--hex", "00" * 14], 1, "cannot open"),
    ],
)
def test_errors(gwping: Path, args: list[str], rc: int, msg: str) -> None:
    p = tool(*[str(gwping) if a == "GW" else a for a in args])
    assert p.returncode == rc, p.stdout + p.stderr
    assert msg in p.stderr
