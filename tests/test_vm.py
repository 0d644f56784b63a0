"""The VM engine, for real: boot the pinned kernel under qemu and use it.

One guest (module fixture) serves most tests; the tests about how a guest
ends (panic, hang, boot timeout, Ctrl-C, owner killed) each boot their own.
Under TCG a boot is ~3-5 s; the module takes well under two minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import topology
from lab.engines.base import LabRecord
from lab.errors import LabError
from lab.net import Lab
from lab.vm import accel, kernels
from lab.vm.client import VMError
from lab.vm.config import build_dir
from lab.vm.image import ImageBuilder
from lab.vm.session import VMSession, supervisor_alive

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parent.parent
FULLNAT4 = ROOT / "topologies" / "fullnat-4to4.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(") ")[1][0] != "Z"


def _wait_dead(pid: int | None, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@pytest.fixture(scope="module")
def vm() -> Iterator[VMSession]:
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root (9p export of /, namespaces in the guest)")
    with VMSession(progress=None) as session:
        yield session
    assert _wait_dead(session.info.get("qemu_pid")), "qemu outlived its session"


# -- the guest and the control channel ------------------------------------------------------
def test_guest_runs_the_resolved_kernel(vm: VMSession) -> None:
    release = kernels.resolve().release
    assert vm.release == release and vm.kernel_build.release == release
    recorded = json.loads((vm.results / "kernel.json").read_text())
    assert (recorded["release"], recorded["version"]) == (release, vm.kernel_build.version)
    r = vm.run(["uname", "-r"])
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, release, "")
    # the host's userland, read-only, with the pinned kernel's modules on /lib/modules
    assert vm.run(["test", "-d", f"/lib/modules/{release}/kernel"]).returncode == 0
    r = vm.run(["touch", "/usr/should-fail"])
    assert r.returncode != 0 and "Read-only" in r.stderr


def test_exit_codes_and_separate_streams(vm: VMSession) -> None:
    r = vm.sh("echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = vm.sh("kill -TERM $$")
    assert r.returncode == -signal.SIGTERM
    r = vm.run(["/no/such/program"])
    assert r.returncode == 127 and "cannot run" in r.stderr


def test_stdin_and_large_output(vm: VMSession) -> None:
    assert vm.run(["cat"], input="abc\x00def").stdout == "abc\x00def"
    vm.sh("head -c 3000000 /dev/urandom > /tmp/blob", check=True)
    digest = vm.run(["sha256sum", "/tmp/blob"], check=True).stdout.split()[0]
    job = vm.spawn(["cat", "/tmp/blob"])
    assert job.wait(30) == 0
    assert len(job.stdout) == 3000000
    assert hashlib.sha256(bytes(job.stdout)).hexdigest() == digest


def test_concurrent_jobs_stream_and_can_be_killed(vm: VMSession) -> None:
    chunks: list[bytes] = []
    ticker = vm.spawn(["sh", "-c", "for i in 1 2 3; do echo tick$i; sleep 0.3; done"],
                      on_stdout=chunks.append)  # fmt: skip
    sleeper = vm.spawn(["sleep", "100"])
    quick = vm.run(["echo", "meanwhile"])
    assert quick.stdout == "meanwhile\n"
    assert sleeper.running
    assert ticker.wait(20) == 0
    assert b"".join(chunks) == b"tick1\ntick2\ntick3\n"
    assert len(chunks) >= 2, "output arrived in one piece: not streamed"
    sleeper.terminate()
    assert sleeper.returncode == -signal.SIGTERM


def test_timeout_kills_the_command(vm: VMSession) -> None:
    t0 = time.monotonic()
    with pytest.raises(LabError, match=r"timed out after 0\.5 s"):
        vm.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert vm.run(["sh", "-c", "pgrep -x sleep || true"]).stdout == ""


def test_commands_in_a_named_netns(vm: VMSession) -> None:
    vm.sh("ip netns add t-ns && ip -n t-ns link add d0 type dummy", check=True)
    try:
        r = vm.run(["ip", "-br", "link"], netns="t-ns", check=True)
        assert sorted(line.split()[0] for line in r.stdout.splitlines()) == ["d0", "lo"]
        # /sys shows the namespace's devices, as under `ip netns exec`
        assert vm.run(["ls", "/sys/class/net"], netns="t-ns").stdout.split() == ["d0", "lo"]
        r = vm.run(["true"], netns="no-such-ns")
        assert r.returncode == 126 and "no network namespace 'no-such-ns'" in r.stderr
    finally:
        vm.run(["ip", "netns", "del", "t-ns"])


def test_module_autoload_and_modprobe(vm: VMSession) -> None:
    vm.sh("ip link add vxt type vxlan id 42 dstport 4789 && ip link del vxt", check=True)
    vm.run(["modprobe", "bridge"], check=True)
    mods = vm.run(["cat", "/proc/modules"]).stdout
    assert "vxlan " in mods and "bridge " in mods


def test_results_directory_is_shared_and_writable(vm: VMSession) -> None:
    target = vm.results / "from-guest.txt"
    target.unlink(missing_ok=True)
    vm.sh(f"uname -r > {target}", check=True)
    assert target.read_text().strip() == vm.release
    pcap = vm.results / "lo.pcap"
    vm.sh(
        f"tcpdump -q -i lo -w {pcap} -c 2 icmp 2>/dev/null & sleep 0.5; "
        "ping -c 2 -i 0.2 127.0.0.1 >/dev/null; wait",
        check=True,
        timeout=30,
    )
    assert pcap.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")


def test_pty_job(vm: VMSession) -> None:
    job = vm.spawn(["sh", "-c", "tty; stty size"], pty=True, stdin=True)
    job.resize(33, 120)
    assert job.wait(10) == 0
    out = job.stdout.decode()
    assert "/dev/pts/" in out


def test_second_client_and_status(vm: VMSession) -> None:
    other = VMSession.attach(vm.name)
    try:
        assert other.run(["echo", "two"]).stdout == "two\n"
        st = other.status()
        assert st["state"] == "ready" and st["clients"] >= 2 and st["accel"] == vm.accel
    finally:
        other.close()  # not the owner: the guest stays up
    assert vm.run(["true"]).returncode == 0


def test_fullnat_lab_in_a_shared_guest(vm: VMSession, lab_name: str) -> None:
    topo = topology.load(FULLNAT4)
    with Lab.up(topo, name=lab_name, engine="vm", vm=vm.name) as lab:
        assert lab.status()["vm"]["name"] == vm.name
        r = lab.exec("client", ["ping", "-c1", "-W5", "192.0.2.11"], timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        job = lab.spawn("rs1", ["sleep", "60"])
        assert job.running
        job.terminate()
        # a daemon left behind in a node: down ends it
        lab.exec("rs2", ["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 < /dev/null &"]).check()
        assert vm.run(["pgrep", "-x", "sleep"]).returncode == 0
    assert vm.run(["pgrep", "-x", "sleep"]).returncode == 1, "a process of the lab outlived its down"
    left = vm.run(["ip", "netns", "list"]).stdout
    assert f"toalab-{lab_name}-" not in left
    assert not LabRecord.path_for(lab_name).exists()
    assert vm.run(["true"]).returncode == 0  # the guest outlived the lab


@pytest.mark.extended
def test_cloud_flavour_self_contained_guest(tmp_path: Path) -> None:
    """The cloud kernel has no 9p: a self-contained initramfs, files over the channel."""
    release = kernels.resolve(flavour="cloud").release
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(100000))
    with VMSession(flavour="cloud", progress=None) as vm:
        assert not vm.shared_root
        assert vm.run(["uname", "-r"]).stdout.strip() == release
        vm.sh("ip netns add c1 && ip -n c1 link add veth0 type veth peer name veth1", check=True)
        assert "veth0" in vm.run(["ip", "-br", "link"], netns="c1").stdout
        vm.put(src, "/opt/blob")
        assert vm.get("/opt/blob", tmp_path / "back").read_bytes() == src.read_bytes()
        vm.sh(f"mkdir -p {vm.results}/d && uname -r > {vm.results}/d/rel", check=True)
        assert (vm.sync_results() / "d" / "rel").read_text().strip() == release


# -- accelerator ----------------------------------------------------------------------------
def test_accel_choice_is_cached_and_forcible() -> None:
    img = ImageBuilder(progress=None).build()
    t0 = time.monotonic()
    verdict = accel.resolve("auto", img, build_dir())
    assert verdict in ("kvm", "tcg")
    assert time.monotonic() - t0 < 10
    t0 = time.monotonic()
    assert accel.resolve("auto", img, build_dir()) == verdict
    assert time.monotonic() - t0 < 0.5, "verdict not cached"
    assert accel.resolve("tcg", img, build_dir()) == "tcg"
    with pytest.raises(LabError, match="unknown accelerator"):
        accel.resolve("hvf", img, build_dir())


# -- how guests end ---------------------------------------------------------------------------
@pytest.mark.extended
def test_guest_panic_is_reported_with_the_console_log() -> None:
    vm = VMSession(progress=None).start()
    qemu = vm.info["qemu_pid"]
    try:
        with pytest.raises(VMError) as exc:
            vm.run(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 30"], timeout=60)
    finally:
        vm.close()
    msg = str(exc.value)
    log = vm.console_log
    assert "guest kernel panic" in msg and "sysrq triggered crash" in msg, msg
    assert f"console log: {log}" in msg
    assert "Kernel panic - not syncing" in log.read_text(errors="replace")
    assert _wait_dead(qemu)


@pytest.mark.extended
def test_a_boot_panic_boots_once_more_then_fails_with_both_logs() -> None:
    """A guest that panics while booting (here: no init to run) is booted a second
    time, as a TCG boot-time fault would warrant; a second panic is the error, and
    the first boot's console log is kept beside the second's."""
    vm = VMSession(progress=None, extra_cmdline="rdinit=/nonexistent")
    with pytest.raises(VMError, match=r"guest kernel panic: .* console log: /") as exc:
        vm.start()
    assert vm.timings.get("boot_retries") == 1, vm.timings
    assert (vm.rundir / "console-boot1.log").stat().st_size > 0
    assert "Kernel panic" in (vm.rundir / "console.log").read_text(errors="replace"), str(exc.value)
    assert supervisor_alive(vm.rundir) is None


@pytest.mark.extended
def test_guest_hang_is_detected() -> None:
    vm = VMSession(progress=None, hang_timeout=3).start()
    qemu = vm.info["qemu_pid"]
    try:
        os.kill(qemu, signal.SIGSTOP)  # the whole guest stops answering
        t0 = time.monotonic()
        with pytest.raises(VMError, match=r"guest hung: .* console log: /"):
            vm.run(["sleep", "20"])
        assert time.monotonic() - t0 < 15
    finally:
        if _alive(qemu):
            os.kill(qemu, signal.SIGCONT)
        vm.close()
    assert _wait_dead(qemu)


@pytest.mark.extended
def test_boot_timeout_names_the_console_log() -> None:
    vm = VMSession(progress=None, boot_timeout=0.3)
    with pytest.raises(VMError, match=r"not ready within 0.3 s .*; console log: /.*console.log"):
        vm.start()
    state = json.loads((vm.rundir / "state.json").read_text())
    assert _wait_dead(state["qemu_pid"])


# -- the command line ------------------------------------------------------------------------
def _toalab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV,
    )  # fmt: skip


def test_cli_vm_run_prints_output_and_exit_code() -> None:
    p = _toalab("vm", "run", "--", "sh", "-c", "uname -r; echo oops >&2; exit 5")
    assert p.returncode == 5, p.stderr
    assert p.stdout.strip() == kernels.resolve().release
    assert "oops" in p.stderr


@pytest.mark.extended
def test_cli_vm_run_ctrl_c_leaves_no_qemu() -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "lab", "vm", "run", "--", "sleep", "100"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        rundir = _wait_for_vm_of(p.pid)
        state = json.loads((rundir / "state.json").read_text())
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 130
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert _wait_dead(state["qemu_pid"]) and _wait_dead(state["supervisor_pid"])


@pytest.mark.extended
def test_owner_killed_leaves_no_qemu() -> None:
    code = "from lab.vm import VMSession; import time; VMSession(progress=None).start(); time.sleep(300)"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV)
    try:
        rundir = _wait_for_vm_of(p.pid)
        state = json.loads((rundir / "state.json").read_text())
    finally:
        p.kill()
        p.wait()
    assert _wait_dead(state["qemu_pid"]) and _wait_dead(state["supervisor_pid"])


def _wait_for_vm_of(owner: int, timeout: float = 90) -> Path:
    """The run dir of the VM that process `owner` booted, once its guest is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in (build_dir() / "run").glob(f"s-{owner}-*"):
            try:
                state = json.loads((d / "state.json").read_text())
            except (OSError, ValueError):
                continue
            if state.get("state") == "ready":
                return d
        time.sleep(0.1)
    raise AssertionError(f"process {owner} did not get a ready VM in {timeout} s")


def test_cli_up_exec_status_down_on_the_vm_engine(lab_name: str) -> None:
    p = _toalab("up", str(FULLNAT4), "--engine", "vm", "--name", lab_name)
    assert p.returncode == 0, p.stderr
    try:
        p = _toalab("exec", "--lab", lab_name, "client", "--", "ping", "-c1", "-W5", "192.0.2.12")
        assert p.returncode == 0 and "1 received" in p.stdout, p.stdout + p.stderr
        p = _toalab("exec", "--lab", lab_name, "rs2", "--", "sh", "-c", "exit 9")
        assert p.returncode == 9
        if shutil.which("script"):  # `toalab shell` on a terminal: a pty in the guest
            shell = f"{sys.executable} -m lab shell --lab {lab_name} rs1"
            p = subprocess.run(
                ["script", "-qec", shell, "/dev/null"], input="tty; ls /sys/class/net\nexit 3\n",
                capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV,
            )  # fmt: skip
            assert p.returncode == 3, p.stdout + p.stderr
            assert "/dev/pts/" in p.stdout and "eth0" in p.stdout
        p = _toalab("status", lab_name, "--json")
        st = json.loads(p.stdout)[0]
        assert st["engine"] == "vm" and st["vm"]["state"] == "ready"
        qemu = st["vm"]["qemu_pid"]
        assert _alive(qemu)
    finally:
        p = _toalab("down", lab_name)
    assert p.returncode == 0, p.stderr
    assert _wait_dead(qemu)
    assert not LabRecord.path_for(lab_name).exists()
