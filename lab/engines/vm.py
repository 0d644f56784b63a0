"""VM engine: the topology's namespaces live in a qemu guest booting the pinned kernel.

`toalab up TOPO --engine vm` boots a persistent guest (named ``lab-<lab>``),
runs the plan's shell rendering in it, and records the guest's name in the
lab record; every later `toalab exec/shell/status/down` reattaches to the
guest through its supervisor's socket.  `down` removes the namespaces and
stops the guest it booted.

To let one boot serve many labs (scenario runner, pytest plugin), pass the
name of a running VMSession as the ``vm`` engine option: such a lab only
borrows the guest, and its `down` removes its namespaces and nothing else.

    with VMSession() as vm:
        with Lab.up(topo, engine="vm", vm=vm.name) as lab:
            lab.exec("client", ["ping", "-c1", "10.0.1.2"]).check()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

from lab import programs
from lab.engines.base import Engine, ExecResult, LabRecord
from lab.errors import LabError
from lab.kernel import KernelHandle
from lab.plan import Plan
from lab.topology import Topology
from lab.vm.client import RemoteJob, VMError
from lab.vm.session import VMSession, run_root, rundir_for, supervisor_alive

VM_PREFIX = "lab-"
UP_TIMEOUT = 120.0


def _gist(err: str) -> str:
    """The line of a failed script's stderr that says what failed (bpftool ends
    with hints; the 'Error:' line before them is the one)."""
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith(("Error:", "RTNETLINK", "Cannot", "ip:"))]
    return (said or lines or ["(no message)"])[-1]


class VMEngine(Engine):
    kind = "vm"

    def __init__(self, record: LabRecord) -> None:
        super().__init__(record)
        self._vm: VMSession | None = None

    # -- the guest ---------------------------------------------------------------------
    @property
    def vm_name(self) -> str:
        return str(self.record.engine_data.get("vm") or f"{VM_PREFIX}{self.name}")

    @property
    def owns_vm(self) -> bool:
        return bool(self.record.engine_data.get("owns_vm", "vm" not in self.record.engine_data))

    def vm(self) -> VMSession:
        """The guest, attached on first use (a later CLI call reattaches here)."""
        if self._vm is None:
            try:
                self._vm = VMSession.attach(self.vm_name)
            except VMError as e:
                raise VMError(f"lab '{self.name}': {e} (remove the lab: toalab down {self.name})") from None
        return self._vm

    def kernel(self) -> KernelHandle:
        """The guest's kernel (its root namespace)."""
        return self.vm().kernel()

    def close(self) -> None:
        """Drop this process's connection to the guest (the guest keeps running)."""
        if self._vm is not None:
            self._vm.close()
            self._vm = None

    # -- build / remove ------------------------------------------------------------------
    def up(self, topo: Topology) -> None:
        plan = Plan.build(topo, self.name)
        data = self.record.engine_data
        borrowed = "vm" in data
        data["owns_vm"] = not borrowed
        self.record.save()  # before building: a crash halfway stays findable
        try:
            if borrowed:
                vm = self.vm()
            else:
                data["vm"] = self.vm_name
                self.record.save()
                vm = VMSession(
                    self.vm_name,
                    persistent=True,
                    kernel=data.get("kernel"),
                    flavour=data.get("flavour"),
                    accel=data.get("accel") or "auto",
                    extra={"lab": self.name},
                )
                self._vm = vm
                vm.start()
            data.update(
                accel=vm.accel,
                release=vm.release,
                console_log=str(vm.console_log),
                results=str(vm.results),
            )
            self.record.save()
            clash = vm.run(["ip", "netns", "list"], timeout=30).stdout.split()
            taken = [ns for ns in plan.namespaces.values() if ns in clash]
            if taken:
                raise LabError(
                    f"namespace {taken[0]} already exists in VM '{vm.name}': "
                    f"lab '{self.name}' is up or was left over; run 'toalab down {self.name}' first"
                )
            # one round trip: the plan's shell, then the programs phase as the host
            # engine runs it, the programs loading (the verifier) while the links are made
            try:
                programs.apply(self.kernel(), plan.programs, prelude=plan.render_shell())
            except LabError as e:
                why = _gist(str(e))
                raise LabError(f"building lab '{self.name}' in VM '{vm.name}' failed: {why}") from None
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        self.record.state = "up"
        self.record.save()

    def down(self) -> None:
        vm_alive = supervisor_alive(rundir_for(self.vm_name)) is not None
        if vm_alive and not self.owns_vm:
            with contextlib.suppress(LabError):
                teardown = Plan(lab=self.name, namespaces=self.record.namespaces).render_teardown()
                self.vm().sh(teardown, timeout=30)
                programs.teardown(self.kernel(), self.name)
        if self.owns_vm:
            if vm_alive:
                # without a shared root (cloud flavour) results live in the guest: fetch them
                with contextlib.suppress(LabError):
                    if not self.vm().shared_root:
                        self.vm().sync_results()
            if self._vm is not None:
                self._vm.stop()
                self._vm = None
            elif vm_alive:
                VMSession(self.vm_name, persistent=True, progress=None).stop()
            # the VM's sockets, spec and console log go with it (its results stay)
            shutil.rmtree(rundir_for(self.vm_name), ignore_errors=True)
        else:
            self.close()
        self.record.forget()

    @classmethod
    def cleanup_leftovers(cls) -> list[str]:
        """Stop lab VMs whose lab record is gone, and remove their run directories."""
        removed = []
        root = run_root()
        if not root.is_dir():
            return removed
        for d in sorted(root.iterdir()):
            if not d.name.startswith(VM_PREFIX) or LabRecord.path_for(d.name[len(VM_PREFIX) :]).exists():
                continue
            if supervisor_alive(d) is not None:
                VMSession(d.name, persistent=True, progress=None).stop()
                removed.append(f"vm {d.name}")
            shutil.rmtree(d, ignore_errors=True)
        return removed

    # -- running programs -------------------------------------------------------------------
    def exec(
        self, node: str, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None
    ) -> ExecResult:
        ns = self.record.ns(node)
        if not argv:
            raise LabError("no command given (use: toalab exec NODE -- CMD ...)")
        try:
            return self.vm().run(argv, netns=ns, timeout=timeout, input=input)
        except VMError:
            raise
        except LabError as e:
            raise LabError(f"{node}: {e}") from None

    def spawn(self, node: str, argv: Sequence[str]) -> RemoteJob:
        if not argv:
            raise LabError("no command given")
        return self.vm().spawn(argv, netns=self.record.ns(node))

    def run_interactive(self, node: str, argv: Sequence[str]) -> int:
        if not argv:
            raise LabError("no command given (use: toalab exec NODE -- CMD ...)")
        code = self.vm().interactive(argv, netns=self.record.ns(node))
        return 128 - code if code < 0 else code

    def stream(self, node: str, argv: Sequence[str], out: BinaryIO) -> int:
        def to_out(b: bytes) -> None:
            out.write(b)
            out.flush()

        def to_err(b: bytes) -> None:
            sys.stderr.buffer.write(b)
            sys.stderr.buffer.flush()

        job = self.vm().spawn(argv, netns=self.record.ns(node), on_stdout=to_out, on_stderr=to_err)
        try:
            code = job.wait()
        except KeyboardInterrupt:
            job.signal(signal.SIGINT)
            code = job.wait()
        return 128 - code if code < 0 else code

    def shell(self, node: str) -> int:
        ns = self.record.ns(node)
        ps1 = f"[{self.name}:{node} vm] \\w# "
        shell = os.environ.get("SHELL", "/bin/bash")
        argv = ["env", f"PS1={ps1}", shell, "--norc", "-i"]
        if not shell.endswith("bash"):
            argv = ["env", f"PS1={ps1}", shell, "-i"]
        code = self.vm().interactive(argv, netns=ns)
        return 128 - code if code < 0 else code

    def status(self) -> dict[str, Any]:
        st = super().status()
        state = supervisor_alive(rundir_for(self.vm_name))
        if state is None:
            st["vm"] = {"name": self.vm_name, "state": "not running"}
            if self.record.state == "up":
                st["state"] = "broken (its VM is gone)"
            return st
        st["vm"] = {
            k: state.get(k)
            for k in (
                "name", "state", "accel", "release", "qemu_pid", "ready_s",
                "console_log", "results", "warnings",
            )
        }  # fmt: skip
        st["vm"]["shared"] = not self.owns_vm
        return st
