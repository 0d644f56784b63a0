"""The LB's schedulers: which real server a new flow of a service goes to.

bpf/lb.c picks a position in the service's ring (``lb_ring``) -- by the
keyed 5-tuple hash, the keyed client-address hash or a per-CPU counter --
and the flow goes to the real server in that slot.  What makes each
scheduler is the ring this module builds:

- ``maglev``: Maglev consistent hashing (Eisenbud et al., NSDI 2016) of the
  5-tuple, weighted as Katran weighs it (a server fills slots in proportion
  to its weight).  When one of N servers leaves, about 1/N of the ring's
  slots change owner, so about 1/N of new flows move; flows already placed
  stay in the flow table wherever the ring goes.
- ``sh``: the same Maglev ring, indexed by the client's address: a client's
  flows go to one server (LVS's source hashing, consistent).
- ``rr``: each server once per period, weights ignored.
- ``wrr``: one period of smooth weighted round robin (nginx's): a server of
  weight w appears w times per period, interleaved.

Servers of weight 0 and servers marked down are in no ring.  The ring holds
a server's slot (its index in the service's ``real_servers``), so the
flow table and the persistence table, which hold ``lb_rs`` indexes, stay
valid whatever the ring becomes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

RING = 2039  # bpf/include/lb.h LB_RING: a prime (Maglev's table size)
MAX_WEIGHT = 65535  # lb_rs.weight is 16 bits

SCHEDULERS = {"maglev": 0, "sh": 1, "rr": 2, "wrr": 3}  # lb.h LB_SCHED_*
DEFAULT = "maglev"


@dataclass(frozen=True)
class Server:
    """A real server as the ring sees it: a stable name, a weight, up or down."""

    name: str
    weight: int = 1
    up: bool = True

    @property
    def takes_new_flows(self) -> bool:
        return self.up and self.weight > 0


def number(scheduler: str) -> int:
    """lb_svc.sched for a scheduler name."""
    try:
        return SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r} (one of {', '.join(SCHEDULERS)})") from None


def ring(scheduler: str, servers: Sequence[Server], size: int = RING) -> list[int]:
    """The ring of a service: position -> server index; empty when no server
    takes new flows."""
    number(scheduler)
    if scheduler in ("maglev", "sh"):
        return maglev(servers, size)
    if scheduler == "rr":
        return [i for i, s in enumerate(servers) if s.takes_new_flows]
    return wrr(servers, size)


def name_of(number: int) -> str:
    for name, n in SCHEDULERS.items():
        if n == number:
            return name
    return f"unknown({number})"


def _h(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, salt=salt).digest(), "little")


def maglev(servers: Sequence[Server], size: int = RING) -> list[int]:
    """Maglev's table population: each server walks its own permutation of the
    slots (offset, skip from its name) and takes the next free one; a server
    of weight w takes a turn w times as often as one of weight 1 (the
    heaviest takes one every round)."""
    # in name order: the ring depends on who the servers are, not on how they are listed
    live = sorted(
        ((i, s) for i, s in enumerate(servers) if s.takes_new_flows), key=lambda e: (e[1].name, e[0])
    )
    if not live:
        return []
    offset = [_h(s.name, b"offset") % size for _, s in live]
    skip = [_h(s.name, b"skip") % (size - 1) + 1 for _, s in live]
    nxt = [0] * len(live)
    credit = [0] * len(live)
    heaviest = max(s.weight for _, s in live)
    table = [-1] * size
    filled = 0
    while True:
        for j, (i, s) in enumerate(live):
            credit[j] += s.weight
            if credit[j] < heaviest:
                continue
            credit[j] -= heaviest
            c = (offset[j] + nxt[j] * skip[j]) % size
            while table[c] >= 0:
                nxt[j] += 1
                c = (offset[j] + nxt[j] * skip[j]) % size
            table[c] = i
            nxt[j] += 1
            filled += 1
            if filled == size:
                return table


def _reduced(weights: list[int], size: int) -> list[int]:
    """Weights divided by their gcd, then scaled down to sum to at most size
    (every positive weight keeps at least one turn)."""
    g = math.gcd(*[w for w in weights if w]) or 1
    ws = [w // g for w in weights]
    total = sum(ws)
    if total > size:
        ws = [max(1, w * size // total) if w else 0 for w in ws]
        while sum(ws) > size:
            ws[ws.index(max(ws))] -= 1
    return ws


def wrr(servers: Sequence[Server], size: int = RING) -> list[int]:
    """One period of smooth weighted round robin: each turn every server gains
    its weight, the one with the most goes and pays the total."""
    ws = _reduced([s.weight if s.takes_new_flows else 0 for s in servers], size)
    total = sum(ws)
    cur = [0] * len(ws)
    out = []
    for _ in range(total):
        for i, w in enumerate(ws):
            cur[i] += w
        best = max(range(len(ws)), key=lambda i: (cur[i], -i))
        cur[best] -= total
        out.append(best)
    return out


def shares(table: Sequence[int], n: int) -> list[float]:
    """Each server's share of a ring."""
    return [table.count(i) / len(table) if table else 0.0 for i in range(n)]
