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
# Under TCG, cryptomgr.notests saves ~0.3 s of crypto self-tests, and
# pci=noacpi ~0.8 s: routing the legacy INTx of each virtio PCI device through
# ACPI link objects costs ~0.26 s of AML interpretation per device, and virtio
# uses MSI-X anyway.  (acpi=off would save more but loses SMP under PVH boot.)
# reboot=t: a panic reboots by triple fault, which -no-reboot makes a qemu exit.
BASE_CMDLINE = (
    "console=ttyS0 loglevel=5 panic=-1 oops=panic softlockup_panic=1 "
    "cryptomgr.notests pci=noacpi reboot=t i8042.noaux i8042.nokbd random.trust_cpu=on"
)


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise LabError(f"{QEMU} not found: apt-get install qemu-system-x86")
    return path


TCG_THREADS = ("single", "multi")


@dataclass
class QemuConfig:
    image: Image
    accel: str  # kvm | tcg
    memory_mb: int = 1024
    cpus: int = 2
    results: Path | None = None
    extra_cmdline: str = ""
    # "pc" (default) or "microvm".  microvm boots ~0.5 s faster under TCG (no
    # PCI probing) but its TSC calibration against the PIT fails on a loaded
    # host and the guest then hangs early; pc is the robust choice.
    machine: str = "pc"
    # TCG in one host thread for all vCPUs ("single") or one each ("multi").
    # Multi-threaded TCG in this QEMU (7.2) breaks the kernel's live code
    # patching: a kprobe enabled on a function other CPUs are running
    # (text_poke_bp, as every kprobe, ftrace hook and static key does) now
    # and then leaves a CPU executing stale bytes, and the guest dies with
    # RIP 0 or an unclaimed int3.  It takes seconds of toggling a tracefs
    # kprobe on tcp_v4_destroy_sock under TCP traffic, no module of ours
    # loaded; single-threaded TCG ran the same for minutes cleanly
    # (kmod/README.md, "Guests under TCG").
    tcg_thread: str = "single"

    def argv(self, *, ctl_sock: Path, con_sock: Path) -> list[str]:
        img = self.image
        shared = img.shared_root
        cmdline = BASE_CMDLINE + (f" toalab.modroot={img.root}" if shared else "")
        if self.results is not None:
            cmdline += f" toalab.results={self.results}"
        if self.extra_cmdline:
            cmdline += " " + self.extra_cmdline
        for p in (img.root, self.results):
            if p is not None and any(c.isspace() for c in str(p)):
                raise LabError(f"{p}: the VM engine cannot use paths with spaces")
        if self.tcg_thread not in TCG_THREADS:
            modes = ", ".join(TCG_THREADS)
            raise LabError(f"TCG thread mode '{self.tcg_thread}' (TOALAB_TCG_THREAD): use one of {modes}")
        if self.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host"]
        else:
            accel = ["-accel", f"tcg,thread={self.tcg_thread}"]
        mmio = self.machine == "microvm"
        if mmio:
            # no PCI, no firmware: PVH straight into the kernel, ACPI only for
            # the CPUs and the virtio-mmio devices; the PIT/PIC/RTC are kept
            # for a stock kernel's timer setup
            machine = ["-M", "microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on"]
            vser, v9p = "virtio-serial-device", "virtio-9p-device"
        else:
            machine = ["-M", "pc"]
            vser, v9p = "virtio-serial-pci", "virtio-9p-pci"
        argv = [
            qemu_binary(),
            "-name", "toalab",
            *machine,
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
            "-device", f"{vser},id=vser",
            "-chardev", f"socket,id=ctl,path={ctl_sock}",
            "-device", "virtserialport,bus=vser.0,chardev=ctl,name=toalab.ctl",
        ]  # fmt: skip
        if shared:
            argv += [
                "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device", f"{v9p},fsdev=hostroot,mount_tag=hostroot",
            ]  # fmt: skip
        if shared and self.results is not None:
            argv += [
                "-fsdev",
                f"local,id=results,path={self.results},security_model=none,multidevs=remap",
                "-device",
                f"{v9p},fsdev=results,mount_tag=results",
            ]
        return argv
