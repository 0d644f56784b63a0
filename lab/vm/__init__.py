"""The VM engine's machinery: image build, accelerator choice, qemu, the guest agent channel.

Public API:
    VMSession   boot once, run many commands/scenarios (context manager)
    VMError     the guest died/hung/never came up (a LabError naming the console log)
    ImageBuilder, Image   the pinned kernel + initramfs in build/vm/
"""

from lab.vm.client import RemoteJob, VMError
from lab.vm.image import Image, ImageBuilder
from lab.vm.session import VMSession

__all__ = ["Image", "ImageBuilder", "RemoteJob", "VMError", "VMSession"]
