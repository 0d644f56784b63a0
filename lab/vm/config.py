"""Where the VM engine keeps things (which kernel it boots: lab/vm/kernels.py)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
PIN_FILE = IMAGES / "kernel.toml"


def build_dir() -> Path:
    """build/vm/ under the repo, or $TOALAB_VM_BUILD."""
    return Path(os.environ.get("TOALAB_VM_BUILD", REPO / "build" / "vm")).resolve()
