"""Ulysses sequence parallelism through diffusers' context parallelism.

WanTransformer3DModel's `_cp_plan` splits the tokens after patch embedding (and the RoPE
tables) across the Ulysses group and gathers them at `proj_out`; self-attention all-to-alls
heads<->sequence. Cross-attention stays local (the text is not split).
"""
from __future__ import annotations

import contextlib
from typing import Any
from unittest import mock


def enable_ulysses(model: Any, cp_mesh: Any, degree: int, device_type: str) -> None:
    """Apply diffusers' Ulysses CP of `degree` on `cp_mesh` (a ("ring", "ulysses") DeviceMesh).

    The attention backend must be one diffusers marks as CP-capable ("native", "_native_cudnn",
    "flash", "sage", ...); the default native SDPA is. On CPU (tests, gloo) diffusers divides
    by torch.accelerator.device_count(), which is 0 there; it is patched to 1 for the call only.
    """
    import torch
    from diffusers.models._modeling_parallel import ContextParallelConfig

    cfg = ContextParallelConfig(ulysses_degree=degree, mesh=cp_mesh)
    patch = (mock.patch.object(torch.accelerator, "device_count", return_value=1) if device_type == "cpu"
             else contextlib.nullcontext())
    with patch:
        model.enable_parallelism(config=cfg)
