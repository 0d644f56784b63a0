"""Build what the VM boots, from Debian packages, cached in build/vm/.

    build/vm/debs/                    the downloaded .debs (kept: the mirror may drop them)
    build/vm/mirror.json              the kernel builds the package lists offer (lab/vm/kernels.py)
    build/vm/<release>/kernel.json    which build this is: series, flavour, packages and versions
    build/vm/<release>/root/          image + headers + kbuild packages extracted, depmod'ed
    build/vm/<release>/vmlinux        the kernel decompressed from vmlinuz (boots via PVH,
                                      which saves ~3 s of decompression per boot under TCG)
    build/vm/<release>/initramfs.cpio busybox, /init, the agent, the modules /init loads
    build/vm/agent/toalab-agent       the guest agent (static)

Each stage writes a stamp with the hash of its inputs and is redone only when
that hash changes; an up-to-date check costs a few stat() calls.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.progress import Ticker, finish
from lab.vm import kernels
from lab.vm.config import IMAGES, build_dir
from lab.vm.kernels import Kernel

BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = IMAGES / "init"
AGENT_DIR = IMAGES / "agent"
# What /init needs before it can mount the host's root: virtio (MMIO for
# microvm, PCI for pc), the
# virtio-serial control port, the 9p chain and overlay (for /tmp); dependencies
# come from modules.dep.
INITRAMFS_MODULES = ("virtio_mmio", "virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay")
# A kernel without 9p (cloud) boots a self-contained initramfs instead: these
# host programs with their libraries, and these network modules.
BUNDLE_BOOT_MODULES = ("virtio_mmio", "virtio_pci", "virtio_console")
BUNDLE_PROGRAMS = (
    "dash", "ip", "tc", "bridge", "ss", "nstat", "tcpdump", "ping", "sysctl", "bash",
    "modprobe", "insmod", "rmmod", "lsmod", "modinfo", "ethtool", "nc", "timeout", "bpftool",
)  # fmt: skip
BUNDLE_MODULES = (
    "veth", "bridge", "vxlan", "dummy", "8021q", "macvlan", "ipvlan", "sch_netem",
    "sch_ingress", "sch_fq", "cls_bpf", "act_bpf", "act_gact", "act_mirred",
)  # fmt: skip

Progress = Callable[[str], None]


TERMINAL = "terminal"  # progress="terminal": a status line on a terminal, nothing in a log (lab/progress.py)


def _progress(progress: Progress | str | None) -> Progress:
    if progress == TERMINAL:
        return Ticker(prefix="toalab vm")
    return progress or (lambda _m: None)  # type: ignore[return-value]


@dataclass(frozen=True)
class Image:
    kernel: Kernel
    root: Path  # extracted packages
    vmlinux: Path
    initramfs: Path
    agent: Path

    @property
    def release(self) -> str:
        return self.kernel.release

    @property
    def shared_root(self) -> bool:
        """True when the guest mounts the host's / over 9p; False: a self-contained
        initramfs (the cloud flavour has no 9p), results fetched over the channel."""
        return has_module(self.modules, "9p")

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.kernel.release

    @property
    def headers(self) -> Path:
        """The kbuild tree to build out-of-tree modules against (make -C <this> M=...)."""
        return self.root / "usr" / "src" / f"linux-headers-{self.kernel.release}"


class _Gone(Exception):
    """A package the lists named is not on the mirror (any more)."""


class ImageBuilder:
    """The image of one kernel: ImageBuilder("6.12"), ImageBuilder(flavour="rt"), or a
    resolved Kernel.  None: $TOALAB_KERNEL, else the default in images/kernel.toml."""

    def __init__(
        self,
        kernel: str | Kernel | None = None,
        *,
        flavour: str | None = None,
        build: Path | None = None,
        progress: Progress | str | None = TERMINAL,
    ) -> None:
        self.build_root = build or build_dir()
        self.progress = _progress(progress)
        self.request = kernel
        self.flavour = flavour
        if isinstance(kernel, Kernel):
            self.kernel = kernel
        else:
            self.kernel = kernels.resolve(kernel, flavour, note=self.progress, build=self.build_root)
        self.debs = self.build_root / "debs"

    @property
    def kdir(self) -> Path:
        return self.build_root / self.kernel.release

    def image(self) -> Image:
        return Image(
            kernel=self.kernel,
            root=self.kdir / "root",
            vmlinux=self.kdir / "vmlinux",
            initramfs=self.kdir / "initramfs.cpio",
            agent=self.build_root / "agent" / "toalab-agent",
        )

    def build(self) -> Image:
        self.build_root.mkdir(parents=True, exist_ok=True)
        # one builder at a time per build dir (parallel test runs, make -j)
        with open(self.build_root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._kernel_fetched()
            img = self.image()
            self._agent(img)
            self._initramfs(img)
        finish(self.progress)
        return img

    # -- stage: kernel packages -------------------------------------------------------
    def _kernel_fetched(self) -> None:
        """_kernel(), and when the lists were stale (the mirror dropped a build since
        the last apt-get update): refresh them, resolve again, and retry once."""
        try:
            self._kernel(self.image())
            return
        except _Gone as e:
            gone = str(e)
        if isinstance(self.request, Kernel):
            raise LabError(f"{gone} is no longer on the Debian mirror; ask for its series instead")
        if not kernels.apt_update(self.progress):
            raise LabError(
                f"{gone} is gone from the Debian mirror and apt-get update failed: check the network"
            )
        old = self.kernel
        self.kernel = kernels.resolve(self.request, self.flavour, note=self.progress, build=self.build_root)
        if self.kernel != old:
            self.progress(f"{gone} left the mirror; using {self.kernel.describe()}")
        try:
            self._kernel(self.image())
        except _Gone as e:
            raise LabError(
                f"{e} is in the package lists but not on the Debian mirror: try again later"
            ) from None

    def _kernel(self, img: Image) -> None:
        k = self.kernel
        inputs = {"kernel": [k.release, k.version, [list(p) for p in k.packages]], "code": 4}
        if _stamp_ok(self.kdir / "kernel.stamp", inputs) and img.vmlinux.exists():
            return
        t0 = time.monotonic()
        self.progress(f"kernel {k.describe()}: fetching packages")
        debs = [self._download(name, ver) for name, ver in k.packages]
        root = img.root
        tmp = self.kdir / "root.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for deb in debs:
                self.progress(f"  extracting {deb.name}")
                _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"extracting {deb.name}")
            _relocate_headers(tmp, root)
            self.progress(f"  depmod {k.release}")
            _run(["depmod", "-b", str(tmp), k.release], "depmod")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(root)
        vmlinuz = root / "boot" / f"vmlinuz-{k.release}"
        self.progress("  decompressing vmlinuz for direct (PVH) boot")
        if not _extract_vmlinux(vmlinuz, img.vmlinux):
            self.progress(
                "  could not decompress it (for LZ4: apt-get install lz4); booting the "
                "compressed image, ~2 s slower under TCG"
            )
        _json_write(self.kdir / "kernel.json", k.to_json())
        _json_write(self.kdir / "kernel.stamp", inputs)
        self.progress(f"kernel {k.release} ready in {time.monotonic() - t0:.1f} s")

    def _download(self, pkg: str, version: str) -> Path:
        """The .deb of pkg=version from build/vm/debs, fetched there first if needed.

        Fetched into a private directory and moved in whole: an interrupted download
        never leaves a truncated .deb in the cache."""
        self.debs.mkdir(parents=True, exist_ok=True)
        fname = f"{pkg}_{version.replace(':', '%3a')}_"
        for f in self.debs.glob(f"{fname}*.deb"):
            return f
        self.progress(f"  downloading {pkg}={version}")
        part = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.debs))
        try:
            p = subprocess.run(
                ["apt-get", "download", f"{pkg}={version}"], cwd=part, capture_output=True, text=True
            )
            got = list(part.glob(f"{fname}*.deb"))
            if p.returncode == 0 and got:
                dst = self.debs / got[0].name
                os.replace(got[0], dst)
                return dst
        finally:
            shutil.rmtree(part, ignore_errors=True)
        err = (p.stderr or p.stdout).strip()
        if re.search(r"Unable to locate package|was not found|Can't select|404\s+Not Found", err):
            raise _Gone(f"{pkg}={version}")
        last = err.splitlines()[-1] if err else f"exit {p.returncode}"
        raise LabError(
            f"cannot fetch {pkg}={version} ({last}): check the network and the apt sources, "
            "then run apt-get update; kernels built once keep working offline"
        )

    # -- stage: agent ------------------------------------------------------------------
    def _agent(self, img: Image) -> None:
        out = img.agent.parent
        inputs = {"src": _hash_files([AGENT_DIR / "toalab-agent.c", AGENT_DIR / "Makefile"])}
        if _stamp_ok(out / "agent.stamp", inputs) and img.agent.exists():
            return
        self.progress("agent: compiling (gcc -static)")
        out.mkdir(parents=True, exist_ok=True)
        img.agent.unlink(missing_ok=True)
        _run(["make", "-s", "-C", str(AGENT_DIR), f"O={out}"], "building the guest agent")
        _json_write(out / "agent.stamp", inputs)

    # -- stage: initramfs ----------------------------------------------------------------
    def _initramfs(self, img: Image) -> None:
        if not BUSYBOX.exists() or not _is_static(BUSYBOX):
            raise LabError(f"{BUSYBOX} missing or not static: apt-get install busybox-static")
        shared = img.shared_root
        boot_mods = module_closure(img.modules, INITRAMFS_MODULES if shared else BUNDLE_BOOT_MODULES)
        inputs: dict[str, object] = {
            "init": _hash_files([INIT_SCRIPT]),
            "agent": _hash_files([img.agent]),
            "busybox": _stat_key(BUSYBOX),
            "modules": [m.name for m in boot_mods],
            "kernel": _stamp_read(self.kdir / "kernel.stamp"),
            "code": 3,
        }
        if not shared:
            programs = _bundle_programs()
            inputs["bundle"] = [_stat_key(Path(p)) for p in programs]
        stamp = self.kdir / "initramfs.stamp"
        if _stamp_ok(stamp, inputs) and img.initramfs.exists():
            return
        cpio = Cpio()
        skip: set[str] = set()
        if shared:
            self.progress(f"initramfs: {len(boot_mods)} modules, busybox, agent")
            bindir = "bin"
            cpio.dir(bindir)
        else:
            self.progress(
                f"initramfs (self-contained: the {self.kernel.flavour} kernel has no 9p): "
                f"{len(programs)} host programs and their libraries, network modules"
            )
            bindir = "usr/bin"
            skip = {Path(p).name for p in programs}
            for top in ("/bin", "/sbin", "/lib", "/lib64"):  # merged /usr, as on the host
                cpio.mirror(top)
            for p in programs:
                cpio.mirror(p)
                for lib in shared_libs(p):
                    cpio.mirror(lib)
            self._bundle_modules(img, cpio)
            if "dash" in skip:
                # busybox sh would run its own applets (ip, ...) before the host programs
                cpio.symlink_once("usr/bin/sh", "dash")
            cpio.file("bundle", b"host programs, no 9p\n", 0o644)
        for d in ("dev", "proc", "sys", "newroot", "modules", "tmp", "run", "usr", bindir):
            cpio.dir_once(d)
        cpio.node("dev/console", stat.S_IFCHR | 0o600, 5, 1)
        cpio.file("init", INIT_SCRIPT.read_bytes(), 0o755)
        cpio.file(f"{bindir}/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in _busybox_applets():
            if applet != "busybox" and (shared or applet not in skip):
                cpio.symlink_once(f"{bindir}/{applet}", "busybox")
        cpio.file("toalab-agent", img.agent.read_bytes(), 0o755)
        names = []
        for m in boot_mods:
            name = _modname(m)
            cpio.file(f"modules/{name}.ko", _read_module(m), 0o644)
            names.append(name)
        cpio.file("modules.list", ("\n".join(names) + "\n").encode(), 0o644)
        tmp = img.initramfs.with_suffix(".tmp")
        tmp.write_bytes(cpio.finish())
        tmp.replace(img.initramfs)
        _json_write(stamp, inputs)

    def _bundle_modules(self, img: Image, cpio: Cpio) -> None:
        """The network modules (and deps) under /lib/modules/<release>, depmod'ed."""
        stage = self.kdir / "bundle-modules"
        shutil.rmtree(stage, ignore_errors=True)
        rel = self.kernel.release
        dst = stage / "lib" / "modules" / rel
        dst.mkdir(parents=True)
        for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            if (img.modules / f).exists():
                shutil.copy(img.modules / f, dst / f)
        for m in module_closure(img.modules, BUNDLE_MODULES, optional=True):
            out = dst / m.relative_to(img.modules)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(m, out)
        _run(["depmod", "-b", str(stage), rel], "depmod (bundle)")
        for p in sorted(stage.rglob("*")):
            name = f"usr/{p.relative_to(stage)}"
            if p.is_dir():
                cpio.dir_once(name)
            else:
                cpio.file(name, p.read_bytes(), 0o644)


# -- modules -----------------------------------------------------------------------------
def _modname(p: Path | str) -> str:
    return os.path.basename(p).split(".ko")[0]


def _key(path: str) -> str:
    return _modname(path).replace("-", "_")


@functools.lru_cache(maxsize=8)
def _moddep(moddir: str, mtime_ns: int) -> tuple[dict[str, str], dict[str, list[str]], frozenset[str]]:
    deps: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            target, _, rest = line.partition(":")
            name = _key(target)
            paths[name] = target
            deps[name] = [_key(d) for d in rest.split()]
    builtin: frozenset[str] = frozenset()
    bfile = os.path.join(moddir, "modules.builtin")
    if os.path.exists(bfile):
        with open(bfile) as f:
            builtin = frozenset(_key(x) for x in f.read().split())
    return paths, deps, builtin


def has_module(moddir: Path, name: str) -> bool:
    try:
        module_closure(moddir, [name])
        return True
    except LabError:
        return False


def module_closure(moddir: Path, wanted: Iterable[str], *, optional: bool = False) -> list[Path]:
    """The module files for `wanted` and their dependencies, in load order.

    Built-in modules are skipped; with optional=True so are missing ones."""
    try:
        mtime = (moddir / "modules.dep").stat().st_mtime_ns
    except FileNotFoundError:
        raise LabError(f"{moddir}/modules.dep missing: run 'toalab vm build'") from None
    paths, deps, builtin = _moddep(str(moddir), mtime)
    order: list[str] = []

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in order or n in builtin:
            return
        if n not in paths:
            raise LabError(f"kernel module {n} not found in {moddir}")
        for d in deps[n]:
            if d not in stack:
                visit(d, (*stack, n))
        order.append(n)

    for w in wanted:
        n = w.replace("-", "_")
        if optional and n not in paths:
            continue
        visit(n, ())
    return [moddir / paths[n] for n in order]


def _read_module(p: Path) -> bytes:
    data = p.read_bytes()
    if p.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if p.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if p.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data


# -- vmlinux ------------------------------------------------------------------------------
_MAGICS = {
    "xz": b"\xfd7zXZ\x00",
    "gzip": b"\x1f\x8b\x08",
    "zstd": b"\x28\xb5\x2f\xfd",
    "lz4": b"\x02\x21\x4c\x18",
}


def _extract_vmlinux(vmlinuz: Path, out: Path) -> bool:
    """Decompress the ELF vmlinux out of a bzImage; fall back to the bzImage itself."""
    data = vmlinuz.read_bytes()
    for kind, magic in _MAGICS.items():
        off = data.find(magic)
        while off != -1:
            elf = _try_decompress(kind, data[off:])
            if elf and elf[:4] == b"\x7fELF":
                tmp = out.with_suffix(".tmp")
                tmp.write_bytes(elf)
                tmp.replace(out)
                return True
            off = data.find(magic, off + 1)
    # qemu boots a bzImage too, only slower (it decompresses itself on every boot)
    shutil.copyfile(vmlinuz, out)
    return False


def _try_decompress(kind: str, blob: bytes) -> bytes | None:
    try:
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
        if kind == "gzip":
            return gzip.GzipFile(fileobj=io.BytesIO(blob)).read()
        tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"]}[kind]
        if shutil.which(tool[0]) is None:
            return None
        p = subprocess.run(tool, input=blob, capture_output=True)
        return p.stdout or None
    except (lzma.LZMAError, OSError, EOFError, zlib.error):
        return None


# -- cpio (newc) --------------------------------------------------------------------------
class Cpio:
    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._names.add(name)
        nameb = name.encode() + b"\0"
        fields = [
            self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
            0, 0, rdev[0], rdev[1], len(nameb), 0,
        ]  # fmt: skip
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._parts.append(hdr + nameb + b"\0" * (-(len(hdr) + len(nameb)) % 4))
        self._parts.append(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def node(self, name: str, mode: int, major: int, minor: int) -> None:
        self._entry(name, mode, rdev=(major, minor))

    def dir_once(self, name: str) -> None:
        if name not in self._names:
            self.dir(name)

    def symlink_once(self, name: str, target: str) -> None:
        if name not in self._names:
            self.symlink(name, target)

    def mirror(self, path: str) -> None:
        """Copy a host path into the archive at the same place, symlinks included."""
        parts = Path(os.path.normpath(path)).parts[1:]
        cur = Path("/")
        for i, comp in enumerate(parts):
            cur = cur / comp
            rel = str(cur)[1:]
            if cur.is_symlink():
                target = os.readlink(cur)
                self.symlink_once(rel, target)
                base = Path(target) if os.path.isabs(target) else cur.parent / target
                self.mirror(str(base.joinpath(*parts[i + 1 :])))
                return
            if i < len(parts) - 1 or cur.is_dir():
                self.dir_once(rel)
            elif rel not in self._names:
                self.file(rel, cur.read_bytes(), cur.stat().st_mode & 0o7777)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)


# -- helpers ------------------------------------------------------------------------------
def _relocate_headers(tmp: Path, root: Path) -> None:
    """Point the headers' `include /usr/src/...-common/Makefile` at the extracted tree
    (it is absolute: as packaged, it would build against whatever the host installed)."""
    for mk in tmp.glob("usr/src/linux-headers-*/Makefile"):
        text = mk.read_text()
        fixed = re.sub(r"^include /usr/src/", f"include {root}/usr/src/", text, flags=re.M)
        if fixed != text:
            mk.write_text(fixed)


def _bundle_programs() -> list[str]:
    out = []
    for name in BUNDLE_PROGRAMS:
        p = shutil.which(name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if p:
            out.append(p)
    return out


def shared_libs(program: str) -> list[str]:
    """The shared libraries (and the ELF interpreter) a host program loads."""
    p = subprocess.run(["ldd", program], capture_output=True, text=True)
    libs = []
    for line in p.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(m.group(1))
    return libs


def _busybox_applets() -> list[str]:
    out = _run([str(BUSYBOX), "--list"], "listing busybox applets")
    return [a for a in out.split() if re.fullmatch(r"[\w.\[-]+", a)]


def _is_static(p: Path) -> bool:
    with p.open("rb") as f:
        head = f.read(65536)
    return b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head


def _run(argv: list[str], what: str) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise LabError(f"{what}: {argv[0]} not found") from None
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()
        raise LabError(f"{what} failed: {err[-1] if err else f'exit {p.returncode}'}")
    return p.stdout


def _stat_key(p: Path) -> list[object]:
    st = p.stat()
    return [str(p), st.st_size, int(st.st_mtime)]


def _hash_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _stamp_read(p: Path) -> object:
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _stamp_ok(p: Path, inputs: object) -> bool:
    return _stamp_read(p) == json.loads(json.dumps(inputs))


def _json_write(p: Path, data: object) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, p)
