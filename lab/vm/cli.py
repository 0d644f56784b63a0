"""`toalab vm ...`: build the image, run a command in a fresh guest, inspect VMs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.vm.config import build_dir
from lab.vm.kernels import config as kernel_config

# the rest of lab.vm is imported by the commands themselves: `toalab --help` stays fast
ACCELS = ("auto", "kvm", "tcg")


def register(subparsers: Any) -> None:
    vm = subparsers.add_parser("vm", help="the VM engine: build its image, run commands in a guest")
    sub = vm.add_subparsers(dest="vm_command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="boot a guest, run CMD in it, print its output, exit with its code")
    _vm_options(p)
    p.add_argument("--netns", help="run CMD inside this network namespace of the guest")
    p.add_argument("--timeout", type=float, help="kill CMD after this many seconds")
    p.add_argument("--times", action="store_true", help="print boot timings to stderr")
    p.add_argument(
        "-i", "--interactive", action="store_true",
        help="attach this terminal (stdin, and a pty in the guest when it is a tty)",
    )  # fmt: skip
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("build", help="fetch and build the kernel, agent and initramfs (cached)")
    _kernel_options(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "kernels", help="the kernels the mirror offers per series and flavour, and what is built here"
    )
    p.add_argument("--all", action="store_true", help="also list every build the mirror offers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("accel", help="show which accelerator a guest would use, and why")
    _kernel_options(p)
    p.add_argument("--reprobe", action="store_true", help="forget the cached verdict and probe again")
    p.set_defaults(func=cmd_accel)

    p = sub.add_parser("ps", help="list the running VMs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("stop", help="stop a running VM by name")
    p.add_argument("name")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("log", help="print a VM's console log (running or ended)")
    p.add_argument("name")
    p.set_defaults(func=cmd_log)


def _kernel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kernel", metavar="K",
        help="series[-flavour] (6.1, 6.12-rt) or an exact release; default: $TOALAB_KERNEL or "
        f"{kernel_config().default} (see: toalab vm kernels)",
    )  # fmt: skip
    p.add_argument(
        "--flavour", choices=sorted(kernel_config().flavours), help="kernel flavour (default: generic)"
    )


def _vm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accel", choices=ACCELS, default="auto", help="default: auto")
    _kernel_options(p)
    p.add_argument("--memory", type=int, default=1024, metavar="MB")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--boot-timeout", type=float, metavar="S")


def _cmd(argv: list[str]) -> list[str]:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("no command given (use: toalab vm run -- CMD ...)")
    return argv


def cmd_run(args: argparse.Namespace) -> int:
    from lab.vm.session import VMSession

    cmd = _cmd(args.cmd)
    out, err = sys.stdout.buffer, sys.stderr.buffer

    def to(f: Any) -> Any:
        def cb(b: bytes) -> None:
            f.write(b)
            f.flush()

        return cb

    session = VMSession(
        kernel=args.kernel,
        flavour=args.flavour,
        accel=args.accel,
        memory_mb=args.memory,
        cpus=args.cpus,
        boot_timeout=args.boot_timeout,
    )
    # SIGTERM/SIGHUP like Ctrl-C: the finally below stops the VM
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _raise_interrupt)
    try:
        session.start()
        if args.times:
            t = session.timings
            print(
                f"toalab vm: {session.release} under {session.accel}: ready in "
                f"{t['boot_to_ready_s']:.2f} s (image check {t['image_check_s']:.2f} s)",
                file=sys.stderr,
            )
        if args.interactive:
            return _shell_code(session.interactive(cmd, netns=args.netns))
        res = session.run(cmd, netns=args.netns, timeout=args.timeout, on_stdout=to(out), on_stderr=to(err))
        return _shell_code(res.returncode)
    finally:
        session.close()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _shell_code(code: int) -> int:
    return 128 - code if code < 0 else code


def cmd_build(args: argparse.Namespace) -> int:
    from lab.vm.image import ImageBuilder

    img = ImageBuilder(args.kernel, flavour=args.flavour).build()
    print(f"kernel   {img.kernel.describe()}")
    print(f"vmlinux  {img.vmlinux}")
    print(f"initrd   {img.initramfs}")
    print(f"modules  {img.modules}")
    print(f"headers  {img.headers}")
    print(f"agent    {img.agent}")
    return 0


def cmd_accel(args: argparse.Namespace) -> int:
    from lab.vm import accel as accel_mod
    from lab.vm.image import ImageBuilder

    img = ImageBuilder(args.kernel, flavour=args.flavour).build()
    cache = build_dir() / "accel.json"
    if args.reprobe:
        cache.unlink(missing_ok=True)
    why = accel_mod.kvm_usable_device()
    verdict = accel_mod.resolve("auto", img, build_dir(), log=build_dir() / "kvm-probe.log")
    detail = why or accel_mod.cached_detail(img, build_dir())
    print(f"{verdict}" + (f" ({detail})" if detail else ""))
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    from lab.vm import kernels

    cfg = kernels.config()
    if not any(kernels.APT_LISTS.glob("*_Packages*")):
        kernels.apt_update(lambda m: print(f"toalab vm: {m}", file=sys.stderr))
    mirror = kernels.mirror_builds(cfg)
    local = kernels.local_kernels()
    rows = kernels.offers(mirror, local, cfg)
    if args.json:
        print(json.dumps({
            "default": cfg.default,
            "kernels": [{
                "kernel": f"{o.series}-{o.flavour}", "default": o.default,
                "newest": o.newest.to_json() if o.newest else None,
                "builds_on_mirror": o.builds, "built": list(o.built), "problems": list(o.problems),
            } for o in rows],
            "mirror": [{**b.kernel.to_json(), "problem": b.problem} for b in mirror] if args.all else None,
        }, indent=1))  # fmt: skip
        return 0
    print(f"{'KERNEL':<12} {'NEWEST ON THE MIRROR':<26} {'VERSION':<20} {'BUILDS':>6}  BUILT HERE")
    for o in rows:
        mark = " (default)" if o.default else ""
        newest = o.newest.release if o.newest else "-"
        version = o.newest.version if o.newest else "-"
        print(f"{o.series + '-' + o.flavour:<12} {newest:<26} {version:<20} {o.builds:>6}  "
              f"{', '.join(o.built) or '-'}{mark}")  # fmt: skip
        for p in o.problems if args.all else ():
            print(f"{'':<12} not usable: {p}")
    if args.all:
        print()
        for b in mirror:
            print(f"  {b.kernel.name:<12} {b.kernel.release:<26} {b.kernel.version:<20} {b.problem or 'ok'}")
    print(f"default: {cfg.default} (images/kernel.toml; override with --kernel or TOALAB_KERNEL)")
    return 0


def _running() -> list[dict[str, Any]]:
    from lab.vm.session import run_root, supervisor_alive

    root = run_root()
    if not root.is_dir():
        return []
    return [s for d in sorted(root.iterdir()) if (s := supervisor_alive(d))]


def cmd_ps(args: argparse.Namespace) -> int:
    vms = _running()
    if args.json:
        print(json.dumps(vms, indent=1))
        return 0
    for s in vms:
        owner = f"owner pid {s['owner_pid']}" if s.get("owner_pid") else "persistent"
        print(
            f"{s['name']:<24} {s['state']:<8} {s['accel']:<4} {s['release']:<18} "
            f"qemu pid {s['qemu_pid']}  {owner}"
        )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from lab.vm.session import rundir_for, supervisor_alive

    state = supervisor_alive(rundir_for(args.name))
    if state is None:
        raise LabError(f"no running VM named '{args.name}'")
    os.kill(state["supervisor_pid"], signal.SIGTERM)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from lab.vm.session import rundir_for

    log = Path(rundir_for(args.name)) / "console.log"
    try:
        sys.stdout.buffer.write(log.read_bytes())
    except FileNotFoundError:
        raise LabError(f"no console log for VM '{args.name}' ({log})") from None
    return 0


def main(argv: list[str]) -> int:
    """Stand-alone entry point: python -m lab.vm ..."""
    parser = argparse.ArgumentParser(prog="python -m lab.vm")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    args = parser.parse_args(["vm", *argv])
    try:
        return int(args.func(args) or 0)
    except LabError as e:
        print(f"toalab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("toalab: interrupted", file=sys.stderr)
        return 130
