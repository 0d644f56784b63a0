"""The process that owns one guest: `python -m lab.vm.supervisor RUNDIR/spec.json`.

It starts qemu (which dies with it: PR_SET_PDEATHSIG), is the only reader of
the guest's console and control port, and serves any number of clients on
RUNDIR/api.sock, multiplexing their jobs onto the one control port (job ids
are remapped).  It watches for everything that ends a guest:

- boot timeout (no HELLO from the agent in time),
- a panic/oops on the console (the guest is booted with oops=panic, panic=-1
  and -no-reboot, so qemu then exits),
- a hang: the agent stops answering pings,
- qemu exiting, SIGTERM/SIGINT/SIGHUP, a STOP request, or the owner process
  (a VMSession that is not persistent) going away,

and then kills qemu, tells every client why in a DEAD frame that names the
console log, records it in RUNDIR/state.json and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.vm import proto
from lab.vm.console import ConsoleWatcher
from lab.vm.proto import T

PING_INTERVAL = 2.0


@dataclass
class SupervisorSpec:
    name: str
    rundir: str
    qemu_argv: list[str]
    console_log: str
    accel: str
    release: str
    boot_timeout: float
    hang_timeout: float
    owner_pid: int | None = None
    results: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def api_sock(self) -> Path:
        return Path(self.rundir) / "api.sock"

    @property
    def ctl_sock(self) -> Path:
        return Path(self.rundir) / "ctl.sock"

    @property
    def con_sock(self) -> Path:
        return Path(self.rundir) / "con.sock"

    @property
    def state_file(self) -> Path:
        return Path(self.rundir) / "state.json"

    @property
    def qemu_log(self) -> Path:
        return Path(self.rundir) / "qemu.log"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> SupervisorSpec:
        return cls(**json.loads(path.read_text()))


class Conn:
    def __init__(self, sock: socket.socket, kind: str) -> None:
        self.sock = sock
        self.kind = kind  # "ctl" | "con" | "client"
        self.reader = proto.FrameReader()
        self.out = bytearray()
        self.jobs: dict[int, int] = {}  # client job id -> global id
        self.ready_sent = False
        self.closed = False


def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    # start in our own process group: a terminal's Ctrl-C reaches the client,
    # which then stops the lab in order, not qemu directly
    os.setpgid(0, 0)


class Supervisor:
    def __init__(self, spec: SupervisorSpec) -> None:
        self.spec = spec
        self.sel = selectors.DefaultSelector()
        self.console = ConsoleWatcher()
        self.state = "booting"
        self.reason: str | None = None
        self.message: str | None = None
        self.hello: dict[str, str] = {}
        self.t_start = time.time()
        self.t_ready: float | None = None
        self.last_pong = time.monotonic()
        self.next_ping = 0.0
        self.ping_seq = 0
        self.ctl: Conn | None = None
        self.con: Conn | None = None
        self.clients: list[Conn] = []
        self.routes: dict[int, tuple[Conn, int]] = {}  # global id -> (client, client id)
        self.next_gid = 1
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_requested: str | None = None
        self.console_file = open(spec.console_log, "ab", buffering=0)  # noqa: SIM115
        self.panic_deadline: float | None = None

    # -- setup ------------------------------------------------------------------------
    def _listen(self, path: Path) -> socket.socket:
        path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(16)
        s.setblocking(False)
        return s

    def run(self) -> int:
        spec = self.spec
        self._write_state()
        api = self._listen(spec.api_sock)
        ctl_l = self._listen(spec.ctl_sock)
        con_l = self._listen(spec.con_sock)
        self.sel.register(api, selectors.EVENT_READ, ("accept", "client"))
        self.sel.register(ctl_l, selectors.EVENT_READ, ("accept", "ctl"))
        self.sel.register(con_l, selectors.EVENT_READ, ("accept", "con"))

        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)
        self.sel.register(rfd, selectors.EVENT_READ, ("signal", None))

        if spec.owner_pid:
            try:
                ofd = os.pidfd_open(spec.owner_pid)
                self.sel.register(ofd, selectors.EVENT_READ, ("owner", None))
            except ProcessLookupError:
                return 0

        with open(spec.qemu_log, "wb") as qlog:
            self.proc = subprocess.Popen(
                spec.qemu_argv,
                stdin=subprocess.DEVNULL,
                stdout=qlog,
                stderr=subprocess.STDOUT,
                preexec_fn=_set_pdeathsig,  # safe: this process has one thread
            )
        self._write_state()
        qfd = os.pidfd_open(self.proc.pid)
        self.sel.register(qfd, selectors.EVENT_READ, ("qemu", None))
        boot_deadline = time.monotonic() + spec.boot_timeout
        try:
            self._loop(boot_deadline)
        finally:
            self._shutdown()
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = self.stop_requested or f"supervisor got signal {signum}"

    # -- main loop ----------------------------------------------------------------------
    def _loop(self, boot_deadline: float) -> None:
        while self.reason is None:
            now = time.monotonic()
            if self.stop_requested:
                self._die(self.stop_requested, stopped=True)
                break
            if self.state == "booting" and now > boot_deadline:
                why = self.console.verdict()
                self._die(
                    why
                    or f"guest not ready within {self.spec.boot_timeout:g} s under "
                    f"{self.spec.accel}{self._kvm_hint()}"
                )
                break
            if self.panic_deadline and now > self.panic_deadline:
                self._die(self.console.verdict() or "guest kernel panic")
                break
            if self.state == "ready":
                if now - self.last_pong > self.spec.hang_timeout:
                    self._die(
                        self.console.verdict()
                        or f"guest hung: the agent did not answer for {self.spec.hang_timeout:g} s"
                        + (f" (console: {self.console.warnings[0]})" if self.console.warnings else "")
                    )
                    break
                if now >= self.next_ping and self.ctl is not None:
                    self.ping_seq += 1
                    self._send(self.ctl, proto.pack(T.PING, 0, proto.u32(self.ping_seq)))
                    self.next_ping = now + PING_INTERVAL
            timeout = 0.5
            if self.state == "ready":
                timeout = max(0.01, min(timeout, self.next_ping - now))
            for key, events in self.sel.select(timeout):
                what, arg = key.data
                try:
                    self._event(key, events, what, arg)
                except (proto.ProtocolError, OSError) as e:
                    if what == "conn" and arg.kind == "client":
                        self._drop_client(arg)
                    elif what == "conn":
                        self._die(f"control channel error: {e}")
                if self.reason is not None:
                    break

    def _event(self, key: selectors.SelectorKey, events: int, what: str, arg: Any) -> None:
        if what == "accept":
            sock, _ = key.fileobj.accept()  # type: ignore[union-attr]
            sock.setblocking(False)
            conn = Conn(sock, arg)
            self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))
            if arg == "ctl":
                self.ctl = conn
            elif arg == "con":
                self.con = conn
            else:
                self.clients.append(conn)
                self._greet(conn)
        elif what == "signal":
            with contextlib.suppress(OSError):
                os.read(key.fd, 512)
        elif what == "owner":
            self.stop_requested = "owner process exited"
        elif what == "qemu":
            self._qemu_exited()
        elif what == "conn":
            if events & selectors.EVENT_WRITE:
                self._flush(arg)
            if events & selectors.EVENT_READ:
                self._readable(arg)

    def _readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if conn.kind == "con":
            if data:
                self.console_file.write(data)
                self.console.feed(data)
                if self.console.panic and self.panic_deadline is None:
                    self.panic_deadline = time.monotonic() + 5.0
            else:
                self._close(conn)
            return
        if not data:
            if conn.kind == "ctl":
                self._close(conn)
                self.ctl = None
            else:
                self._drop_client(conn)
            return
        for kind, job, payload in conn.reader.feed(data):
            if conn.kind == "ctl":
                self._from_guest(kind, job, payload)
            else:
                self._from_client(conn, kind, job, payload)

    # -- guest -> clients -----------------------------------------------------------------
    def _from_guest(self, kind: int, gid: int, payload: bytes) -> None:
        if kind == T.HELLO:
            self.hello = proto.parse_kv(payload)
            self.state = "ready"
            self.t_ready = time.time()
            self.last_pong = time.monotonic()
            self._write_state()
            for c in self.clients:
                self._greet(c)
            return
        if kind == T.PONG:
            self.last_pong = time.monotonic()
            return
        route = self.routes.get(gid)
        if route is None:
            return
        client, cid = route
        if kind in (T.EXIT, T.ERROR):
            del self.routes[gid]
            client.jobs.pop(cid, None)
        if not client.closed:
            self._send(client, proto.pack(kind, cid, payload))

    def _greet(self, conn: Conn) -> None:
        if self.state == "ready" and not conn.ready_sent:
            conn.ready_sent = True
            self._send(conn, proto.pack(T.READY, 0, json.dumps(self._status()).encode()))

    # -- clients -> guest -----------------------------------------------------------------
    def _from_client(self, conn: Conn, kind: int, cid: int, payload: bytes) -> None:
        if kind == T.STATUS:
            self._send(conn, proto.pack(T.STATUS_REPLY, cid, json.dumps(self._status()).encode()))
            return
        if kind == T.STOP:
            self.stop_requested = "stopped"
            return
        if kind == T.PING:
            self._send(conn, proto.pack(T.PONG, cid, payload))
            return
        if self.state != "ready" or self.ctl is None:
            self._send(conn, proto.pack(T.ERROR, cid, b"guest not ready"))
            return
        if kind == T.EXEC:
            if cid in conn.jobs:
                self._send(conn, proto.pack(T.ERROR, cid, b"job id in use"))
                return
            gid = self.next_gid
            self.next_gid += 1
            conn.jobs[cid] = gid
            self.routes[gid] = (conn, cid)
            self._send(self.ctl, proto.pack(T.EXEC, gid, payload))
        elif kind in (T.STDIN, T.KILL, T.WINSZ):
            gid = conn.jobs.get(cid)
            if gid is not None:
                self._send(self.ctl, proto.pack(kind, gid, payload))

    def _drop_client(self, conn: Conn) -> None:
        """A client went away: its jobs go too."""
        if conn.closed:
            return
        for gid in conn.jobs.values():
            self.routes.pop(gid, None)
            if self.ctl is not None:
                self._send(self.ctl, proto.pack(T.KILL, gid, proto.u32(signal.SIGKILL)))
        conn.jobs.clear()
        self._close(conn)
        if conn in self.clients:
            self.clients.remove(conn)

    # -- io -------------------------------------------------------------------------------
    def _send(self, conn: Conn, data: bytes) -> None:
        if conn.closed:
            return
        if not conn.out:
            try:
                n = conn.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                if conn.kind == "client":
                    self._drop_client(conn)
                return
            data = data[n:]
            if not data:
                return
            conn.out += data
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("conn", conn))
        else:
            conn.out += data

    def _flush(self, conn: Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            if conn.kind == "client":
                self._drop_client(conn)
            return
        del conn.out[:n]
        if not conn.out:
            self.sel.modify(conn.sock, selectors.EVENT_READ, ("conn", conn))

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()

    # -- ending ---------------------------------------------------------------------------
    def _qemu_exited(self) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        # the console may still hold the last words (panic trace)
        if self.con is not None and not self.con.closed:
            self.con.sock.setblocking(True)
            self.con.sock.settimeout(0.5)
            with contextlib.suppress(OSError):
                while data := self.con.sock.recv(65536):
                    self.console_file.write(data)
                    self.console.feed(data)
        why = self.console.verdict()
        if why is None:
            tail = ""
            with contextlib.suppress(OSError):
                lines = self.spec.qemu_log.read_text(errors="replace").strip().splitlines()
                tail = f": {lines[-1]}" if lines else ""
            why = f"qemu exited with status {code}{tail}"
        self._die(why)

    def _kvm_hint(self) -> str:
        if self.spec.accel == "kvm":
            return " (this host's /dev/kvm may not run stock kernels: try --accel tcg)"
        return ""

    def _die(self, reason: str, *, stopped: bool = False) -> None:
        self.reason = reason
        self.state = "stopped" if stopped else "dead"
        self._kill_qemu(graceful=stopped)
        self.message = reason if stopped else f"{reason}; console log: {self.spec.console_log}"
        body = json.dumps(self._status()).encode()
        for c in list(self.clients):
            self._send(c, proto.pack(T.DEAD, 0, body))
            # best effort, bounded: the clients are waiting for exactly this
            if c.out and not c.closed:
                with contextlib.suppress(OSError):
                    c.sock.setblocking(True)
                    c.sock.settimeout(1.0)
                    c.sock.sendall(bytes(c.out))
                    c.out.clear()
        self._write_state()

    def _kill_qemu(self, *, graceful: bool) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        if graceful and self.ctl is not None and self.state != "dead":
            # let the agent sync and power off; 9p writes are already on the host
            p.terminate()
        else:
            p.kill()
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def _shutdown(self) -> None:
        if self.reason is None:
            self._die("supervisor exiting")
        self._kill_qemu(graceful=False)
        for c in [*self.clients, self.ctl, self.con]:
            if c is not None:
                self._close(c)
        for p in (self.spec.api_sock, self.spec.ctl_sock, self.spec.con_sock):
            p.unlink(missing_ok=True)
        self.console_file.close()
        self._write_state()

    def _status(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": s.name,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
            "accel": s.accel,
            "release": self.hello.get("release", s.release),
            "kernel_version": self.hello.get("version"),
            "supervisor_pid": os.getpid(),
            "supervisor_start": _start_time(os.getpid()),
            "qemu_pid": self.proc.pid if self.proc else None,
            "started": self.t_start,
            "ready_s": round(self.t_ready - self.t_start, 3) if self.t_ready else None,
            "guest_uptime_at_ready_ms": int(self.hello["uptime_ms"]) if "uptime_ms" in self.hello else None,
            "console_log": s.console_log,
            "results": s.results,
            "rundir": s.rundir,
            "clients": len(self.clients),
            "jobs": len(self.routes),
            "warnings": self.console.warnings[:5],
            "owner_pid": s.owner_pid,
            **s.extra,
        }

    def _write_state(self) -> None:
        f = self.spec.state_file
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._status(), indent=1))
        tmp.replace(f)


def _start_time(pid: int) -> int | None:
    from lab.engines.base import start_time  # the engines import the VM package

    return start_time(pid)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m lab.vm.supervisor RUNDIR/spec.json", file=sys.stderr)
        return 2
    spec = SupervisorSpec.load(Path(argv[0]))
    return Supervisor(spec).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
