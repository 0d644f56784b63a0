"""wireshark/toa.lua under tshark: the golden vectors decode to their fields,
each malformed form gets the expert warning, the fields filter, and on the
pcaps of real runs (the XDP LB in every family, VXLAN, gateway ping on the
host engine) tshark agrees with the reference codec (lab/decode.py) on every
packet and finds every checksum valid on every packet the LB and the
gateway data plane emit."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from lab import scenario, wire
from lab.checksum import ones_sum
from lab.decode import decode

LUA = ROOT / "wireshark" / "toa.lua"
VECTORS = json.loads((ROOT / "tests" / "vectors" / "toa_opt.json").read_text())
FIELDS = ["toa.form", "toa.family", "toa.cport", "toa.vport", "toa.cip", "toa.vip", "toa.cip6", "toa.vip6"]


@cache
def _tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.fail("tshark is not installed (make bootstrap installs it)")
    return path


def tshark(pcap: Path, fields: list[str], *opts: str, display: str | None = None) -> dict[int, list[str]]:
    """frame number -> the fields (each occurrence joined by ',')."""
    argv = [_tshark(), "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-T", "fields",
            "-E", "occurrence=a", "-E", "aggregator=,", "-e", "frame.number"]  # fmt: skip
    for fld in fields:
        argv += ["-e", fld]
    for o in opts:
        argv += ["-o", o]
    if display:
        argv += ["-Y", display]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Lua" not in r.stderr and "Error" not in r.stderr, r.stderr  # the script loaded and ran clean
    out = {}
    for line in r.stdout.splitlines():
        cols = line.split("\t")
        out[int(cols[0])] = cols[1:]
    return out


def _frame(form: str, opt: bytes, *, at_end: bool = False) -> Ether:
    """A packet carrying these option bytes; at_end: nothing after them (truncation)."""
    if form == "ipv4":
        # the options area is whole words: NOPs first, so that the option ends where the header does
        opts = b"\x01" * (-len(opt) % 4) + opt
        ip = bytearray(bytes(IP(src="192.0.2.2", dst="192.0.2.11", proto=6, chksum=0)))
        ip[0] = 0x40 | (5 + len(opts) // 4)
        hdr = bytes(ip[:20]) + opts
        l4 = bytes(TCP())
        hdr = hdr[:2] + (len(hdr) + len(l4)).to_bytes(2, "big") + hdr[4:]
        hdr = hdr[:10] + (0xFFFF - ones_sum(hdr)).to_bytes(2, "big") + hdr[12:]
        return Ether(type=0x0800) / Raw(hdr + l4)
    l4 = b"" if at_end else bytes(TCP() if opt[0] == 6 else UDP())
    return Ether() / IPv6(src="2001:db8::2", dst="2001:db8::11", nh=60) / Raw(opt + l4)


def _want(opt: wire.AddrOption, form: str) -> list[str]:
    six = opt.inner == 6
    return [form, str(opt.inner), str(opt.cport), str(opt.vport),
            "" if six else str(opt.cip), "" if six else str(opt.vip),
            str(opt.cip) if six else "", str(opt.vip) if six else ""]  # fmt: skip


def test_golden_vectors_decode_to_their_fields(tmp_path: Path) -> None:
    vectors = VECTORS["vectors"]
    pcap = tmp_path / "vectors.pcap"
    wrpcap(str(pcap), [_frame(v["form"], bytes.fromhex(v["hex"])) for v in vectors])
    got = tshark(pcap, [*FIELDS, "toa.malformed"])
    for i, v in enumerate(vectors, 1):
        raw = bytes.fromhex(v["hex"])
        ref = wire.unpack_ipv4(raw) if v["form"] == "ipv4" else wire.unpack_ipv6(raw)[0]  # reference codec
        assert (str(ref.cip), ref.cport, str(ref.vip), ref.vport) == (
            v["cip"], v["cport"], v["vip"], v["vport"])  # fmt: skip
        assert got[i] == [*_want(ref, v["form"]), ""], (v["name"], got[i])


MALFORMED_MESSAGES = {
    "truncated": "truncated",
    "bad length": "is neither 16",
    "operation": "operation bit 0 is",
    "bad option length": "is neither 12",
    "hdr ext len": "header",
}


def test_every_malformed_form_gets_the_expert_warning(tmp_path: Path) -> None:
    cases = [m for m in VECTORS["malformed"] if m["error"] not in ("wrong type", "wrong option type")]
    pcap = tmp_path / "malformed.pcap"
    wrpcap(str(pcap), [_frame(m["form"], bytes.fromhex(m["hex"]), at_end=True) for m in cases])
    got = tshark(pcap, ["toa.form", "_ws.expert.message"], display="toa.malformed")
    assert sorted(got) == list(range(1, len(cases) + 1)), "a malformed option without the warning"
    for i, m in enumerate(cases, 1):
        assert got[i][0] == m["form"] and MALFORMED_MESSAGES[m["error"]] in got[i][1], (m, got[i])
    # an option of another type is not ours: no decode, no warning
    other = [m for m in VECTORS["malformed"] if m["error"] in ("wrong type", "wrong option type")]
    wrpcap(str(pcap), [_frame(m["form"], bytes.fromhex(m["hex"])) for m in other])
    assert tshark(pcap, ["toa.form"], display="toa") == {}


def test_the_fields_filter(tmp_path: Path) -> None:
    pcap = tmp_path / "vectors.pcap"
    vectors = VECTORS["vectors"]
    wrpcap(str(pcap), [_frame(v["form"], bytes.fromhex(v["hex"])) for v in vectors])
    high = next(i for i, v in enumerate(vectors, 1) if v["cip"] == "198.51.100.10")
    assert list(tshark(pcap, [], display="toa.cip == 198.51.100.10")) == [high]
    sixes = [i for i, v in enumerate(vectors, 1) if ":" in v["cip"]]
    assert list(tshark(pcap, [], display="toa.cip6 == 2001:db8::1 && toa.family == 6")) == sixes
    assert list(tshark(pcap, [], display='toa.form == "ipv6"')) == [
        i for i, v in enumerate(vectors, 1) if v["form"] == "ipv6"]  # fmt: skip


# -- pcaps of real runs ----------------------------------------------------------------------

RUNS = ["fullnat-4to4-tcp-nomod", "fullnat-6to6-udp-nomod", "fullnat-6to4-tcp-nomod",
        "fullnat-4to6-udp-nomod", "gwping-colocated"]  # fmt: skip
# who the LB and the gateway data plane send as: LB local addresses (to the RS) and VIPs (to the client);
# the prober's probes as the gateway rewrote them
EMITTED = ("ip.src == 192.0.2.2 || ipv6.src == 2001:db8:5::2 || ip.src == 203.0.113.10 || "
           "ipv6.src == 2001:db8:f::10 || ip.src == 198.18.1.10 || "
           "ipv6.src == 2001:db8:70:1::10")  # fmt: skip
CHECKSUMS = ["ip.checksum.status", "tcp.checksum.status", "udp.checksum.status"]
VALIDATE = ["ip.check_checksum:TRUE", "tcp.check_checksum:TRUE", "udp.check_checksum:TRUE"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    with scenario.Runner("host", out=out) as runner:
        results = runner.run(scenario.select(RUNS))
    assert [(r.id, r.verdict) for r in results] == [(i, "pass") for i in RUNS], [r.checks for r in results]
    return out


@pytest.fixture(scope="module")
def merged(run_dir: Path) -> Path:
    """Every interface's pcap of every run, one after the other in one file (one tshark run)."""
    pcaps = sorted(str(p) for p in run_dir.rglob("*.pcap") if p.stat().st_size > 24)
    out = run_dir / "all.pcapng"
    tool = shutil.which("mergecap")
    assert tool, "mergecap (wireshark-common) is missing"
    subprocess.run([tool, "-a", "-w", str(out), *pcaps], check=True, capture_output=True, timeout=120)
    return out


@pytest.mark.host
@pytest.mark.bpf
def test_tshark_agrees_with_the_reference_codec_on_real_runs(merged: Path) -> None:
    ours = {d.index: d for d in decode(str(merged))}
    theirs = tshark(merged, [*FIELDS, "toa.malformed"], display="toa")
    assert sorted(theirs) == sorted(ours)
    for i, d in ours.items():
        assert d.option is not None, d
        assert theirs[i] == [*_want(d.option, d.form), ""], (i, theirs[i], str(d))
    forms = {(d.form, d.option.inner) for d in ours.values() if d.option}
    assert forms == {("ipv4", 4), ("ipv6", 6), ("ipv4", 6), ("ipv6", 4)}, forms  # 4to4, 6to6, 6to4, 4to6


@pytest.mark.host
@pytest.mark.bpf
def test_every_emitted_packet_has_valid_checksums(merged: Path) -> None:
    got = tshark(merged, CHECKSUMS, *VALIDATE, display=EMITTED)
    for frame, statuses in got.items():
        # 1: good; empty: no such header
        assert all(s in ("", "1") for s in ",".join(statuses).split(",")), (frame, statuses)
    assert len(got) >= 40


def test_installed_plugin_is_what_tshark_loads(tmp_path: Path) -> None:
    """``toalab wireshark install`` puts the dissector where Wireshark looks for
    personal plugins: tshark then decodes without -X."""
    import os
    import sys

    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    r = subprocess.run([sys.executable, "-m", "lab", "wireshark", "install"], env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and (tmp_path / ".local/lib/wireshark/plugins/toa.lua").is_file(), r.stderr
    pcap = tmp_path / "v.pcap"
    v = VECTORS["vectors"][4]
    wrpcap(str(pcap), [_frame(v["form"], bytes.fromhex(v["hex"]))])
    r = subprocess.run([_tshark(), "-n", "-r", str(pcap), "-T", "fields", "-e", "toa.cip"], env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.stdout.strip() == v["cip"], r.stderr
