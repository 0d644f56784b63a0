"""toalab's pytest plugin (entry point ``pytest11: toalab``): a suite outside this
repository gets a guest, labs and scenarios as fixtures.

    def test_my_rs(toalab_lab):
        lab = toalab_lab("fullnat-4to4", engine="vm")      # up now, down after the test
        lab.exec("client", ["curl", "-s", "http://203.0.113.10/"]).check()

    def test_nat64_udp(toalab_scenario):
        res = toalab_scenario("fullnat-6to4-udp")           # a scenarios/scenarios.toml id
        assert res.verdict == "pass", res.reason

    @pytest.mark.parametrize("sid", scenario_ids("vm"))   # test ids are the scenario ids
    def test_every_scenario(toalab_scenario, sid): ...

Fixtures: ``toalab_guest`` (one booted guest per session, so under
pytest-xdist one per worker; modules and BPF objects provided),
``toalab_artifacts`` (the modules and example programs built for its kernel),
``toalab_lab`` (a factory: a lab on an engine, taken down at teardown),
``toalab_runner`` / ``toalab_scenario`` (scenarios on the session's engine; a
topology stays up while consecutive scenarios use it).  Markers: host, bpf,
vm.  Options: --toalab-engine, --toalab-kernel (also $TOALAB_KERNEL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

MARKERS = {
    "host": "needs root and network namespaces on the running kernel",
    "bpf": "loads BPF programs into the running kernel",
    "vm": "boots a qemu guest",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("toalab")
    g.addoption(
        "--toalab-engine",
        default="vm",
        choices=("host", "vm"),
        help="engine of toalab_scenario / toalab_runner (default vm)",
    )
    g.addoption(
        "--toalab-kernel",
        default=os.environ.get("TOALAB_KERNEL"),
        help="the guest's kernel: series[-flavour] or release (default: images/kernel.toml's)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def scenario_ids(engine: str | None = None) -> list[str]:
    """Every scenario id, those of one topology together (so a parametrised test
    brings each topology up once); with `engine`, only those that fit it."""
    from lab import scenario

    scs = scenario.by_topology(list(scenario.load().values()))
    if engine == "host":
        scs = [sc for sc in scs if not sc.modules]
    return [sc.id for sc in scs]


def _worker(config: pytest.Config) -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("toalab's labs need root (network namespaces; the guest's 9p export of /)")


@pytest.fixture(scope="session")
def toalab_kernel(pytestconfig: pytest.Config) -> str | None:
    return pytestconfig.getoption("--toalab-kernel")


@pytest.fixture(scope="session")
def toalab_artifacts(toalab_kernel: str | None) -> Any:
    """kmod.Artifacts: toa.ko, uoa.ko and the static example programs for the guest's kernel."""
    from lab import kmod

    return kmod.build(toalab_kernel)


@pytest.fixture(scope="session")
def toalab_guest(
    toalab_kernel: str | None, toalab_artifacts: Any, pytestconfig: pytest.Config
) -> Iterator[Any]:
    """One booted guest for the session (per xdist worker), the modules and BPF
    objects provided in it, none loaded."""
    from lab import bpf, lb
    from lab.vm.session import VMSession

    _need_root()
    name = f"pt-{_worker(pytestconfig)}-{os.getpid()}"
    with VMSession(name, kernel=toalab_kernel, progress=None) as vm:
        vm.provide([*toalab_artifacts.files(), bpf.obj_path(lb.BPF_OBJ), bpf.obj_path("xdp_pass")])
        yield vm


@pytest.fixture
def toalab_lab(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """lab = toalab_lab(TOPOLOGY, engine="host"|"vm"): TOPOLOGY a name of
    topologies/ or a path; the lab is taken down when the test ends."""
    from lab import topology
    from lab.net import Lab

    _need_root()
    labs: list[Any] = []

    def make(topo: str | Path, *, engine: str = "host", name: str | None = None) -> Any:
        path = Path(topo)
        if not path.suffix:
            path = Path(__file__).resolve().parent.parent / "topologies" / f"{topo}.yaml"
        t = topology.load(path)
        n = name or f"pl{len(labs)}-{os.getpid() % 100000}"
        guest = request.getfixturevalue("toalab_guest") if engine == "vm" else None
        lab = guest.lab(t, name=n) if guest is not None else Lab.up(t, name=n)
        labs.append(lab)
        return lab

    yield make
    for lab in reversed(labs):
        lab.down()


@pytest.fixture(scope="session")
def toalab_runner(
    request: pytest.FixtureRequest, pytestconfig: pytest.Config, toalab_kernel: str | None
) -> Iterator[Any]:
    """A scenario.Runner on --toalab-engine; on the VM engine it borrows toalab_guest
    and writes its results (result.json, pcaps) into the guest's results directory."""
    from lab import scenario

    _need_root()
    engine = pytestconfig.getoption("--toalab-engine")
    kw: dict[str, Any] = {}
    if engine == "vm":
        vm = request.getfixturevalue("toalab_guest")
        kw = {
            "vm": vm,
            "artifacts": request.getfixturevalue("toalab_artifacts"),
            "out": Path(vm.results) / "scenarios",
        }
    else:
        kw = {"out": Path(str(pytestconfig.rootpath)) / "build" / "runs" / f"pytest-{_worker(pytestconfig)}"}
    with scenario.Runner(engine, kernel=toalab_kernel, **kw) as runner:
        yield runner


@pytest.fixture
def toalab_scenario(toalab_runner: Any) -> Callable[[str], Any]:
    """run = toalab_scenario(ID) -> scenario.Result; a skip when the engine cannot run it."""
    from lab import scenario

    def run(sid: str) -> Any:
        (sc,) = scenario.select([sid])
        res = toalab_runner.run_one(sc)
        if res.verdict == "skip":
            pytest.skip(res.reason)
        return res

    return run
