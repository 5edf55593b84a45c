"""CUDA caching-allocator settings the runtime relies on.

Measured on an H200 (bench/budgets.py, 2026-11-22): under a tight VRAM budget the default
allocator kept 13-28% of its reserved memory unused between allocations, enough to turn a plan
that fits into an out-of-memory error. Expandable segments let freed blocks be reused across
sizes, so we switch them on before the first large allocation. Set PYTORCH_CUDA_ALLOC_CONF
yourself to opt out: an explicit user setting is left alone.
"""
from __future__ import annotations

import os

import torch

_done = False


def enable_expandable_segments() -> bool:
    """Turn on expandable segments for the CUDA allocator once per process; True if they are on."""
    global _done
    if _done:
        return True
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if "expandable_segments" in conf:
        _done = "expandable_segments:True" in conf
        return _done
    if not torch.cuda.is_available():
        return False
    # Allocator settings can change after CUDA is initialised (new segments follow them). torch 2.10+
    # names the setter per accelerator; older releases have the CUDA one.
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    try:
        setter("expandable_segments:True")
    except (AttributeError, RuntimeError):
        return False
    _done = True
    return True
