"""Link impairments (lab/impair.py, ``toalab link``): the grammar and the
topology's form; on the host engine an RS-side MTU below what the option
needs (the LB clamps the MSS to the path, declared or changed on the running
lab, and a transfer loses nothing), tbf rates, and netem's absence said in
one line; in a guest, netem delay and TCP through the LB with loss on the RS
side, where every retransmitted SYN and third packet still carries the
option."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import TOPOLOGIES, listeners, needs_root
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap

from lab import impair, lbctl, programs, topology
from lab.capture import Capture
from lab.impair import ImpairError, Impairment
from lab.net import Lab
from lab.scapy_toa import extract

TOALAB = [sys.executable, "-m", "lab"]
VIP = "203.0.113.10"


def test_grammar() -> None:
    imp = Impairment.parse({"delay": "20ms", "jitter": "5ms", "loss": "1.5%", "rate": "100Mbit"})
    assert imp.qdisc() == ["netem", "delay", "20ms", "5ms", "loss", "1.5%", "rate", "100mbit"]
    assert Impairment.parse({"rate": "1gbit"}).qdisc()[:3] == ["tbf", "rate", "1gbit"]
    assert Impairment.parse({"mtu": "1400"}).mtu == 1400 and not Impairment.parse({"mtu": 1400}).shapes
    for kv, msg in [
        ({"delay": "20"}, "delay=20: a time such as 20ms"),
        ({"delay": "1ms; reboot"}, "delay=1ms; reboot: a time"),
        ({"loss": "101%"}, "loss=101%: a percentage"),
        ({"rate": "fast"}, "rate=fast: a rate such as 100mbit"),
        ({"mtu": "9"}, "mtu=9: a whole number 68-65535"),
        ({"jitter": "5ms"}, "jitter needs a delay"),
        ({"dealy": "5ms"}, "unknown impairment(s) dealy"),
    ]:
        with pytest.raises(ImpairError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            Impairment.parse(kv)


def _with_link(line: str, repl: str) -> str:
    return (TOPOLOGIES / "fullnat-4to4.yaml").read_text().replace(f"  - {line}\n", f"  - {repl}\n")


def test_topology_form_and_its_ops() -> None:
    spec = '{a: "switch:p1", b: "rs1:eth0", mtu: 1400, impair: {a: {loss: 5%, delay: 1ms}}}'
    t = topology.loads(_with_link("switch:p1 -- rs1:eth0", spec))
    link = next(ln for ln in t.links if ln.b.node == "rs1")
    assert link.mtu == 1400 and link.impair == {"a": Impairment(delay="1ms", loss="5%")}
    ops = impair.program_ops(t, {n: f"ns-{n}" for n in t.nodes})
    assert ops == [programs.Qdisc("ns-switch", "p1", ("netem", "delay", "1ms", "loss", "5%"))]
    for repl, msg in [
        ('{a: "switch:p1", b: "rs1:eth0", impair: {c: {loss: 5%}}}', "links[2].impair: a mapping of link"),
        ('{a: "switch:p1", b: "rs1:eth0", impair: {a: {loss: lots}}}', "links[2].impair.a: loss=lots"),
        ('{a: "switch:p1", b: "rs1:eth0", impair: {b: {mtu: 1400}}}', "the MTU is the link's own field"),
        ('{a: "switch:p1", b: "rs1:eth0", mtus: 1400}', "links[2]: unknown field(s) mtus"),
    ]:
        with pytest.raises(topology.TopologyError) as ei:
            topology.loads(_with_link("switch:p1 -- rs1:eth0", repl))
        assert any(msg in p for p in ei.value.problems), ei.value.problems


# -- on the host engine -------------------------------------------------------------------------

SMALL_MTU = ('{a: "switch:p1", b: "rs1:eth0", mtu: 1300}', '{a: "switch:p2", b: "rs2:eth0", mtu: 1300}')


def _small_mtu_topology() -> topology.Topology:
    text = _with_link("switch:p1 -- rs1:eth0", SMALL_MTU[0])
    text = text.replace("  - switch:p2 -- rs2:eth0\n", f"  - {SMALL_MTU[1]}\n")
    return topology.loads(text + "    persistence: 300\n", "fullnat-4to4-mtu1300.yaml")


def _rx_dropped(lab: Lab, node: str) -> int:
    doc = json.loads(lab.exec(node, ["ip", "-s", "-j", "link", "show", "eth0"]).check().stdout)
    return int(doc[0]["stats64"]["rx"]["dropped"])


def _transfer(lab: Lab, rs: str) -> None:
    """1 MB through the VIP from the client, into an nc on the RS (persistence: to one RS)."""
    jobs = [lab.spawn(n, ["sh", "-c", "nc -l 8080 > /dev/null"]) for n in ("rs1", "rs2")]
    time.sleep(0.3)
    r = lab.exec("client", ["sh", "-c", f"head -c 1000000 /dev/zero | nc -N -w 5 {VIP} 80"], timeout=30)
    assert r.returncode == 0, r.stderr
    for j in jobs:
        j.terminate()


@pytest.mark.host
@pytest.mark.bpf
def test_rs_side_mtu_below_what_the_option_needs(lab_name: str, tmp_path: Path) -> None:
    """RS links of MTU 1300: the LB clamps the SYN-ACK's MSS to 1300 - 20 - 16 - 20 =
    1244, so full segments plus the option fit; 1 MB goes through with nothing dropped
    on the way and no frame above the MTU.  Lowered to 1280 on the running lab (toalab
    link set), the clamp follows (1224) and the next transfer is as clean."""
    needs_root()
    with Lab.up(_small_mtu_topology(), name=lab_name) as lab:
        entries = lbctl.LbControl(lab)._entries(0)
        assert {s.mss_synack for _, s, _ in entries} == {1244}
        for want_mtu, pcap_name in ((1300, "a.pcap"), (1280, "b.pcap")):
            if want_mtu == 1280:
                for end in ("switch:p1", "rs1:eth0", "switch:p2", "rs2:eth0"):
                    r = subprocess.run([*TOALAB, "link", "set", "-L", lab_name, end, "mtu=1280"],
                                       capture_output=True, text=True, timeout=60)  # fmt: skip
                    assert r.returncode == 0, r.stderr
                assert "MSS clamp 1460/1244 -> 1460/1224" in r.stdout or {
                    s.mss_synack for _, s, _ in lbctl.LbControl(lab)._entries(0)} == {1224}  # fmt: skip
            before = {n: _rx_dropped(lab, n) for n in ("rs1", "rs2")}
            # headers are all the check reads; short copies and a big ring keep tcpdump
            # ahead of the burst (whole frames in the default ring: dozens lost in CI)
            with Capture(lab, "switch", "p0", tmp_path / pcap_name, buffer_kib=32768, snaplen=192) as cap:
                _transfer(lab, "rs1")
            assert cap.dropped() == 0, f"the capture lost frames, the MTU check misses them: {cap.stats()}"
            assert {n: _rx_dropped(lab, n) for n in ("rs1", "rs2")} == before
            pkts = [p for p in rdpcap(str(tmp_path / pcap_name)) if IP in p and TCP in p and p[IP].dst != VIP]
            assert len(pkts) > 500 and max(p[IP].len for p in pkts) <= want_mtu
            assert max(p[IP].len for p in pkts) > want_mtu - 60, "segments far below the MTU: clamped hard"
        argv = [*TOALAB, "link", "show", "-L", lab_name, "--json"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert {(e["node"], e["ifname"]): e["mtu"] for e in json.loads(r.stdout)}[("rs1", "eth0")] == 1280


def _has_netem(lab: Lab) -> bool:
    r = lab.kernel().exec(["tc", "-n", lab.ns("client"), "qdisc", "add", "dev", "lo", "root", "netem"])
    lab.kernel().exec(["tc", "-n", lab.ns("client"), "qdisc", "del", "dev", "lo", "root"])
    return r.returncode == 0


@pytest.mark.host
def test_rate_and_netem_on_the_host_kernel(lab_name: str) -> None:
    needs_root()
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name) as lab:
        impair.set_link(lab, "client:eth0", Impairment.parse({"rate": "50mbit"}))
        shown = {(s.node, s.ifname): s.qdisc for s in impair.show_links(lab)}
        assert shown[("client", "eth0")] == "tbf rate 50mbit" and shown[("lb", "eth0")] == "none"
        impair.reset_link(lab, "client:eth0")
        assert {(s.node, s.ifname): s.qdisc for s in impair.show_links(lab)}[("client", "eth0")] == "none"
        r = subprocess.run([*TOALAB, "link", "set", "-L", lab_name, "client:eth0", "delay=10ms"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        if _has_netem(lab):
            assert r.returncode == 0, r.stderr
        else:  # this CI machine's kernel: no modules, no netem
            assert r.returncode == 2 and "this kernel has no netem (sch_netem)" in r.stderr
            assert "--engine vm" in r.stderr and r.stderr.count("\n") == 1


# -- in a guest: netem ----------------------------------------------------------------------------


def _rtt_ms(lab: Lab) -> float:
    out = lab.exec("client", ["ping", "-n", "-c", "3", "-i", "0.2", "198.51.100.1"]).check().stdout
    return float(out.strip().splitlines()[-1].split("=")[1].split("/")[1])


def _handshakes(pcap: Path) -> tuple[list[Any], list[Any], dict[tuple[int, int], int]]:
    """What the LB sent to the real servers (src: its local address): SYNs, third
    packets (the pure ACK of the RS's SYN-ACK), and how many copies of each."""
    every = [p for p in rdpcap(str(pcap)) if IP in p and TCP in p]
    to_rs = [p for p in every if p[IP].src == "192.0.2.2"]
    synacks = [p for p in every if p[IP].dst == "192.0.2.2" and p[TCP].flags & 0x12 == 0x12]
    isn = {p[TCP].dport: p[TCP].seq for p in synacks}
    syns = [p for p in to_rs if p[TCP].flags & 0x12 == 0x02]
    thirds = [p for p in to_rs if p[TCP].flags == 0x10 and p[TCP].ack == isn.get(p[TCP].sport, -2) + 1]
    copies: dict[tuple[int, int], int] = {}
    for p in syns + thirds:
        key = (p[TCP].sport, int(p[TCP].flags))
        copies[key] = copies.get(key, 0) + 1
    return syns, thirds, copies


@pytest.mark.vm
@pytest.mark.bpf
def test_loss_on_the_rs_side_retransmissions_carry_the_option(toalab_guest: Any, lab_name: str) -> None:
    """netem in the guest: a delay shows in the RTT; then 20% loss on what the switch
    sends to the real servers, connections through the LB (8 at a time, until the
    loss hit a handshake): all complete (nc gives a SYN 30 s: five tries, all lost
    with probability 0.2^5), some SYN or third packet was lost and sent
    again, and every copy of every SYN and third packet that left the LB carries
    the option naming the client."""
    lab = toalab_guest.lab(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name)
    try:
        base = _rtt_ms(lab)
        impair.set_link(lab, "client:eth0", Impairment.parse({"delay": "40ms"}))
        assert _rtt_ms(lab) >= base + 35
        impair.reset_link(lab, "client:eth0")
        jobs = listeners(lab)
        for end in ("switch:p1", "switch:p2"):
            impair.set_link(lab, end, Impairment.parse({"loss": "20%"}))
        where = Path(toalab_guest.results) / lab_name  # the guest writes there, the host reads
        where.mkdir(parents=True, exist_ok=True)
        cap = Capture(lab, "switch", "p0", where / "p0.pcap")
        n = 0
        with cap:
            for _ in range(3):  # 8 connections at a time until the loss has hit a handshake
                for _ in range(8):
                    r = lab.exec("client", ["nc", "-z", "-w", "30", VIP, "80"], timeout=60)
                    assert r.returncode == 0, r.stderr
                    n += 1
                time.sleep(0.2)
                syns, thirds, copies = _handshakes(cap.path)
                if any(c > 1 for c in copies.values()):
                    break
        for j in jobs:
            j.terminate()
        assert len({p[TCP].sport for p in syns}) == n and len({p[TCP].sport for p in thirds}) == n
        assert any(c > 1 for c in copies.values()), "no SYN or third packet sent twice: the loss did not bite"
        for p in syns + thirds:
            found = extract(p)
            assert found is not None and str(found[0].cip) == "198.51.100.10", p.summary()
    finally:
        lab.down()
