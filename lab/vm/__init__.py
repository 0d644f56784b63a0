"""The VM engine's machinery: image build, accelerator choice, qemu, the guest agent channel.

Public API (imported lazily, so that the supervisor process starts fast):
    VMSession   boot once, run many commands/scenarios (context manager)
    VMError     the guest died/hung/never came up (a LabError naming the console log)
    RemoteJob   a process running in the guest
    ImageBuilder, Image   the pinned kernel + initramfs in build/vm/
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VMSession": "lab.vm.session",
    "VMError": "lab.vm.client",
    "RemoteJob": "lab.vm.client",
    "ImageBuilder": "lab.vm.image",
    "Image": "lab.vm.image",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
