"""Gateway ping's prober, ``toalab gwping``: SYNs carrying the seed's MAGIC in
their TCP Timestamps option (lab/gwping.py has the data plane they test).

The prober sends one SYN per probe from its own source port, through a raw
socket of the kernel (so routing and neighbour resolution are the node's),
and matches the answer by addresses, ports and acknowledgement number; the
prober's kernel answers the SYN-ACK with an RST of its own (no socket owns
the port), which changes nothing for the measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import select
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from lab.errors import LabError
from lab.gwping import MAGIC, MAGIC_PASS

# -- probe packets ----------------------------------------------------------------------


def probe_segment(
    sport: int,
    dport: int,
    seq: int,
    tsval: int = MAGIC,
    options: Sequence[tuple[str, Any]] | None = None,
) -> Any:
    """The seed's ping: a TCP SYN whose Timestamps option (first, as the
    seed's gopacket sender writes it) carries TSval (big-endian on the wire)
    and TSecr 0.  Returns a scapy TCP layer."""
    from scapy.layers.inet import TCP

    opts = list(options) if options is not None else [("Timestamp", (tsval, 0))]
    return TCP(sport=sport, dport=dport, seq=seq, flags="S", window=64240, options=opts)


def probe_packet(src: str, dst: str, sport: int, dport: int, seq: int, tsval: int = MAGIC) -> Any:
    """IPv4 or IPv6 (by address family) + probe_segment, as a scapy packet."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    ip = IPv6(src=src, dst=dst) if ipaddress.ip_address(dst).version == 6 else IP(src=src, dst=dst)
    return ip / probe_segment(sport, dport, seq, tsval)


# -- one probe from a lab node, on any engine ---------------------------------------------------
# Sends IPv4 packets (hex, argv[2:]) to argv[1] from a raw socket, one after the
# other; prints, per packet, the first SYN-ACK or RST to its source port within
# 3 s.  Plain python3, no scapy, one start for all: a second or more in a TCG guest.
_SEND = (
    "import json, select, socket, struct, sys, time\n"
    "r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
    "for h in sys.argv[2:]:\n"
    "    pkt = bytes.fromhex(h); sport = struct.unpack('!H', pkt[20:22])[0]\n"
    "    s.sendto(pkt, (sys.argv[1], 0)); end = time.time() + 3; out = {'answer': None}\n"
    "    while time.time() < end:\n"
    "        if not select.select([r], [], [], 0.1)[0]:\n"
    "            continue\n"
    "        d = r.recv(65535); t = d[(d[0] & 15) * 4:]\n"
    "        if struct.unpack('!H', t[2:4])[0] == sport and t[13] & 0x16 in (0x12, 0x04, 0x14):\n"
    "            kind = 'synack' if t[13] & 0x12 == 0x12 else 'rst'\n"
    "            out = {'answer': kind, 'from': socket.inet_ntoa(d[12:16])}; break\n"
    "    print(json.dumps(out), flush=True)\n"
)


def probes_from(
    lab: Any, node: str, src: str, dst: str, dport: int, probes: Sequence[tuple[int, int]]
) -> list[dict]:
    """IPv4 probe SYNs (built here), one per (sport, tsval), sent from `node` of a
    running lab one after the other; each {"answer": "synack"|"rst"|None, "from": addr}."""
    import json

    pkts = [bytes(probe_packet(src, dst, sport, dport, 1000 + sport, tsval)).hex() for sport, tsval in probes]
    r = lab.exec(node, ["python3", "-c", _SEND, dst, *pkts], timeout=60)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or len(lines) != len(pkts):
        raise LabError(f"sending probes from {node} failed: {r.stderr.strip()[-300:]}")
    return [dict(json.loads(line)) for line in lines]


def probe_from(lab: Any, node: str, src: str, dst: str, sport: int, dport: int, tsval: int = MAGIC) -> dict:
    """One probe: probes_from with one (sport, tsval)."""
    return probes_from(lab, node, src, dst, dport, [(sport, tsval)])[0]


# -- the prober -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeReply:
    seq: int  # probe number, from 0
    sport: int
    kind: str  # "SYN-ACK" | "RST" | "" (no answer)
    rtt_ms: float | None
    tsecr: int | None = None  # the TSecr of a SYN-ACK: the TSval its kernel saw


@dataclass
class ProbeStats:
    target: str
    port: int
    replies: list[ProbeReply] = field(default_factory=list)
    elapsed_ms: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.replies)

    @property
    def received(self) -> int:
        return sum(1 for r in self.replies if r.rtt_ms is not None)

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    def summary(self) -> str:
        lines = [
            f"--- {self.target} gwping statistics ---",
            f"{self.sent} probes transmitted, {self.received} received, "
            f"{self.loss_pct:.4g}% packet loss, time {self.elapsed_ms:.0f}ms",
        ]
        rtts = [r.rtt_ms for r in self.replies if r.rtt_ms is not None]
        if rtts:
            mdev = statistics.pstdev(rtts)
            lines.append(
                f"rtt min/avg/max/mdev = {min(rtts):.3f}/{statistics.fmean(rtts):.3f}/"
                f"{max(rtts):.3f}/{mdev:.3f} ms"
            )
        return "\n".join(lines)


def _source_for(dst: str, dport: int) -> str:
    """The source address the kernel picks towards dst (no packet is sent)."""
    fam = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, dport))
        except OSError as e:
            raise LabError(f"no route to {dst}: {e.strerror}") from None
        return str(s.getsockname()[0])


@contextlib.contextmanager
def _in_netns(name: str | None) -> Iterator[None]:
    if not name:
        yield
        return
    from lab import netns

    if not os.path.exists(netns.path(name)):
        raise LabError(f"no network namespace '{name}' (see 'ip netns list')")
    with netns.entered(name):
        yield


class Prober:
    """Raw TCP sockets of the current namespace: send probe SYNs, catch answers."""

    def __init__(self, target: str, port: int) -> None:
        try:
            addr = ipaddress.ip_address(target)
        except ValueError:
            try:
                addr = ipaddress.ip_address(socket.getaddrinfo(target, None)[0][4][0])
            except (OSError, IndexError):
                raise LabError(f"cannot resolve '{target}'") from None
        import scapy.layers.inet  # noqa: F401  (before any probe is timed)

        self.target = str(addr)
        self.port = port
        self.v6 = addr.version == 6
        self.src = _source_for(self.target, port)
        fam = socket.AF_INET6 if self.v6 else socket.AF_INET
        try:
            self.sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_TCP)
        except PermissionError:
            raise LabError("gwping needs CAP_NET_RAW (run it as root)") from None

    def close(self) -> None:
        self.sock.close()

    def send(self, sport: int, seq: int, tsval: int) -> float:
        """Send one probe; returns the send time (perf_counter, seconds)."""
        pkt = probe_packet(self.src, self.target, sport, self.port, seq, tsval)
        seg = bytes(pkt.payload)  # TCP with the checksum over our pseudo header
        t = time.perf_counter()
        self.sock.sendto(seg, (self.target, 0))
        return t

    def _parse(self, data: bytes, addr: Any) -> Any | None:
        from scapy.layers.inet import IP, TCP

        if self.v6:  # IPv6 raw sockets deliver the segment only
            if str(ipaddress.ip_address(addr[0])) != self.target:
                return None
            return TCP(data)
        ip = IP(data)
        if ip.src != self.target or not ip.haslayer(TCP):
            return None
        return ip[TCP]

    def wait(self, sport: int, seq: int, deadline: float) -> tuple[Any, float] | None:
        """The first answer to the probe (sport, seq) before deadline."""
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            data, addr = self.sock.recvfrom(65535)
            t = time.perf_counter()
            tcp = self._parse(data, addr)
            if tcp is None or tcp.sport != self.port or tcp.dport != sport:
                continue
            flags = int(tcp.flags)
            syn_ack = flags & 0x12 == 0x12
            rst = bool(flags & 0x04)
            if (syn_ack or rst) and (flags & 0x10) and tcp.ack == (seq + 1) & 0xFFFFFFFF:
                return tcp, t


def _tsecr(tcp: Any) -> int | None:
    for name, val in tcp.options:
        if name == "Timestamp":
            return int(val[1])
    return None


def run_probes(
    target: str,
    count: int,
    interval: float,
    *,
    port: int = 80,
    timeout: float = 1.0,
    tsval: int = MAGIC,
    out: TextIO | None = None,
    rng: random.Random | None = None,
) -> ProbeStats:
    """Send COUNT probes INTERVAL seconds apart; print a line per probe to OUT."""
    rng = rng or random.Random()
    pr = Prober(target, port)
    stats = ProbeStats(pr.target, port)
    say: Callable[[str], None] = (lambda s: print(s, file=out, flush=True)) if out else (lambda s: None)
    say(f"GWPING {pr.target} port {port} from {pr.src}: TCP SYN, TSval {tsval:#010x}")
    base_sport = rng.randrange(20000, 60000 - count) if count < 40000 else 20000
    start = time.perf_counter()
    try:
        for i in range(count):
            sport = base_sport + i  # a source port per probe
            seq = rng.getrandbits(32)
            t0 = pr.send(sport, seq, tsval)
            got = pr.wait(sport, seq, t0 + timeout)
            if got is None:
                rep = ProbeReply(i, sport, "", None)
                say(f"no answer from {pr.target}:{port}: probe={i} sport={sport}")
            else:
                tcp, t1 = got
                kind = "RST" if int(tcp.flags) & 0x04 else "SYN-ACK"
                rep = ProbeReply(i, sport, kind, (t1 - t0) * 1000.0, _tsecr(tcp))
                extra = f" tsecr={rep.tsecr:#010x}" if rep.tsecr is not None else ""
                say(
                    f"{kind} from {pr.target}:{port}: probe={i} sport={sport} time={rep.rtt_ms:.3f} ms{extra}"
                )
            stats.replies.append(rep)
            if i + 1 < count:
                time.sleep(max(0.0, t0 + interval - time.perf_counter()))
    finally:
        stats.elapsed_ms = (time.perf_counter() - start) * 1000.0
        pr.close()
    say("")
    say(stats.summary())
    return stats


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {s}")
    return v


def _tsval(s: str) -> int:
    v = int(s, 0)
    if not 0 <= v <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"TSval {s} is not a 32-bit value")
    return v


def cmd_gwping(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise LabError(f"gwping: -c wants at least 1 probe, not {args.count}")
    if not 1 <= args.port <= 65535:
        raise LabError(f"gwping: port {args.port} out of range 1-65535")
    tsval = MAGIC_PASS if args.pass_ else args.tsval
    with _in_netns(args.netns):
        stats = run_probes(
            args.target,
            args.count,
            args.interval,
            port=args.port,
            timeout=args.timeout,
            tsval=tsval,
            out=sys.stdout,
        )
    return 0 if stats.received == stats.sent else 1


def register(subparsers: Any) -> None:
    """Add ``toalab gwping`` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "gwping",
        help="ping a gateway data plane with TCP SYNs carrying the TSval magic",
        description=(
            "Send TCP SYN probes whose Timestamps option carries TSval 0xdeadbeef (the "
            "gateway-ping magic) to TARGET and report each answer (SYN-ACK or RST) with "
            "its round-trip time, then a ping(8)-style summary.  A gateway data plane "
            "on the way decrements the magic to 0xddadbeef and forwards the probe; the "
            "node that sees 0xddadbeef hands it to its kernel, which answers.  Exit "
            "status 1 if any probe went unanswered.  Run it on a lab node: "
            "'toalab exec prober -- toalab gwping TARGET' or '--netns NAME'."
        ),
    )
    p.add_argument("target", metavar="TARGET", help="IPv4 or IPv6 address to probe")
    p.add_argument("-c", "--count", type=int, default=4, help="probes to send (default 4)")
    p.add_argument("-i", "--interval", type=_positive_float, default=1.0, help="seconds between probes (1)")
    p.add_argument("-W", "--timeout", type=_positive_float, default=1.0, help="seconds to wait per probe (1)")
    p.add_argument("-p", "--port", type=int, default=80, help="destination TCP port (80)")
    p.add_argument("--netns", metavar="NAME", help="send from this network namespace")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tsval", type=_tsval, default=MAGIC, help="TSval to send (0xdeadbeef)")
    g.add_argument(
        "--pass",
        dest="pass_",
        action="store_true",
        help="send MAGIC_PASS (0xddadbeef): ping a node's kernel through its own data plane",
    )
    p.set_defaults(func=cmd_gwping)
