"""The toalab command line."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lab import __version__
from lab.errors import LabError

# Command modules owned by other parts of the lab; each has register(subparsers).
COMMAND_MODULES = ("lab.vm.cli", "lab.gwprobe")


def _lab(args: argparse.Namespace):  # -> lab.net.Lab, imported lazily for a fast --help
    from lab.net import Lab

    return Lab.attach(getattr(args, "lab", None))


def cmd_up(args: argparse.Namespace) -> int:
    from lab import topology
    from lab.net import Lab

    topo = topology.load(args.topology)
    lab = Lab.up(topo, name=args.name, engine=args.engine, **_engine_opts(args))
    st = lab.status()
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(f"lab '{lab.name}' is up on the {st['engine']} engine ({topo.name})")
        _print_nodes(topo)
        print(f"next: toalab exec NODE -- CMD | toalab shell NODE | toalab down {lab.name}")
    return 0


def _engine_opts(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k in ("accel", "kernel", "flavour") if (v := getattr(args, k, None)) is not None}


def _print_nodes(topo) -> None:  # topo: lab.topology.Topology
    width = max(len(n) for n in topo.nodes)
    for node in topo.nodes.values():
        addrs = " ".join(f"{ifn}={a.with_prefixlen}" for ifn, lst in node.interfaces.items() for a in lst)
        print(f"  {node.name:<{width}}  {node.role:<7} {addrs}")


def cmd_down(args: argparse.Namespace) -> int:
    if args.all:
        from lab.engines import ENGINES, LabRecord, engine_class

        removed: list[str] = []
        for record in LabRecord.all():
            engine_class(record.engine)(record).down()
            removed.append(f"lab {record.name}")
        for kind in ENGINES:
            try:
                removed += engine_class(kind).cleanup_leftovers()
            except LabError:
                continue
        print("removed: " + (", ".join(removed) if removed else "nothing"))
        return 0
    from lab.net import Lab

    lab = Lab.attach(args.lab)
    lab.down()
    print(f"lab '{lab.name}' is down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from lab.engines import LabRecord, engine_class

    records = [LabRecord.load(args.lab)] if args.lab else LabRecord.all()
    states = [engine_class(r.engine)(r).status() for r in records]
    if args.json:
        print(json.dumps(states, indent=1))
        return 0
    if not states:
        print("no lab is up")
    for st in states:
        print(f"{st['name']}: {st['state']} on {st['engine']} ({st['topology']})")
        vm = st.get("vm")
        if isinstance(vm, dict):
            details = ", ".join(f"{k} {vm[k]}" for k in ("release", "accel", "console_log") if vm.get(k))
            print(f"  guest: {details}")
        for node, info in st["nodes"].items():
            print(f"  {node:<10} {info['role']:<7} {info['netns']}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("no command given (use: toalab exec NODE -- CMD ...)")
    return _lab(args).engine.run_interactive(args.node, argv)


def cmd_shell(args: argparse.Namespace) -> int:
    return _lab(args).engine.shell(args.node)


def cmd_decode(args: argparse.Namespace) -> int:
    from lab.decode import decode

    n = 0
    for d in decode(args.pcap):
        print(d)
        n += 1
    if n == 0:
        print(f"{args.pcap}: no packet carries the address option")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from lab import scenario

    table = scenario.load()
    width = max(len(i) for i in table)
    for sc in table.values():
        print(f"{sc.id:<{width}}  {sc.description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lab import scenario

    scs = scenario.select(args.ids) if args.command == "run" else list(scenario.load().values())
    engine = args.engine or ("vm" if any(sc.modules for sc in scs) else "host")
    t0 = time.monotonic()
    runner = scenario.Runner(engine, kernel=args.kernel, out=args.out,
                             progress=lambda m: print(f"[{engine}] {m}", file=sys.stderr))  # fmt: skip
    if args.command == "matrix":
        fit = [sc for sc in scs if not runner.fits(sc)]
        print(f"{len(fit)} of {len(scs)} scenarios fit the {engine} engine; results in {runner.out}")
    print(scenario.table_header())

    def row(res: scenario.Result) -> None:
        print(scenario.table_row(res), flush=True)

    with runner:
        results = runner.run(scs, on_result=row)
    wall = time.monotonic() - t0
    counts = {v: sum(r.verdict == v for r in results) for v in ("pass", "fail", "skip")}
    boot = runner.timings.get("boot_s")
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped in {wall:.1f} s"
          + (f" (guest boot {boot:.1f} s)" if boot else "") + f"; results in {runner.out}")  # fmt: skip
    summary = {"engine": engine, "kernel": runner.kernel_info, "wall_s": round(wall, 2),
               "timings": runner.timings, "results": [r.to_json() for r in results]}  # fmt: skip
    (runner.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if args.junit:
        Path(args.junit).write_text(scenario.junit(results))
    return 1 if counts["fail"] else 0


def _scenario_opts(s: argparse.ArgumentParser) -> None:
    s.add_argument("--engine", choices=("host", "vm"),
                   help="default: vm when a scenario needs the modules, else host")  # fmt: skip
    s.add_argument("--kernel", metavar="K", help="vm engine: kernel series[-flavour] or release")
    s.add_argument("--out", metavar="RUN_DIR", type=Path, help="default: build/runs/<date-time>")
    s.add_argument("--json", metavar="FILE", help="write every result as JSON")
    s.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    s.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="toalab",
        description="Network emulation lab for the TOA/UOA address option and XDP data paths.",
    )
    p.add_argument("--version", action="version", version=f"toalab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("up", help="build a topology")
    s.add_argument("topology", help="topology file, e.g. topologies/fullnat-4to4.yaml")
    s.add_argument("--name", help="lab name (default: the topology's name)")
    s.add_argument("--engine", default="host", help="host (default) or vm")
    s.add_argument("--accel", choices=("auto", "kvm", "tcg"), help="vm engine: accelerator")
    s.add_argument(
        "--kernel", metavar="K", help="vm engine: kernel series[-flavour] or release (toalab vm kernels)"
    )
    s.add_argument("--flavour", choices=("generic", "cloud", "rt"), help="vm engine: kernel flavour")
    s.add_argument("--json", action="store_true", help="print the lab's status as JSON")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", help="remove a lab")
    s.add_argument("lab", nargs="?", help="lab name (default: the only lab up)")
    s.add_argument("--all", action="store_true", help="remove every lab and every toalab leftover")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser("status", help="show labs and their nodes")
    s.add_argument("lab", nargs="?")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("exec", help="run a command on a node: toalab exec NODE -- CMD")
    s.add_argument("--lab", "-L", help="lab name (default: the only lab up)")
    s.add_argument("node")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_exec)

    s = sub.add_parser("shell", help="interactive shell on a node")
    s.add_argument("--lab", "-L")
    s.add_argument("node")
    s.set_defaults(func=cmd_shell)

    s = sub.add_parser("list", help="the scenarios, with a line each")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("run", help="run scenarios by id: toalab run fullnat-6to4-udp ...")
    s.add_argument("ids", nargs="+", metavar="ID")
    _scenario_opts(s)

    s = sub.add_parser("matrix", help="every scenario that fits the engine (one guest boot)")
    _scenario_opts(s)

    s = sub.add_parser("decode", help="print the address option of every packet in a pcap")
    s.add_argument("pcap")
    s.set_defaults(func=cmd_decode)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # that part of the lab is not installed in this tree
            raise
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabError as e:
        for line in str(e).splitlines():
            print(f"toalab: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("toalab: interrupted; everything this command built was removed", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `toalab decode F | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
