"""Where the VM engine keeps things, and the kernel pin (images/kernel.toml)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
PIN_FILE = IMAGES / "kernel.toml"


def build_dir() -> Path:
    """build/vm/ under the repo, or $TOALAB_VM_BUILD."""
    return Path(os.environ.get("TOALAB_VM_BUILD", REPO / "build" / "vm")).resolve()


@dataclass(frozen=True)
class KernelPin:
    abi: str  # 6.1.0-56
    version: str  # Debian package version, 6.1.192-2
    flavour: str  # generic | cloud | rt
    suffix: str  # amd64 | cloud-amd64 | rt-amd64

    @property
    def release(self) -> str:
        """What `uname -r` prints in the guest."""
        return f"{self.abi}-{self.suffix}"

    @property
    def image_pkg(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def headers_pkg(self) -> str:
        return f"linux-headers-{self.release}"


def flavours() -> dict[str, str]:
    return dict(_load_pin()["flavours"])


def default_flavour() -> str:
    return str(_load_pin()["kernel"].get("default_flavour", "generic"))


def load_pin(flavour: str | None = None) -> KernelPin:
    data = _load_pin()
    fl = flavour or str(data["kernel"].get("default_flavour", "generic"))
    table = data["flavours"]
    if fl not in table:
        raise LabError(f"unknown VM kernel flavour '{fl}' (flavours: {', '.join(table)})")
    k = data["kernel"]
    return KernelPin(abi=str(k["abi"]), version=str(k["version"]), flavour=fl, suffix=str(table[fl]))


def _load_pin() -> dict:
    try:
        with PIN_FILE.open("rb") as f:
            data = tomllib.load(f)
        data["kernel"]["abi"], data["kernel"]["version"], data["flavours"]
        return data
    except FileNotFoundError:
        raise LabError(f"{PIN_FILE}: missing (the VM kernel pin)") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise LabError(f"{PIN_FILE}: invalid kernel pin ({e})") from None
