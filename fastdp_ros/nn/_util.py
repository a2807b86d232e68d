"""Small helpers shared by the nn modules."""

from __future__ import annotations

import torch


def is_tracing() -> bool:
    """True while a graph is traced, scripted or compiled: Python-side checks are skipped then,
    so that no Python value is taken from a tensor and baked into the graph."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())
