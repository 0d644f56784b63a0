"""The host-side C test of the wire header and libipopt: `make -C kmod check`.

tests/c/test_toa_opt.c checks the header's sizes and offsets against the
golden vectors, the validator table, set_ip_opt/del_ip_opt readback and the
option on the wire over loopback (CAP_NET_RAW: root), on the running kernel.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parent.parent


def test_c_wire_and_libipopt_checks_pass() -> None:
    if os.geteuid() != 0:
        pytest.fail("make -C kmod check needs root (set_ip_opt needs CAP_NET_RAW)")
    p = subprocess.run(["make", "-s", "-C", str(ROOT / "kmod"), "check"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = p.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    m = re.fullmatch(r"(\d+) passed, (\d+) failed", last)
    failures = [line for line in lines if line.startswith("not ok")]
    assert m is not None, (
        f"expected a final 'N passed, 0 failed' line from make -C kmod check, saw {last!r} "
        f"(exit {p.returncode}; stderr: {p.stderr.strip()[-500:]})"
    )
    passed, failed = int(m.group(1)), int(m.group(2))
    assert (failed, p.returncode) == (0, 0), (
        f"expected 0 failed and exit 0, saw {failed} failed, exit {p.returncode}: {failures}"
    )
    plan = next((line for line in lines if re.fullmatch(r"1\.\.\d+", line)), "")
    assert plan == f"1..{passed}" and passed > 0, (
        f"expected every planned check to pass (plan {plan!r}), saw {passed} passed"
    )
