"""The qemu command line of a toalab guest."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.vm.image import Image

QEMU = "qemu-system-x86_64"

# loglevel=5 keeps the boot quiet (serial output is slow under TCG) but still
# shows warnings, oopses (KERN_DEFAULT) and panics.  oops=panic: an oops in a
# module under test stops the guest at once, with the evidence on the
# console; panic=-1 + -no-reboot turn the panic into a qemu exit.
# cryptomgr.notests saves ~0.3 s of crypto self-tests per TCG boot.
BASE_CMDLINE = (
    "console=ttyS0 loglevel=5 panic=-1 oops=panic softlockup_panic=1 "
    "cryptomgr.notests tsc=reliable no_timer_check i8042.noaux i8042.nokbd "
    "random.trust_cpu=on"
)


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise LabError(f"{QEMU} not found: apt-get install qemu-system-x86")
    return path


@dataclass
class QemuConfig:
    image: Image
    accel: str  # kvm | tcg
    memory_mb: int = 1024
    cpus: int = 2
    results: Path | None = None
    extra_cmdline: str = ""

    def argv(self, *, ctl_sock: Path, con_sock: Path) -> list[str]:
        img = self.image
        cmdline = f"{BASE_CMDLINE} toalab.modroot={img.root}"
        if self.results is not None:
            cmdline += f" toalab.results={self.results}"
        if self.extra_cmdline:
            cmdline += " " + self.extra_cmdline
        for p in (img.root, self.results):
            if p is not None and any(c.isspace() for c in str(p)):
                raise LabError(f"{p}: the VM engine cannot use paths with spaces")
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else ["-accel", "tcg"]
        argv = [
            qemu_binary(),
            "-name", "toalab",
            "-M", "pc",
            *accel,
            "-m", str(self.memory_mb),
            "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-nic", "none",
            "-kernel", str(img.vmlinux),
            "-initrd", str(img.initramfs),
            "-append", cmdline,
            "-chardev", f"socket,id=con,path={con_sock}",
            "-serial", "chardev:con",
            "-device", "virtio-serial-pci,id=vser",
            "-chardev", f"socket,id=ctl,path={ctl_sock}",
            "-device", "virtserialport,bus=vser.0,chardev=ctl,name=toalab.ctl",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]  # fmt: skip
        if self.results is not None:
            argv += [
                "-virtfs",
                f"local,path={self.results},mount_tag=results,security_model=none,multidevs=remap",
            ]
        return argv
