"""Watches the guest's serial console for panics, oopses and lockups."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")
_STRIP_TS = re.compile(r"^\[\s*\d+\.\d+\]\s*")

PANIC = re.compile(r"Kernel panic - not syncing: ?(.*)")
OOPS = re.compile(
    r"(BUG: (?!soft lockup).*|Oops: .*|general protection fault.*|kernel BUG at .*|"
    r"Unable to handle kernel .*)"
)
LOCKUP = re.compile(
    r"(watchdog: BUG: soft lockup.*|rcu: INFO: \S+ (self-)?detected stalls.*|"
    r"INFO: task .* blocked for more than .*|NMI watchdog: .*hard LOCKUP.*)"
)
INIT_FAIL = re.compile(r"toalab-init: FATAL: (.*)")


@dataclass
class ConsoleWatcher:
    panic: str | None = None
    oops: str | None = None
    init_failure: str | None = None
    warnings: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    _partial: bytes = b""

    def feed(self, data: bytes) -> None:
        data = self._partial + _ANSI.sub(b"", data)
        *lines, self._partial = data.split(b"\n")
        if len(self._partial) > 4096:
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            self._line(_STRIP_TS.sub("", raw.decode(errors="replace")).strip())

    def _line(self, line: str) -> None:
        if not line:
            return
        self.tail = [*self.tail[-19:], line]
        if m := PANIC.search(line):
            self.panic = self.panic or (m.group(1).strip() or "panic")
        elif (m := LOCKUP.search(line)) and len(self.warnings) < 20:
            self.warnings.append(m.group(1))
        elif (m := OOPS.search(line)) and self.oops is None:
            self.oops = m.group(1)
        elif m := INIT_FAIL.search(line):
            self.init_failure = self.init_failure or m.group(1)

    def verdict(self) -> str | None:
        """A one-line description of a guest crash seen on the console, if any."""
        if self.panic:
            detail = f" (first error: {self.oops})" if self.oops and self.oops not in self.panic else ""
            return f"guest kernel panic: {self.panic}{detail}"
        if self.init_failure:
            return f"guest init failed: {self.init_failure}"
        if self.oops:
            return f"guest kernel oops: {self.oops}"
        return None
