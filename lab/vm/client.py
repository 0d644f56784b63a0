"""Client side of a lab's api socket: run jobs in the guest, stream their output."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.kernel import Job
from lab.vm import proto
from lab.vm.proto import T

OutputCallback = Callable[[bytes], None]


class VMError(LabError):
    """The guest died, hung or never came up; the message names the console log."""


class RemoteJob(Job):
    """A process in the guest.  Output is kept (and passed to callbacks as it comes)."""

    def __init__(
        self,
        channel: Channel,
        jid: int,
        argv: list[str],
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> None:
        self.channel = channel
        self.id = jid
        self.argv = argv
        self.pid: int | None = None
        self.returncode: int | None = None
        self.error: str | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr

    # called by the channel's reader thread, under its lock
    def _frame(self, kind: int, payload: bytes) -> bool:
        """Returns True when the job has ended."""
        if kind == T.STARTED:
            self.pid = proto.u32_of(payload)
        elif kind == T.STDOUT:
            self.stdout += payload
            if self._on_stdout:
                self._on_stdout(payload)
        elif kind == T.STDERR:
            self.stderr += payload
            if self._on_stderr:
                self._on_stderr(payload)
        elif kind == T.EXIT:
            self.returncode = proto.i32_of(payload)
            return True
        elif kind == T.ERROR:
            self.error = payload.decode(errors="replace")
            self.returncode = 127
            return True
        return False

    @property
    def running(self) -> bool:
        return self.returncode is None and self.channel.dead is None

    def wait(self, timeout: float | None = None) -> int:
        ch = self.channel
        deadline = None if timeout is None else time.monotonic() + timeout
        with ch.cond:
            while self.returncode is None:
                if ch.dead is not None:
                    raise VMError(ch.dead)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise LabError(f"'{' '.join(self.argv)}' still running after {timeout} s")
                ch.cond.wait(0.5 if left is None else min(left, 0.5))
        if self.error is not None:
            raise LabError(f"guest could not run '{' '.join(self.argv)}': {self.error}")
        return self.returncode

    def signal(self, sig: int) -> None:
        if self.returncode is None and self.channel.dead is None:
            self.channel.send(T.KILL, self.id, proto.u32(sig))

    def terminate(self) -> None:
        if not self.running:
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(2)
        except VMError:
            return
        except LabError:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(LabError):
                self.wait(5)

    def write(self, data: bytes) -> None:
        if data:
            self.channel.send(T.STDIN, self.id, data)

    def close_stdin(self) -> None:
        self.channel.send(T.STDIN, self.id, b"")

    def resize(self, rows: int, cols: int) -> None:
        self.channel.send(T.WINSZ, self.id, rows.to_bytes(2, "little") + cols.to_bytes(2, "little"))

    def output(self) -> tuple[str, str]:
        with self.channel.cond:
            return self.stdout.decode(errors="replace"), self.stderr.decode(errors="replace")


class Channel:
    """One connection to a lab's supervisor; thread-safe; a reader thread routes frames."""

    def __init__(self, api_sock: Path, *, name: str, connect_timeout: float = 5.0) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock.connect(str(api_sock))
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise VMError(f"VM '{name}' is not running ({api_sock}: {e.strerror})") from None
                time.sleep(0.02)
        self.cond = threading.Condition()
        self.send_lock = threading.Lock()
        self.jobs: dict[int, RemoteJob] = {}
        self.next_id = 1
        self.ready: dict[str, Any] | None = None
        self.dead: str | None = None
        self.dead_info: dict[str, Any] | None = None
        self._replies: dict[int, bytes] = {}
        self._reader = threading.Thread(target=self._read_loop, name=f"vm-{name}", daemon=True)
        self._reader.start()

    # -- lifecycle --------------------------------------------------------------------------
    def wait_ready(self, timeout: float, alive: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Block until the guest's agent said hello; raise VMError if it died instead."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.ready is None:
                if self.dead is not None:
                    raise VMError(self.dead)
                if time.monotonic() > deadline:
                    raise VMError(f"VM '{self.name}': no answer from the supervisor in {timeout:.0f} s")
                if alive is not None and not alive():
                    self.cond.wait(0.2)  # the DEAD frame may still be in flight
                    if self.ready is None and self.dead is None:
                        raise VMError(f"VM '{self.name}': supervisor exited during boot")
                self.cond.wait(0.1)
            return self.ready

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(2)

    def _read_loop(self) -> None:
        reader = proto.FrameReader()
        why = "connection to the supervisor closed"
        try:
            while True:
                data = self.sock.recv(262144)
                if not data:
                    break
                for kind, jid, payload in reader.feed(data):
                    self._dispatch(kind, jid, payload)
        except (OSError, proto.ProtocolError) as e:
            why = f"control channel: {e}"
        with self.cond:
            if self.dead is None:
                self.dead = f"VM '{self.name}': {why}"
            self.cond.notify_all()

    def _dispatch(self, kind: int, jid: int, payload: bytes) -> None:
        with self.cond:
            if kind == T.READY:
                self.ready = json.loads(payload)
            elif kind == T.DEAD:
                info = json.loads(payload)
                self.dead_info = info
                self.dead = f"VM '{self.name}': {info.get('message') or info.get('reason')}"
            elif kind in (T.STATUS_REPLY, T.PONG):
                self._replies[jid] = payload
            else:
                job = self.jobs.get(jid)
                if job is not None and job._frame(kind, payload):
                    del self.jobs[jid]
            self.cond.notify_all()

    # -- requests ---------------------------------------------------------------------------
    def send(self, kind: int, jid: int, payload: bytes = b"") -> None:
        if self.dead is not None:
            raise VMError(self.dead)
        with self.send_lock:
            try:
                self.sock.sendall(proto.pack(kind, jid, payload))
            except OSError as e:
                raise VMError(self.dead or f"VM '{self.name}': control channel: {e}") from None

    def start(
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
        flags = (proto.F_STDIN if stdin else 0) | (proto.F_PTY if pty else 0)
        payload = proto.exec_payload(argv, netns=netns or "", cwd=cwd or "", env=env, flags=flags)
        with self.cond:
            jid = self.next_id
            self.next_id += 1
            job = RemoteJob(self, jid, [str(a) for a in argv], on_stdout, on_stderr)
            self.jobs[jid] = job
        self.send(T.EXEC, jid, payload)
        return job

    def _request(self, kind: int, reply: int, payload: bytes = b"", timeout: float = 5.0) -> bytes:
        with self.cond:
            jid = self.next_id
            self.next_id += 1
        self.send(kind, jid, payload)
        deadline = time.monotonic() + timeout
        with self.cond:
            while jid not in self._replies:
                if self.dead is not None:
                    raise VMError(self.dead)
                if time.monotonic() > deadline:
                    raise VMError(f"VM '{self.name}': supervisor did not answer in {timeout:.0f} s")
                self.cond.wait(0.2)
            return self._replies.pop(jid)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self._request(T.STATUS, T.STATUS_REPLY)))

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the supervisor to stop the VM and wait until it has."""
        if self.dead is not None:
            return
        with contextlib.suppress(VMError):
            self.send(T.STOP, 0)
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.dead is None and time.monotonic() < deadline:
                self.cond.wait(0.2)
