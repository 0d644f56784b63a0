"""The LB's Python map layouts (lab/lb.py) against bpf/include/lb.h, as the
compiler laid the structs out: the BTF of bpf/build/lb.o gives every member's
offset, and each Python packer must put each field there (and be the size of
the struct).  A field moved or resized in lb.h fails here, not in a lab."""

from __future__ import annotations

import ipaddress
import json
import shutil
import struct
import subprocess
from functools import cache

import pytest

from lab import bpf, lb, sched

pytestmark = pytest.mark.skipif(shutil.which("bpftool") is None, reason="needs bpftool (BTF dump)")


@cache
def layouts() -> dict[str, tuple[int, dict[str, int]]]:
    """struct name -> (size, member -> byte offset), from the object's BTF."""
    obj = bpf.obj_path(lb.BPF_OBJ)
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj), "format", "raw", "-j"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    res = {}
    for t in json.loads(out)["types"]:
        if t.get("kind") == "STRUCT" and str(t.get("name", "")).startswith("lb_"):
            res[t["name"]] = (t["size"], {m["name"]: m["bits_offset"] // 8 for m in t["members"]})
    return res


def check(struct_name: str, blob: bytes, fields: dict[str, bytes]) -> None:
    size, offsets = layouts()[struct_name]
    assert len(blob) == size, f"{struct_name}: Python packs {len(blob)} bytes, lb.h has {size}"
    assert set(fields) <= set(offsets), f"{struct_name}: no member(s) {set(fields) - set(offsets)}"
    for name, want in fields.items():
        off = offsets[name]
        assert blob[off : off + len(want)] == want, f"{struct_name}.{name} at {off}: {blob.hex()}"


V6A, V6B = ipaddress.ip_address("2001:db8::a"), ipaddress.ip_address("2001:db8::b")
MAC1, MAC2, MAC3, MAC4 = (bytes([i] * 6) for i in (0x11, 0x22, 0x33, 0x44))


def le(fmt: str, *v: int) -> bytes:
    return struct.pack("<" + fmt, *v)


def test_every_struct_python_spells_is_in_the_btf() -> None:
    assert {"lb_svc_key", "lb_svc", "lb_rs", "lb_cfg", "lb_flow_key", "lb_fwd"} <= set(layouts())


def test_svc_key_and_svc() -> None:
    check("lb_svc_key", lb.svc_key(V6A, 0x1234, 17),
          {"vip": V6A.packed, "vport": b"\x12\x34", "proto": b"\x11", "family": b"\x06"})  # fmt: skip
    svc = lb.Svc(V6A, 80, 6, id=0x01020304, n_rs=5, n_local=6, rs_family=4, flags=lb.SVC_VXLAN,
                 opt_pkts=7, mss_syn=1400, mss_synack=1300, scheduler="sh", persist_s=0x0A0B0C0D,
                 mtu_rs=1280)  # fmt: skip
    check("lb_svc", svc.pack(ring_len=0x07F7), {
        "id": le("I", 0x01020304), "n_rs": le("I", 5), "n_local": le("I", 6), "flags": le("H", lb.SVC_VXLAN),
        "opt_pkts": le("H", 7), "mss_syn": le("H", 1400), "mss_synack": le("H", 1300), "rs_family": b"\x04",
        "sched": bytes([sched.SCHEDULERS["sh"]]), "ring_len": le("H", 0x07F7),
        "persist_s": le("I", 0x0A0B0C0D), "mtu_rs": le("H", 1280),
    })  # fmt: skip
    key = lb.svc_key(V6A, 80, 6)
    assert lb.Svc.parse(key, svc.pack(ring_len=0x07F7)) == (svc, 0x07F7)


def test_ring_and_persistence() -> None:
    size, _ = layouts()["lb_ring"]
    assert size == sched.RING and len(lb.ring_value([1, 2, 3])) == size
    check("lb_persist_key", lb.persist_key(V6A, 0x01020304),
          {"cip": V6A.packed, "svc_id": le("I", 0x01020304), "family": b"\x06"})  # fmt: skip
    check("lb_persist", lb.persist_value(0x1122334455667788, 0x0A0B0C0D),
          {"last_ns": le("Q", 0x1122334455667788), "rs_idx": le("I", 0x0A0B0C0D)})  # fmt: skip


def test_rs() -> None:
    rs = lb.Rs(
        "192.0.2.11", 0x1F90, 0x0A0B0C0D, MAC1, MAC2, "192.0.2.2", "192.0.2.11", MAC3, MAC4, 0x00ABCDEF,
        weight=0x1234, down=True,
    )  # fmt: skip
    check("lb_rs", rs.pack(), {
        "rip": bytes([192, 0, 2, 11]) + bytes(12), "rport": b"\x1f\x90", "family": b"\x04",
        "vtep_family": b"\x04", "ifindex": le("I", 0x0A0B0C0D), "smac": MAC1, "dmac": MAC2,
        "vtep_src": bytes([192, 0, 2, 2]) + bytes(12), "vtep_dst": bytes([192, 0, 2, 11]) + bytes(12),
        "inner_smac": MAC3, "inner_dmac": MAC4, "vni": le("I", 0x00ABCDEF),
        "weight": le("H", 0x1234), "flags": le("H", lb.RS_DOWN),
    })  # fmt: skip


def test_vtep_key() -> None:
    check("lb_vtep_key", lb.vtep_key(V6A, 0x00ABCDEF), {"addr": V6A.packed, "vni": le("I", 0x00ABCDEF),
                                                        "family": b"\x06"})  # fmt: skip


def test_cfg() -> None:
    cfg = lb.Cfg(tcp_idle_s=2.5, udp_idle_s=1.0, lport_min=2000, lport_max=3000, hash_key=0xA1B2C3D4)
    check("lb_cfg", cfg.pack(), {"tcp_idle_ns": le("Q", 2_500_000_000), "udp_idle_ns": le("Q", 1_000_000_000),
                                 "lport_min": le("H", 2000), "lport_max": le("H", 3000),
                                 "hash_key": le("I", 0xA1B2C3D4)})  # fmt: skip


def test_flow_key_and_fwd_both_ways() -> None:
    key = lb.flow_key(V6A, V6B, 0x1111, 0x2222, 6)
    check("lb_flow_key", key, {"src": V6A.packed, "dst": V6B.packed, "sport": b"\x11\x11",
                               "dport": b"\x22\x22", "proto": b"\x06", "family": b"\x06"})  # fmt: skip
    val = lb.fwd_value("192.0.2.2", "192.0.2.11", 0x3333, 0x4444, 9, established=True)
    check("lb_fwd", val, {"lip": bytes([192, 0, 2, 2]) + bytes(12), "rip": bytes([192, 0, 2, 11]) + bytes(12),
                          "lport": b"\x33\x33", "rport": b"\x44\x44", "rs_idx": le("I", 9),
                          "rs_family": b"\x04", "state": b"\x01"})  # fmt: skip
    # and what the maps hold reads back through Flow.parse at the same offsets
    _, off = layouts()["lb_fwd"]
    live = bytearray(val)
    live[off["pkts"] : off["pkts"] + 4] = le("I", 77)
    f = lb.Flow.parse(key, bytes(live))
    assert (f.cip, f.vip, f.cport, f.vport, f.proto) == (V6A, V6B, 0x1111, 0x2222, 6)
    assert (str(f.lip), str(f.rip), f.lport, f.rport, f.pkts, f.rs_established) == (
        "192.0.2.2", "192.0.2.11", 0x3333, 0x4444, 77, True)  # fmt: skip
