"""lab/progress.py: on a terminal a status line redrawn in place, each finished
step left as one line with its seconds; in a log nothing (TOALAB_VERBOSE=1: one
line per step)."""

from __future__ import annotations

import io

import pytest

from lab.progress import Ticker, finish


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_status_line_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = Tty()
    t = Ticker(out, prefix="toalab vm", interval=0.01)
    t("downloading linux-image")
    t("booting")
    finish(t)
    text = out.getvalue()
    assert "\r\x1b[Ktoalab vm: downloading linux-image (0 s)\n" in text
    assert text.endswith("\r\x1b[Ktoalab vm: booting (0 s)\n")
    assert text.count("\n") == 2


@pytest.mark.parametrize("env", [{}, {"CI": "true"}, {"TERM": "dumb"}])
def test_a_log_stays_quiet(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    monkeypatch.delenv("TOALAB_VERBOSE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = Tty() if env else io.StringIO()
    t = Ticker(out)
    t("downloading")
    t.done()
    assert out.getvalue() == ""


def test_verbose_log_gets_one_line_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOALAB_VERBOSE", "1")
    out = io.StringIO()
    t = Ticker(out, prefix="toalab kmod")
    t("toa.ko")
    t("examples")
    t.done()
    assert out.getvalue() == "toalab kmod: toa.ko\ntoalab kmod: examples\n"
