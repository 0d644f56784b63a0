"""VMSession: one booted guest serving any number of commands and scenarios.

    with VMSession() as vm:                       # builds if needed, boots, waits for the agent
        print(vm.run(["uname", "-r"]).stdout)
        vm.sh("ip netns add a")
        r = vm.run(["ping", "-c1", "10.0.0.2"], netns="a", timeout=10)
        for topo in scenarios:                    # many labs, one boot
            with vm.lab(topo) as lab:
                lab.exec("client", ["ping", "-c1", "192.0.2.11"]).check()

A session owns a supervisor process (lab/vm/supervisor.py) which owns qemu.
A non-persistent session's VM stops when the session is closed or its
process dies (the supervisor watches the owner's pid); a persistent one
(`toalab up --engine vm`) runs until stopped, and other processes reattach
with VMSession.attach(name).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from lab.errors import LabError
from lab.kernel import ExecResult, KernelHandle
from lab.progress import finish
from lab.vm import accel as accel_mod
from lab.vm.client import Channel, OutputCallback, RemoteJob, VMError
from lab.vm.config import REPO, build_dir
from lab.vm.image import TERMINAL, ImageBuilder, Progress, _progress
from lab.vm.kernels import Kernel
from lab.vm.qemu import QemuConfig
from lab.vm.supervisor import SupervisorSpec

if TYPE_CHECKING:
    from lab.net import Lab
    from lab.topology import Topology

BOOT_TIMEOUT = {"tcg": 60.0, "kvm": 20.0}
HANG_TIMEOUT = 20.0
KEEP_SESSION_DIRS = 20


def run_root() -> Path:
    return build_dir() / "run"


def rundir_for(name: str) -> Path:
    return run_root() / name


def supervisor_alive(rundir: Path) -> dict[str, Any] | None:
    """The state of the lab's supervisor if it is running, else None."""
    try:
        state = json.loads((rundir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("supervisor_pid")
    if not pid or state.get("state") in ("dead", "stopped") or not _pid_alive(pid):
        return None
    # a stale state file whose pid another process has since taken is not ours to signal
    from lab.engines.base import start_time  # the engines import this module

    if start_time(pid) != state.get("supervisor_start"):
        return None
    return dict(state)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class VMOptions:
    kernel: str | None = None  # series[-flavour] or a release; None: $TOALAB_KERNEL or the default
    flavour: str | None = None
    accel: str = "auto"
    memory_mb: int = 1024
    cpus: int = 2
    results: Path | None = None
    boot_timeout: float | None = None
    hang_timeout: float = HANG_TIMEOUT
    extra_cmdline: str = ""
    # TCG's thread mode (lab/vm/qemu.py: why single); None: $TOALAB_TCG_THREAD or single
    tcg_thread: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class VMSession:
    def __init__(
        self,
        name: str | None = None,
        *,
        persistent: bool = False,
        progress: Progress | str | None = TERMINAL,
        **options: Any,
    ) -> None:
        self.name = name or f"s-{os.getpid()}-{secrets.token_hex(2)}"
        self.persistent = persistent
        self.options = VMOptions(**options)
        self.progress = _progress(progress)
        self.rundir = rundir_for(self.name)
        self.channel: Channel | None = None
        self.info: dict[str, Any] = {}
        self.owner = True
        self.timings: dict[str, float] = {}
        self._sup: subprocess.Popen[bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> VMSession:
        t0 = time.monotonic()
        opts = self.options
        image = ImageBuilder(opts.kernel, flavour=opts.flavour, progress=self.progress).build()
        t_built = time.monotonic()
        self.timings["image_check_s"] = round(t_built - t0, 3)
        if supervisor_alive(self.rundir):
            raise LabError(f"VM '{self.name}' is already running (stop it: toalab vm stop {self.name})")
        _prune(run_root())
        shutil.rmtree(self.rundir, ignore_errors=True)
        self.rundir.mkdir(parents=True)
        if len(str(self.rundir / "api.sock")) > 100:
            raise LabError(f"{self.rundir}: path too long for unix sockets; set TOALAB_VM_BUILD")
        accel = accel_mod.resolve(opts.accel, image, build_dir(), log=self.rundir / "kvm-probe.log")
        self.timings["accel_s"] = round(time.monotonic() - t_built, 3)
        results = opts.results or (build_dir() / "results" / self.name)
        results = Path(results).resolve()
        results.mkdir(parents=True, exist_ok=True)
        # what every result written there was run on
        (results / "kernel.json").write_text(json.dumps(image.kernel.to_json(), indent=1) + "\n")
        self.progress(f"booting {image.kernel.describe()} under {accel}")
        cfg = QemuConfig(
            image=image,
            accel=accel,
            memory_mb=opts.memory_mb,
            cpus=opts.cpus,
            results=results,
            extra_cmdline=opts.extra_cmdline,
            tcg_thread=opts.tcg_thread or os.environ.get("TOALAB_TCG_THREAD") or "single",
        )
        boot_timeout = opts.boot_timeout or BOOT_TIMEOUT[accel]
        spec = SupervisorSpec(
            name=self.name,
            rundir=str(self.rundir),
            qemu_argv=cfg.argv(ctl_sock=self.rundir / "ctl.sock", con_sock=self.rundir / "con.sock"),
            console_log=str(self.rundir / "console.log"),
            accel=accel,
            release=image.release,
            boot_timeout=boot_timeout,
            hang_timeout=opts.hang_timeout,
            owner_pid=None if self.persistent else os.getpid(),
            results=str(results),
            extra={
                "flavour": image.kernel.flavour,
                "kernel": image.kernel.to_json(),
                "headers": str(image.headers),
                "shared_root": image.shared_root,
                **opts.extra,
            },
        )
        spec_path = self.rundir / "spec.json"
        spec.save(spec_path)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        for attempt in (1, 2):
            t_launch = time.monotonic()
            try:
                self._launch(spec_path, env, boot_timeout)
                break
            except VMError as e:
                # A kernel that panics while booting, before anything of ours runs in
                # it, is TCG's doing (6.12 once died in sched_clock_cpu on an int3
                # left by boot-time text patching): boot once more, and say so.
                if attempt == 2 or "guest kernel panic" not in str(e):
                    raise
                kept = self.rundir / "console-boot1.log"
                with contextlib.suppress(OSError):
                    (self.rundir / "console.log").rename(kept)
                for stale in ("state.json", "api.sock", "ctl.sock", "con.sock"):
                    with contextlib.suppress(OSError):
                        (self.rundir / stale).unlink()
                self.progress(f"the guest panicked while booting ({e}; {kept}): booting again")
                self.timings["boot_retries"] = 1
        self.timings["boot_to_ready_s"] = round(time.monotonic() - t_launch, 3)
        self.timings["total_s"] = round(time.monotonic() - t0, 3)
        finish(self.progress)
        return self

    def _launch(self, spec_path: Path, env: dict[str, str], boot_timeout: float) -> None:
        """Start the supervisor (which starts qemu) and wait for the guest agent."""
        with open(self.rundir / "supervisor.log", "ab") as log:
            self._sup = subprocess.Popen(
                [sys.executable, "-m", "lab.vm.supervisor", str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        try:
            self.channel = Channel(self.rundir / "api.sock", name=self.name)
            self.info = self.channel.wait_ready(boot_timeout + 15, alive=self._sup_alive)
        except VMError as e:
            self._abort()
            # the supervisor may have given up before we even connected
            raise VMError(_ended_message(self.rundir) or str(e)) from None
        except BaseException:
            self._abort()
            raise

    def _sup_alive(self) -> bool:
        if self._sup is not None:
            return self._sup.poll() is None
        return supervisor_alive(self.rundir) is not None

    def _abort(self) -> None:
        """Startup failed or was interrupted: make sure nothing is left running."""
        if self.channel is not None:
            self.channel.stop(timeout=5)
            self.channel.close()
            self.channel = None
        if self._sup is not None:
            if self._sup.poll() is None:
                self._sup.terminate()
                try:
                    self._sup.wait(5)
                except subprocess.TimeoutExpired:
                    self._sup.kill()  # qemu dies with it (PDEATHSIG)
                    self._sup.wait()
            self._sup = None

    @classmethod
    def attach(cls, name: str, *, connect_timeout: float = 5.0) -> VMSession:
        """Connect to a running (persistent) VM started by another process."""
        self = cls(name, persistent=True, progress=None)
        self.owner = False
        state = supervisor_alive(self.rundir)
        if state is None:
            raise VMError(f"VM '{name}' is not running{_last_words(self.rundir)}")
        self.channel = Channel(self.rundir / "api.sock", name=name, connect_timeout=connect_timeout)
        try:
            self.info = self.channel.wait_ready(float(connect_timeout) + 60.0)
        except BaseException:
            self.channel.close()
            raise
        return self

    def close(self) -> None:
        """Disconnect; an owning, non-persistent session also stops its VM."""
        if self.owner and not self.persistent:
            self.stop()
            return
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self) -> None:
        """Stop the VM (any session may do this)."""
        if self.channel is not None:
            self.channel.stop()
            self.channel.close()
            self.channel = None
        elif (state := supervisor_alive(self.rundir)) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["supervisor_pid"], signal.SIGTERM)
        if self._sup is not None:
            try:
                self._sup.wait(10)
            except subprocess.TimeoutExpired:
                self._sup.kill()
                self._sup.wait()
            self._sup = None
        else:
            _wait_gone(self.rundir, 10)

    def __enter__(self) -> VMSession:
        if self.channel is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts ----------------------------------------------------------------------------------
    @property
    def release(self) -> str:
        return str(self.info.get("release", ""))

    @property
    def kernel_build(self) -> Kernel:
        """The Debian build the guest runs (series, flavour, package versions)."""
        return Kernel.from_json(self.info["kernel"])

    def kernel(self) -> KernelHandle:
        """The guest's kernel as a handle (commands in its root namespace)."""

        def run_in_guest(argv: list[str], timeout: float) -> tuple[int, str, str]:
            r = self.run(argv, timeout=timeout)
            return r.returncode, r.stdout, r.stderr

        return KernelHandle(run_in_guest, self.provide, f"VM '{self.name}'")

    @property
    def accel(self) -> str:
        return str(self.info.get("accel", ""))

    @property
    def console_log(self) -> Path:
        return Path(self.info.get("console_log") or self.rundir / "console.log")

    @property
    def results(self) -> Path:
        return Path(self.info["results"])

    @property
    def shared_root(self) -> bool:
        """True: the guest sees the host's / (read-only) and writes results straight
        to the host.  False (cloud flavour): use put/get/sync_results."""
        return bool(self.info.get("shared_root", True))

    def status(self) -> dict[str, Any]:
        return self._ch().status()

    # -- files ------------------------------------------------------------------------------------
    def put(self, local: Path | str, remote: str, mode: int = 0o644) -> None:
        """Copy a host file into the guest (needed only without a shared root)."""
        data = Path(local).read_bytes()
        self.run(
            ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "put",
             remote, f"{mode:o}"],
            input=data, check=True, timeout=120,
        )  # fmt: skip

    def provide(self, paths: Iterable[Path | str]) -> None:
        """Make host files visible at the same paths in the guest: nothing to do with a
        shared root; without one (the cloud flavour) copied in, mode kept, with the
        shared libraries of a program."""
        if self.shared_root:
            return
        from lab.vm.image import shared_libs

        files = [str(Path(p).absolute()) for p in paths]
        libs = sorted({lib for f in files if os.access(f, os.X_OK) for lib in shared_libs(f)})
        # libraries the guest has already stay (overwriting a mapped libc would kill its users)
        absent = 'for f; do test -e "$f" || echo "$f"; done'
        missing = self.run(["sh", "-c", absent, "-", *libs]).stdout.split()
        for f in (*files, *missing):
            self.put(f, f, Path(f).stat().st_mode & 0o777)

    def get(self, remote: str, local: Path | str) -> Path:
        """Copy a guest file to the host."""
        job = self.spawn(["cat", remote])
        if job.wait(120) != 0:
            raise LabError(f"cannot read {remote} in the guest: {job.output()[1].strip()}")
        out = Path(local)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bytes(job.stdout))
        return out

    def sync_results(self) -> Path:
        """Make the guest's results directory complete on the host; returns its path.

        With a shared root the guest writes there directly and this does nothing."""
        if self.shared_root:
            return self.results
        job = self.spawn(["tar", "-C", str(self.results), "-cf", "-", "."])
        if job.wait(300) != 0:
            raise LabError(f"fetching results from the guest failed: {job.output()[1].strip()}")
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(bytes(job.stdout))) as tar:
            tar.extractall(self.results, filter="data")
        return self.results

    def _ch(self) -> Channel:
        if self.channel is None:
            raise LabError(f"VM session '{self.name}' is not started")
        return self.channel

    # -- running things ---------------------------------------------------------------------------
    def spawn(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        pty: bool = False,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> RemoteJob:
        if not argv:
            raise LabError("no command given")
        return self._ch().start(
            argv,
            netns=netns,
            cwd=cwd,
            env=env,
            stdin=stdin,
            pty=pty,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        timeout: float | None = None,
        input: str | bytes | None = None,
        check: bool = False,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        job = self.spawn(
            argv,
            netns=netns,
            cwd=cwd,
            env=env,
            stdin=input is not None,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        if input is not None:
            job.write(input.encode() if isinstance(input, str) else input)
            job.close_stdin()
        try:
            code = job.wait(timeout)
        except VMError:
            raise
        except LabError:
            if job.returncode is None:
                job.signal(signal.SIGKILL)
                with contextlib.suppress(LabError):
                    job.wait(5)
                where = f" in {netns}" if netns else ""
                raise LabError(f"'{' '.join(job.argv)}'{where} timed out after {timeout} s") from None
            raise
        out, err = job.output()
        res = ExecResult(list(job.argv), code, out, err)
        return res.check() if check else res

    def sh(self, script: str, **kw: Any) -> ExecResult:
        return self.run(["sh", "-c", script], **kw)

    def lab(self, topo: Topology, name: str | None = None) -> Lab:
        """Build `topo` in this guest as a lab that borrows it (its down keeps the guest)."""
        from lab.net import Lab

        return Lab.up(topo, name=name, engine="vm", vm=self.name)

    def interactive(self, argv: Sequence[str], *, netns: str | None = None) -> int:
        """Run argv attached to this terminal (a pty in the guest when stdin is a tty)."""
        return _interactive(self, argv, netns)


def _interactive(vm: VMSession, argv: Sequence[str], netns: str | None) -> int:
    out = sys.stdout.buffer
    err = sys.stderr.buffer

    def w(f: Any) -> OutputCallback:
        def cb(b: bytes) -> None:
            f.write(b)
            f.flush()

        return cb

    tty = sys.stdin.isatty()
    env = {"TERM": os.environ.get("TERM", "xterm")} if tty else None
    job = vm.spawn(argv, netns=netns, stdin=True, pty=tty, env=env, on_stdout=w(out), on_stderr=w(err))

    def pump_stdin() -> None:
        try:
            while job.running:
                data = os.read(0, 4096)
                if not data:
                    job.close_stdin()
                    return
                job.write(data)
        except (OSError, LabError):
            return

    if not tty:
        threading.Thread(target=pump_stdin, daemon=True).start()
        return job.wait()

    import termios
    import tty as ttymod

    def winch(_s: int = 0, _f: FrameType | None = None) -> None:
        with contextlib.suppress(OSError, LabError):
            size = os.get_terminal_size(0)
            job.resize(size.lines, size.columns)

    saved = termios.tcgetattr(0)
    old = signal.signal(signal.SIGWINCH, winch)
    try:
        winch()
        ttymod.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: keep typed-ahead input
        threading.Thread(target=pump_stdin, daemon=True).start()
        return job.wait()
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old)


def _ended_message(rundir: Path) -> str | None:
    try:
        state = json.loads((rundir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if state.get("state") == "dead" and state.get("message"):
        return f"VM '{state.get('name')}': {state['message']}"
    return None


def _last_words(rundir: Path) -> str:
    try:
        state = json.loads((rundir / "state.json").read_text())
    except (OSError, ValueError):
        return ""
    reason = state.get("reason")
    if not reason or state.get("state") == "stopped":
        return ""
    return f" (it ended: {reason}; console log: {state.get('console_log')})"


def _wait_gone(rundir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while supervisor_alive(rundir) and time.monotonic() < deadline:
        time.sleep(0.05)


def _prune(root: Path, keep: int = KEEP_SESSION_DIRS) -> None:
    """Forget the run dirs (console logs) of old ephemeral sessions, newest kept."""
    if not root.is_dir():
        return
    dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and d.name.startswith(("s-", "pt-"))),
        key=lambda d: d.stat().st_mtime,
    )
    for d in dirs[:-keep] if len(dirs) > keep else []:
        if supervisor_alive(d) is None:
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(build_dir() / "results" / d.name, ignore_errors=True)
