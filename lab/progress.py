"""Progress of long steps (package downloads, the kernel image build, guest
boot, module builds): on a terminal one status line, redrawn in place with
the seconds it has taken so far, each finished step left as one line; in a
log (CI, a pipe) nothing, unless TOALAB_VERBOSE=1 asks for one line per
step."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO


class Ticker:
    """``t = Ticker(); t("downloading x"); ...; t("booting"); t.done()``."""

    def __init__(self, stream: TextIO | None = None, prefix: str = "toalab", interval: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.interval = interval
        self.live = _is_terminal(self.stream)
        self.verbose = os.environ.get("TOALAB_VERBOSE") == "1"
        self._msg = ""
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, msg: str) -> None:
        self.step(msg)

    def step(self, msg: str) -> None:
        if not self.live:
            if self.verbose:
                print(f"{self.prefix}: {msg}", file=self.stream, flush=True)
            return
        with self._lock:
            if self._msg:
                self._line(final=True)
            self._msg, self._t0 = msg, time.monotonic()
            self._line()
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def done(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop = threading.Event()
        with self._lock:
            if self.live and self._msg:
                self._line(final=True)
            self._msg = ""

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._msg:
                    self._line()

    def _line(self, final: bool = False) -> None:
        secs = time.monotonic() - self._t0
        self.stream.write(f"\r\x1b[K{self.prefix}: {self._msg} ({secs:.0f} s)" + ("\n" if final else ""))
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb" and not os.environ.get("CI")


def finish(progress: object) -> None:
    """End a progress callback's last line, when it is a Ticker."""
    done = getattr(progress, "done", None)
    if callable(done):
        done()
