"""Shared fixtures and the rule that an empty run is a failure."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import netns, topology
from lab.net import Lab

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "topologies"
_PORTS_NS_BEFORE = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "extended: make test-extended, not make test (CI runs both): the VM engine's failure "
        "modes and flavours, the module load/unload soak",
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kernels",
        default=os.environ.get("TOALAB_KERNELS", ""),
        help="VM kernels for the suites that run per kernel: a comma list of series[-flavour] or "
        "releases, 'all' (every series x flavour in images/kernel.toml) or 'other' (the module "
        "and BPF suites on kernel.toml's series besides the default).  Default: the default "
        "kernel.  Also $TOALAB_KERNELS.",
    )
    parser.addoption(
        "--kernel-report",
        default=os.environ.get("TOALAB_KERNEL_REPORT", ""),
        help="append one JSON line per per-kernel test outcome to this file (make test-kernels)",
    )


SUITES = {"test_kmod_vm": "module suite", "test_bpf_vm": "BPF suite", "test_scenarios": "whole path"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    path = item.config.getoption("--kernel-report")
    params = getattr(getattr(item, "callspec", None), "params", {})
    kernel = params.get("kernel") or params.get("path_kernel") or params.get("toalab_kernel")
    if not path or not kernel or not (rep.when == "call" or rep.outcome != "passed"):
        return
    reason = ""
    if rep.skipped and isinstance(rep.longrepr, tuple):
        reason = str(rep.longrepr[2]).removeprefix("Skipped: ")
    elif rep.failed:
        crash = getattr(rep.longrepr, "reprcrash", None)
        reason = str(crash.message if crash else rep.longrepr)
    line = {
        "kernel": kernel,
        "suite": SUITES.get(item.module.__name__ if item.module else "", item.nodeid.split("::")[0]),
        "test": item.name,
        "when": rep.when,
        "outcome": rep.outcome,
        "reason": reason.splitlines()[0][:300] if reason else "",
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def kernel_axis(config: pytest.Config, *, wide: bool) -> list[str]:
    """The kernels a per-kernel suite runs on (wide: the module and BPF suites)."""
    from lab.vm import kernels

    cfg = kernels.config()
    opt = str(config.getoption("--kernels") or "").strip()
    default = os.environ.get("TOALAB_KERNEL") or cfg.default
    if opt == "all":
        return [f"{s}-{f}" for s in cfg.series for f in cfg.flavours]
    if opt == "other":  # make test-extended: the series tested besides the default
        return [s for s in cfg.other if s != default] if wide else []
    if opt:
        return [k.strip() for k in opt.split(",") if k.strip()]
    # make test: the default kernel; the other series are make test-extended's (CI runs both)
    return [default]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # `kernel`: the module and BPF suites; `path_kernel`: the whole path (one guest per kernel);
    # `toalab_kernel`: the pytest plugin's guest (the scenarios), one per kernel for the session
    for name, wide, scope in (("kernel", True, "module"), ("path_kernel", False, "module"),
                              ("toalab_kernel", False, "session")):  # fmt: skip
        if name in metafunc.fixturenames:
            ks = kernel_axis(metafunc.config, wide=wide)
            metafunc.parametrize(name, ks, ids=ks, scope=scope)


def unsupported(kernel: str, err: Exception) -> None:
    """A module that refused to load: the kernel is unsupported (skip, with the reason) unless
    it is the generic flavour of a series we test on, where it must load (fail)."""
    from lab.vm import kernels

    req = kernels.parse_request(kernel)
    if req.flavour == "generic":
        pytest.fail(f"{kernel} is a supported kernel and the module refused it: {err}")
    pytest.skip(f"unsupported on {kernel}: {err}")


def pytest_sessionstart(session: pytest.Session) -> None:
    from lab.bpf import PORTS_NETNS

    session.config.stash[_PORTS_NS_BEFORE] = netns.exists(PORTS_NETNS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # CI must never pass on a run that collected nothing.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # the namespace xdp_test_run --ports keeps between runs: gone if this run made it
    if not session.config.stash.get(_PORTS_NS_BEFORE, True):
        from lab.bpf import PORTS_NETNS

        netns.remove(PORTS_NETNS)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces); run the suite as root")


@pytest.fixture
def lab_name(request: pytest.FixtureRequest) -> str:
    """A lab name unique to this test and process, so parallel runs never collide."""
    return f"t{os.getpid() % 100000}-{zlib.crc32(request.node.nodeid.encode()) % 100000}"


@pytest.fixture
def fullnat4(lab_name: str) -> Iterator[Lab]:
    needs_root()
    with Lab.up(topology.load(TOPOLOGIES / "fullnat-4to4.yaml"), name=lab_name) as lab:
        yield lab
    assert not netns.listing(f"toalab-{lab_name}-")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def listeners(lab: Lab, nodes: tuple[str, ...] = ("rs1", "rs2"), port: int = 8080) -> list[Any]:
    """nc listening on `port` of each node, returned once the lb node reaches every one."""
    import time

    jobs = [lab.spawn(n, ["nc", "-l", "-k", str(port)]) for n in nodes]
    assert lab.topology is not None
    for n in nodes:
        rip = str(lab.topology.node(n).address(4))
        deadline = time.monotonic() + 30
        while lab.exec("lb", ["nc", "-z", "-w", "1", rip, str(port)]).returncode != 0:
            assert time.monotonic() < deadline, f"nobody listens on {n} {rip}:{port}"
            time.sleep(0.05)
    return jobs
