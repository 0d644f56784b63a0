"""toalab: a network emulation lab for the TOA/UOA address option.

    from lab import Lab, Topology, topology
    topo = topology.load("topologies/fullnat-4to4.yaml")   # or Topology("mini") + add_node/add_link
    with Lab.up(topo) as lab:
        lab.exec("client", ["ping", "-c1", "192.0.2.11"])
        lab.kernel()          # the kernel it lives in (lab/kernel.py)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["KernelHandle", "Lab", "Topology"]

if TYPE_CHECKING:
    from lab.kernel import KernelHandle
    from lab.net import Lab
    from lab.topology import Topology

# imported on first use: `toalab --help` and `toalab down` need none of them
_LAZY = {"Lab": "lab.net", "Topology": "lab.topology", "KernelHandle": "lab.kernel"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
