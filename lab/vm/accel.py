"""KVM where it really boots a guest, TCG otherwise.

/dev/kvm existing is not enough: on a PVM host it opens fine and a stock
kernel then hangs.  So the probe boots the real kernel + initramfs under KVM
with `toalab.probe=1` (init prints a marker and powers off at once) and gives
it a few seconds.  The verdict is cached per host boot, host kernel, qemu and
guest kernel, in build/vm/accel.json.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import select
import subprocess
import time
from pathlib import Path

from lab.errors import LabError
from lab.vm.image import Image
from lab.vm.qemu import qemu_binary

ACCELS = ("auto", "kvm", "tcg")
PROBE_TIMEOUT = 6.0
PROBE_MARKER = b"TOALAB-PROBE-OK"
_KVM_GET_API_VERSION = 0xAE00


def kvm_usable_device() -> str | None:
    """None if /dev/kvm can be opened and answers; otherwise why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm: {e.strerror}"
    try:
        if fcntl.ioctl(fd, _KVM_GET_API_VERSION) != 12:
            return "/dev/kvm: unexpected KVM API version"
    except OSError as e:
        return f"/dev/kvm: {e.strerror}"
    finally:
        os.close(fd)
    return None


def _cache_key(image: Image) -> dict[str, object]:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "?"
    try:
        st = os.stat("/dev/kvm")
        kvm = [st.st_rdev, int(st.st_ctime)]
    except OSError:
        kvm = None
    q = os.stat(qemu_binary())
    return {
        "boot_id": boot_id,
        "host": platform.release(),
        "kvm": kvm,
        "qemu": [q.st_size, int(q.st_mtime)],
        "guest": image.release,
    }


def resolve(requested: str, image: Image, cache_dir: Path, log: Path | None = None) -> str:
    """The accelerator to use: `requested` unless it is 'auto'."""
    if requested not in ACCELS:
        raise LabError(f"unknown accelerator '{requested}' (choose from {', '.join(ACCELS)})")
    if requested == "tcg":
        return "tcg"
    if requested == "kvm":
        why = kvm_usable_device()
        if why:
            raise LabError(f"--accel kvm: {why}")
        return "kvm"
    if kvm_usable_device() is not None:
        return "tcg"
    cache = cache_dir / "accel.json"
    key = _cache_key(image)
    try:
        entries = json.loads(cache.read_text()).get("entries", {})
    except (OSError, ValueError, AttributeError):
        entries = {}
    hit = entries.get(image.release)
    if isinstance(hit, dict) and hit.get("key") == key and hit.get("accel") in ("kvm", "tcg"):
        return str(hit["accel"])
    ok, detail = probe_kvm(image, log)
    verdict = "kvm" if ok else "tcg"
    entries[image.release] = {"key": key, "accel": verdict, "detail": detail, "at": time.time()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"entries": entries}, indent=1))
    tmp.replace(cache)
    return verdict


def cached_detail(image: Image, cache_dir: Path) -> str:
    try:
        return str(json.loads((cache_dir / "accel.json").read_text())["entries"][image.release]["detail"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def probe_kvm(image: Image, log: Path | None = None, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot the guest kernel under KVM until init runs; True if it did in time."""
    argv = [
        qemu_binary(),
        "-M", "pc", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-nic", "none",
        "-serial", "stdio",
        "-kernel", str(image.vmlinux), "-initrd", str(image.initramfs),
        "-append", "console=ttyS0 loglevel=3 panic=-1 acpi=off reboot=t toalab.probe=1",
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while time.monotonic() - t0 < timeout:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
                if PROBE_MARKER in out:
                    return True, f"init reached in {time.monotonic() - t0:.2f} s"
        if proc.poll() is not None:
            tail = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
            return False, f"qemu -accel kvm exited {proc.returncode}: {tail[0]}"
        return False, f"no init within {timeout:.0f} s under kvm (hung)"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_bytes(out)
