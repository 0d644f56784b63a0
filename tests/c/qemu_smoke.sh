#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# qemu_smoke.sh - a developer's quick check of toa.ko / uoa.ko in a guest:
# boot a kernel with a busybox initramfs holding the modules and the
# static example programs, run the 4to4 / 6to6 / 6to4 / 4in6 / v4-mapped
# cases over loopback for TCP and UDP, load/unload under traffic, print
# the results and power off.  Not the lab's VM suite; just for kmod work.
#
#   tests/c/qemu_smoke.sh /path/to/vmlinuz-6.1.0-56-amd64 [KDIR]
#
# Needs qemu-system-x86_64, a static /usr/bin/busybox, cpio.  Uses KVM
# with ACCEL=kvm (TCG by default).  Prints the guest console; the last line is
# "SMOKE: N passed, M failed".
set -eu

KERNEL=${1:?usage: $0 VMLINUZ [KDIR]}
KDIR=${2:-/usr/src/linux-headers-6.1.0-56-amd64}
HERE=$(cd "$(dirname "$0")" && pwd)
KMOD=$HERE/../../kmod
WORK=$(mktemp -d /tmp/toa-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

make -s -C "$KMOD" modules KDIR="$KDIR" >/dev/null
make -s -C "$KMOD" userspace STATIC=1 BUILD="$WORK/build" >/dev/null

R=$WORK/root
mkdir -p "$R/bin" "$R/proc" "$R/sys" "$R/dev" "$R/tmp"
cp /usr/bin/busybox "$R/bin/"
cp "$KMOD/toa/toa.ko" "$KMOD/uoa/uoa.ko" "$R/"
for p in tcp_server tcp_client udp_server udp_client test_toa_opt; do
	cp "$WORK/build/$p" "$R/bin/"
done
cp "$HERE/qemu_smoke_guest.sh" "$R/init"
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet) > "$WORK/initrd"

# KVM is opt-in (ACCEL=kvm): on some hosts a KVM guest hangs at boot.
ACCEL=${ACCEL:-tcg}
timeout 600 qemu-system-x86_64 -M pc -accel "$ACCEL" -m 512 -smp 2 \
	-nodefaults -no-user-config -display none -nic none -serial stdio \
	-kernel "$KERNEL" -initrd "$WORK/initrd" -no-reboot \
	-append "console=ttyS0 loglevel=4 panic=-1 oops=panic acpi=off \
reboot=t cryptomgr.notests i8042.noaux i8042.nokbd random.trust_cpu=on"
