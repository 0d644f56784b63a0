"""Named network namespaces, made and entered in-process.

iproute2 and pyroute2 fork a helper per namespace; doing unshare/setns on
the calling thread instead is what makes ``toalab up`` take milliseconds.
Only the calling thread changes namespace (CLONE_NEWNET is per thread), and
``entered`` always returns it to where it was.  Namespaces are bind-mounted
under /run/netns exactly as ``ip netns add`` does, so ``ip netns`` and
``ip netns exec`` see them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

NETNS_RUN_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)

    def call(self, what: str, ret: int) -> None:
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")


def _libc() -> _Libc:
    return _Libc()


def path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def _prepare_rundir(libc: _Libc) -> None:
    # As iproute2 does: /run/netns is a shared bind mount so that namespaces
    # made here are visible from other mount namespaces (ip netns exec).
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    run = NETNS_RUN_DIR.encode()
    if libc.lib.mount(b"", run, b"none", _MS_SHARED | _MS_REC, None) != 0:
        libc.call("bind /run/netns", libc.lib.mount(run, run, b"none", _MS_BIND | _MS_REC, None))
        libc.call("share /run/netns", libc.lib.mount(b"", run, b"none", _MS_SHARED | _MS_REC, None))


def create(names: list[str]) -> None:
    """Create named namespaces; raises FileExistsError if one exists."""
    libc = _libc()
    _prepare_rundir(libc)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        for name in names:
            p = path(name)
            os.close(os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
            try:
                libc.call("unshare(CLONE_NEWNET)", libc.lib.unshare(_CLONE_NEWNET))
                try:
                    libc.call(
                        f"bind {p}",
                        libc.lib.mount(b"/proc/thread-self/ns/net", p.encode(), b"none", _MS_BIND, None),
                    )
                finally:
                    libc.call("setns back", libc.lib.setns(home, _CLONE_NEWNET))
            except OSError:
                _remove_one(libc, p)
                raise
    finally:
        os.close(home)


def _remove_one(libc: _Libc, p: str) -> None:
    libc.lib.umount2(p.encode(), _MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)


def remove(name: str) -> bool:
    """Remove a named namespace; False if it did not exist."""
    p = path(name)
    if not os.path.exists(p):
        return False
    _remove_one(_libc(), p)
    return True


def pids(names: list[str]) -> list[int]:
    """The processes whose network namespace is one of these (what ``ip netns
    pids`` finds: the same namespace inode), this one excepted."""
    want = set()
    for n in names:
        with contextlib.suppress(OSError):
            st = os.stat(path(n))
            want.add((st.st_dev, st.st_ino))
    out = []
    if not want:
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{entry}/ns/net")
            if (st.st_dev, st.st_ino) in want:
                out.append(int(entry))
    return out


def end_processes(names: list[str], grace: float = 1.0) -> list[int]:
    """End what still runs inside these namespaces (a lab's down): SIGTERM, then
    SIGKILL after `grace` seconds.  The namespace is the identity: a pid is
    signalled only while it is still inside one of them."""
    import signal
    import time

    victims = pids(names)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while victims and time.monotonic() < deadline:
        for pid in victims:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our own (a Job): reap it
        time.sleep(0.02)
        victims = [p for p in victims if p in set(pids(names))]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return victims


def listing(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def exists(name: str) -> bool:
    return os.path.exists(path(name))


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace ``name``."""
    libc = _libc()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            fd = os.open(path(name), os.O_RDONLY)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, f"no network namespace '{name}'") from None
        try:
            libc.call(f"setns {name}", libc.lib.setns(fd, _CLONE_NEWNET))
        finally:
            os.close(fd)
        try:
            yield
        finally:
            libc.call("setns back", libc.lib.setns(home, _CLONE_NEWNET))
    finally:
        os.close(home)


def write_sysctl(key: str, value: str) -> None:
    """Write a net.* sysctl of the namespace the calling thread is in."""
    # /proc/sys/net resolves against the opener's namespace at open time.
    # sysctl(8) convention: with a '/' in the key, '/' separates, not '.'
    p = "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))
    with open(p, "w") as f:
        f.write(value)
