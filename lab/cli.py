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
    checker = None
    if any(s.health for s in topo.services.values()):
        from lab import lbctl

        checker = lbctl.start_checker(lab)
    st = lab.status()
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(f"lab '{lab.name}' is up on the {st['engine']} engine ({topo.name})")
        _print_nodes(topo)
        if checker:
            print(f"health checks of the real servers: pid {checker[0]}, log {checker[1]}")
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
        from lab.engines import ENGINES, LabRecord, engine_class, stop_helpers

        removed: list[str] = []
        for record in LabRecord.all():
            stop_helpers(record)
            engine_class(record.engine)(record).down()
            removed.append(f"lab {record.name}")
        for kind in ENGINES:
            try:
                removed += engine_class(kind).cleanup_leftovers()
            except LabError:
                continue
        for path in LabRecord.corrupt():
            path.unlink(missing_ok=True)
            removed.append(f"corrupt record {path.name}")
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


def cmd_capture(args: argparse.Namespace) -> int:
    import os

    from lab.capture import live

    node, _, ifname = args.where.partition(":")
    if args.write == "-" and sys.stdout.isatty():
        raise LabError("refusing to write a pcap to a terminal: pipe it (| tshark -r -) or use -w FILE")
    lab = _lab(args)
    if args.write == "-":
        out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    else:
        try:
            out = open(args.write, "wb", buffering=0)  # noqa: SIM115 (closed below)
        except OSError as e:
            raise LabError(f"cannot write {args.write}: {e.strerror}") from None
    with out:
        try:
            code = live(lab, node, ifname or None, out, count=args.count, bpf_filter=args.filter.split())
        except KeyboardInterrupt:
            code = 0
    return 0 if code in (0, 130, -2) else code


def cmd_graph(args: argparse.Namespace) -> int:
    from lab import graph, topology

    if Path(args.source).is_file() or args.source.endswith((".yaml", ".yml")):
        topo = topology.load(args.source)
    else:
        topo = _lab(argparse.Namespace(lab=args.source)).topology
        if topo is None:
            raise LabError(f"lab '{args.source}' was built from Python: graph its topology file instead")
    data = graph.render(topo, args.format)
    if args.output:
        try:
            Path(args.output).write_bytes(data)
        except OSError as e:
            raise LabError(f"cannot write {args.output}: {e.strerror}") from None
        return 0
    if args.format in ("png",) and sys.stdout.isatty():
        raise LabError("refusing to write a PNG to a terminal: use -o FILE")
    sys.stdout.buffer.write(data)
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from lab import impair

    lab = _lab(args)
    if args.action == "show":
        rows = impair.show_links(lab)
        if getattr(args, "json", False):
            print(json.dumps([r.__dict__ for r in rows], indent=1))
        else:
            for r in rows:
                print(f"{r.node + ':' + r.ifname:<16} mtu {r.mtu:<6} {r.qdisc}")
        return 0
    if not args.words:
        more = " KEY=VALUE..." if args.action == "set" else ""
        raise LabError(f"usage: toalab link {args.action} NODE:IF{more}")
    where, rest = args.words[0], args.words[1:]
    if args.action == "reset":
        if rest:
            raise LabError("toalab link reset NODE:IF takes nothing more")
        lines = impair.reset_link(lab, where)
    else:
        kv: dict[str, object] = {}
        for w in rest:
            k, sep, v = w.partition("=")
            if not sep:
                raise LabError(f"'{w}': KEY=VALUE (delay=20ms jitter=5ms loss=1% rate=100mbit mtu=1400)")
            kv[k] = v
        if not kv:
            raise LabError("nothing to set: delay=20ms jitter=5ms loss=1% rate=100mbit mtu=1400")
        lines = impair.set_link(lab, where, impair.Impairment.parse(kv))
    print("\n".join(lines))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from lab.inspect import inspect, table

    doc = inspect(_lab(args))
    print(json.dumps(doc, indent=1) if args.json else table(doc))
    return 0


def cmd_lb(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lab.lbctl import HealthChecker, LbControl, apply_set, parse_set, table

    ctl = LbControl(_lab(args))
    if args.action == "show":
        views = ctl.services()
        print(json.dumps([asdict(v) for v in views], indent=1) if args.json else table(views))
        return 0
    if args.action == "set":
        service, server, kv = parse_set(args.words)
        apply_set(ctl, service, server, kv)
        print(table([v for v in ctl.services() if v.name == service]))
        return 0
    checker = HealthChecker(ctl)
    rounds = 0
    while True:
        for line in checker.round():
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
        rounds += 1
        if args.rounds and rounds >= args.rounds:
            return 0
        time.sleep(checker.interval())



WIRESHARK_LUA = Path(__file__).resolve().parent.parent / "wireshark" / "toa.lua"


def cmd_wireshark(args: argparse.Namespace) -> int:
    """The dissector: its path, or installed as a personal plugin of Wireshark/tshark."""
    if not WIRESHARK_LUA.is_file():
        raise LabError(f"{WIRESHARK_LUA} is missing from this tree")
    if args.action == "path":
        print(WIRESHARK_LUA)
        return 0
    dest = Path(args.dir).expanduser() if args.dir else Path.home() / ".local/lib/wireshark/plugins"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / WIRESHARK_LUA.name).write_bytes(WIRESHARK_LUA.read_bytes())
    print(f"installed {dest / WIRESHARK_LUA.name}: Wireshark and tshark now decode the option "
          f"(filter: toa, toa.cip == ..., toa.cip6 == ..., toa.malformed)")  # fmt: skip
    return 0


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

    s = sub.add_parser("inspect", help="a lab's interfaces, addresses, XDP programs, qdiscs, modules, counts")
    s.add_argument("lab", nargs="?", help="lab name (default: the only lab up)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)

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

    s = sub.add_parser("capture", help="a live pcap of a node's interface (| tshark -r -)",
                       description="Stream a pcap of NODE:IF (default: the node's first link) to FILE or "
                       "stdout (-w -) until Ctrl-C or -c packets, filtered by -f.  With the "
                       "dissector: toalab capture rs1:eth0 | "
                       "tshark -X lua_script:$(toalab wireshark path) -r - -Y toa")  # fmt: skip
    s.add_argument("--lab", "-L", help="lab name (default: the only lab up)")
    s.add_argument("where", metavar="NODE[:IF]")
    s.add_argument("-w", dest="write", default="-", metavar="FILE", help="'-': stdout (the default)")
    s.add_argument("-c", dest="count", type=int, default=0, help="stop after this many packets")
    s.add_argument("-f", dest="filter", default="", metavar="EXPR", help="a tcpdump filter: -f 'tcp port 80'")
    s.set_defaults(func=cmd_capture)

    s = sub.add_parser("graph", help="a topology as a picture: toalab graph FILE|LAB --format png -o t.png")
    s.add_argument("source", metavar="FILE|LAB", help="a topology file, or the name of a running lab")
    s.add_argument("--format", "-T", default="mermaid", choices=("mermaid", "dot", "svg", "png"))
    s.add_argument("-o", dest="output", metavar="FILE", help="write here (default: stdout)")
    s.set_defaults(func=cmd_graph)

    s = sub.add_parser("link", help="impair a link end: set rs1:eth0 delay=20ms loss=1%% | show | reset")
    acts = s.add_subparsers(dest="action", metavar="ACTION")
    acts.required = True
    a = acts.add_parser("set", help="NODE:IF KEY=VALUE...: delay, jitter, loss, rate (netem/tbf on what the "
                        "end sends), mtu (the LB's MSS clamp follows)")  # fmt: skip
    a.add_argument("words", nargs="+", metavar="ARG")
    a = acts.add_parser("reset", help="NODE:IF: no impairment, the topology's MTU")
    a.add_argument("words", nargs="+", metavar="ARG")
    a = acts.add_parser("show", help="every link end's qdisc and MTU")
    a.add_argument("--json", action="store_true")
    for a in acts.choices.values():
        a.add_argument("--lab", "-L", help="lab name (default: the only lab up)")
    s.set_defaults(func=cmd_link)

    s = sub.add_parser("lb", help="the LB of a running lab: show, set, health")
    acts = s.add_subparsers(dest="action", metavar="ACTION")
    acts.required = True
    a = acts.add_parser("show", help="services, real servers, weights, state, flow counts")
    a.add_argument("--json", action="store_true")
    a = acts.add_parser("set", help="SERVICE [SERVER] KEY=VALUE...",
                        description="service: scheduler=maglev|sh|rr|wrr, persistence=SECONDS (0: off); "
                        "server: weight=0..65535, state=up|down")  # fmt: skip
    a.add_argument("words", nargs="+", metavar="ARG")
    a = acts.add_parser("health", help="probe the real servers, mark them down/up (until Ctrl-C)")
    a.add_argument("--rounds", type=int, default=0, help="stop after N probe rounds")
    for a in acts.choices.values():
        a.add_argument("--lab", "-L", help="lab name (default: the only lab up)")
    s.set_defaults(func=cmd_lb)

    s = sub.add_parser("wireshark", help="the option's Wireshark dissector: install it, or print its path",
                       description="install: copy wireshark/toa.lua to Wireshark's personal plugin folder "
                       "(default ~/.local/lib/wireshark/plugins); path: print where it is, for "
                       "tshark -X lua_script:PATH")  # fmt: skip
    s.add_argument("action", choices=("install", "path"))
    s.add_argument("--dir", help="install: this plugin folder instead")
    s.set_defaults(func=cmd_wireshark)

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
