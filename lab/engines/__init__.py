"""Engines by name; each is imported only when used."""

from __future__ import annotations

import importlib

from lab.engines.base import Engine, ExecResult, Job, LabRecord, start_helper, stop_helpers
from lab.errors import LabError

ENGINES = {
    "host": "lab.engines.host:HostEngine",
    "vm": "lab.engines.vm:VMEngine",
}

__all__ = [
    "ENGINES", "Engine", "ExecResult", "Job", "LabRecord", "engine_class", "start_helper", "stop_helpers",
]  # fmt: skip


def engine_class(kind: str) -> type[Engine]:
    try:
        target = ENGINES[kind]
    except KeyError:
        raise LabError(f"unknown engine '{kind}' (engines: {', '.join(ENGINES)})") from None
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise LabError(f"engine '{kind}' is not available: {e}") from None
