"""The per-kernel table of `make test-kernels`, from the JSON lines of tests/conftest.py's
--kernel-report: one row per kernel, one column per suite, each cell "passed N/N",
"FAILED n of N: first failure" or "unsupported: reason".

    python scripts/kernel_table.py REPORT [--readme kmod/README.md]

With --readme, the table replaces the one between the kernel-table markers there.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.vm import kernels  # noqa: E402

SUITES = ("module suite", "BPF suite", "whole path")
BEGIN, END = "<!-- kernel-table: begin (make test-kernels) -->", "<!-- kernel-table: end -->"


def cell(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "not run"
    calls = [r for r in rows if r["when"] == "call"]
    failed = [r for r in rows if r["outcome"] == "failed"]
    skipped = [r for r in rows if r["outcome"] == "skipped"]
    if failed:
        first = failed[0]
        return f"FAILED {len(failed)} of {len(calls) or len(rows)}: {first['test']}: {first['reason']}"
    unsup = next((r["reason"] for r in skipped if r["reason"].startswith("unsupported")), "")
    if unsup:
        return unsup.replace("|", "/")
    passed = [r for r in calls if r["outcome"] == "passed"]
    out = f"passed {len(passed)}/{len(passed) + len(skipped)}"
    return out + (f" ({len(skipped)} skipped)" if skipped else "")


def table(lines: list[dict[str, str]]) -> str:
    by: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for ln in lines:
        if ln["kernel"] not in order:
            order.append(ln["kernel"])
        by[ln["kernel"]][ln["suite"]].append(ln)
    out = ["| kernel | flavour | release (Debian version) | " + " | ".join(SUITES) + " |",
           "|---|---|---|" + "---|" * len(SUITES)]  # fmt: skip
    for k in order:
        req = kernels.parse_request(k)
        try:
            kern = kernels.resolve(k)
            rel = f"{kern.release} ({kern.version})"
        except Exception as e:  # the table still says what ran
            rel = f"? ({e})"
        cells = [cell(by[k][s]) for s in SUITES]
        out.append(f"| {req.series} | {req.flavour} | {rel} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--readme", type=Path)
    args = ap.parse_args()
    lines = [json.loads(x) for x in args.report.read_text().splitlines() if x.strip()]
    text = table(lines)
    print(text, end="")
    if args.readme:
        doc = args.readme.read_text()
        if BEGIN not in doc or END not in doc:
            print(f"{args.readme}: no kernel-table markers; table not written", file=sys.stderr)
            return 1
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        args.readme.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    failed = any(ln["outcome"] == "failed" for ln in lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
