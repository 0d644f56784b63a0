"""VM engine pieces that need no guest: framing, console verdicts, image helpers."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.vm import proto
from lab.vm.console import ConsoleWatcher
from lab.vm.image import Cpio, module_closure
from lab.vm.proto import T


def test_frames_roundtrip_in_any_split() -> None:
    frames = [(T.STDOUT, 7, b"x" * 70000), (T.EXIT, 7, proto.u32(3)), (T.PONG, 0, b"")]
    wire = b"".join(proto.pack(k, j, p) for k, j, p in frames)
    for step in (1, 5, 12, 4096, len(wire)):
        r = proto.FrameReader()
        got = []
        for i in range(0, len(wire), step):
            got += r.feed(wire[i : i + step])
        assert got == frames
    assert proto.i32_of(struct.pack("<i", -9)) == -9


def test_bad_frame_is_a_protocol_error() -> None:
    with pytest.raises(proto.ProtocolError):
        proto.FrameReader().feed(b"\0" * 12)


def test_exec_payload_layout() -> None:
    p = proto.exec_payload(["ip", "-br", "link"], netns="ns1", env={"A": "1"}, flags=proto.F_PTY)
    flags, argc = struct.unpack_from("<II", p)
    assert (flags, argc) == (proto.F_PTY, 3)
    assert p[8:].split(b"\0") == [b"ns1", b"", b"ip", b"-br", b"link", b"A=1", b""]
    with pytest.raises(ValueError):
        proto.exec_payload([])


def test_console_verdicts() -> None:
    w = ConsoleWatcher()
    w.feed(b"[    1.0] sysrq: Trigger a crash\r\n[    1.1] Kernel panic - not")
    assert w.verdict() is None
    w.feed(b" syncing: sysrq triggered crash\n")
    assert w.verdict() == "guest kernel panic: sysrq triggered crash"

    w = ConsoleWatcher()
    w.feed(b"[ 3.2] BUG: kernel NULL pointer dereference, address: 0000000000000008\n")
    w.feed(b"[ 3.3] Oops: 0000 [#1] PREEMPT SMP NOPTI\n")
    assert w.verdict() == "guest kernel oops: BUG: kernel NULL pointer dereference, address: 0000000000000008"
    w.feed(b"[ 3.4] Kernel panic - not syncing: Fatal exception\n")
    assert w.verdict() == (
        "guest kernel panic: Fatal exception "
        "(first error: BUG: kernel NULL pointer dereference, address: 0000000000000008)"
    )

    w = ConsoleWatcher()
    w.feed(b"[ 9.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]\n")
    w.feed(b"toalab-init: FATAL: mount host root over 9p\n")
    assert w.warnings == ["watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]"]
    assert w.verdict() == "guest init failed: mount host root over 9p"


def test_module_closure_orders_dependencies_first(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko.xz: kernel/fs/fscache/fscache.ko.xz kernel/net/9p/9pnet.ko.xz "
        "kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/fs/fscache/fscache.ko.xz: kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/fs/netfs/netfs.ko.xz:\n"
        "kernel/net/9p/9pnet.ko.xz:\n"
        "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz "
        "kernel/drivers/virtio/virtio_ring.ko.xz\n"
    )
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_ring.ko\n")
    names = [p.name for p in module_closure(tmp_path, ["9pnet_virtio", "9p"])]
    assert names.index("9pnet.ko.xz") < names.index("9pnet_virtio.ko.xz")
    assert names.index("netfs.ko.xz") < names.index("fscache.ko.xz") < names.index("9p.ko.xz")
    assert "virtio_ring.ko.xz" not in names  # built in
    with pytest.raises(LabError, match="not found"):
        module_closure(tmp_path, ["nope"])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio")
def test_cpio_archive_is_readable_by_cpio(tmp_path: Path) -> None:
    c = Cpio()
    c.dir("bin")
    c.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    c.symlink("bin/sh", "busybox")
    c.node("dev-console", 0o020600, 5, 1)
    (tmp_path / "a.cpio").write_bytes(c.finish())
    out = subprocess.run(
        ["cpio", "-itv", "-F", str(tmp_path / "a.cpio")], capture_output=True, text=True, check=True
    ).stdout
    assert "bin/hello" in out and "bin/sh -> busybox" in out and out.count("\n") == 4


def test_a_stale_vm_state_whose_pid_was_reused_is_not_signalled(tmp_path: Path) -> None:
    """A supervisor that died left its state file; its pid now belongs to an
    unrelated process (here: a sleep of ours).  The state does not name that
    process (its start time differs), so nothing stops or signals it."""
    import json
    import os

    from lab.engines.base import start_time
    from lab.vm.session import VMSession, supervisor_alive

    other = subprocess.Popen(["sleep", "60"])
    try:
        born = start_time(other.pid) or 0
        state = {"state": "ready", "supervisor_pid": other.pid, "supervisor_start": born - 1}
        (tmp_path / "state.json").write_text(json.dumps(state))
        assert supervisor_alive(tmp_path) is None
        state["supervisor_start"] = start_time(other.pid)
        (tmp_path / "state.json").write_text(json.dumps(state))
        assert supervisor_alive(tmp_path) is not None  # the same process: it is the one named
        stale = dict(state, supervisor_start=None)
        (tmp_path / "state.json").write_text(json.dumps(stale))  # a file from before start times
        session = VMSession.__new__(VMSession)
        session.channel, session._sup, session.rundir = None, None, tmp_path
        session.stop()
        assert other.poll() is None, "an unrelated process was signalled"
        os.kill(other.pid, 0)
    finally:
        other.kill()
        other.wait()


def _qemu_accel(**kw: object) -> list[str]:
    from lab.vm.image import Image
    from lab.vm.kernels import Kernel
    from lab.vm.qemu import QemuConfig

    root = Path("/nonexistent-toalab-image")
    img = Image(Kernel("6.1", "generic", "6.1.0-57", "amd64", "6.1.192-3"), root, root / "vmlinux",
                root / "initramfs.cpio", root / "agent")  # fmt: skip
    argv = QemuConfig(image=img, **kw).argv(ctl_sock=Path("/c"), con_sock=Path("/s"))  # type: ignore[arg-type]
    i = argv.index("-accel")
    return argv[i + 1 : i + 2]


def test_tcg_runs_single_threaded_unless_asked() -> None:
    """Multi-threaded TCG corrupts the guest's live code patching (lab/vm/qemu.py)."""
    assert _qemu_accel(accel="tcg") == ["tcg,thread=single"]
    assert _qemu_accel(accel="tcg", tcg_thread="multi") == ["tcg,thread=multi"]
    assert _qemu_accel(accel="kvm") == ["kvm"]
    with pytest.raises(LabError, match=r"TCG thread mode 'many'.*single, multi"):
        _qemu_accel(accel="tcg", tcg_thread="many")
