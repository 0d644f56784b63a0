"""The differential fuzzer (lab/fuzz.py) in make test: a short fixed-seed budget
through lb.o and gwping.o, every verdict and output byte equal to the reference
models'; and the fuzzer's own power: a model with one rule wrong is caught."""

from __future__ import annotations

import collections
import random

import pytest

from lab import fuzz

pytestmark = pytest.mark.bpf

FRAMES = 10_000
SEED = 20261202


@pytest.mark.parametrize("program", sorted(fuzz.PROGRAMS))
def test_program_and_model_agree(program: str) -> None:
    rep = fuzz.PROGRAMS[program](FRAMES, SEED)
    shown = [(f.hex(), w.action, g.action) for f, w, g in rep.disagreements[:3]]
    assert not rep.disagreements and not rep.crashes, (rep.line(program), shown)
    assert rep.frames >= FRAMES * 0.9, rep.line(program)


def test_the_frames_reach_every_verdict() -> None:
    """Not a fuzzer of one path: both models see forwarded, passed and dropped frames."""
    rng = random.Random(SEED)
    gw = fuzz.GwModel()
    seen = collections.Counter(gw.run(f).action for f in fuzz.frames(rng, fuzz.gw_pool(rng), 5000))
    assert all(seen[a] > 200 for a in ("XDP_REDIRECT", "XDP_PASS", "XDP_DROP")), seen
    model = fuzz.LbModel(6, 4)
    pool = fuzz.lb_pool(6, 4)
    seen = collections.Counter((model.run(f, port) or fuzz.Verdict("-", b"")).action for f, port in pool * 3)
    assert all(seen[a] for a in ("XDP_REDIRECT", "XDP_PASS", "XDP_DROP")), seen


def test_a_wrong_rule_in_a_model_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway model that forgets the hop, and an LB model that forgets to move
    the L4 checksum with the addresses, disagree with the programs."""
    real = fuzz.ipv4_hop
    monkeypatch.setattr(fuzz, "ipv4_hop", lambda out, l3: None)
    assert fuzz.fuzz_gwping(4000, SEED).disagreements
    monkeypatch.setattr(fuzz, "ipv4_hop", real)
    monkeypatch.setattr(fuzz, "l4_update", lambda check, old, new: check)
    assert fuzz.fuzz_lb(4000, SEED).disagreements
