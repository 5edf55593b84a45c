"""ComfyUI's "fp8_scaled" checkpoint format.

ComfyUI repackages Wan2.2 and umt5 as fp8 files where a linear weight `X.weight` is stored in
float8 and a float32 scalar `X.scale_weight` holds its scale (real = fp8 * scale). A marker
tensor `scaled_fp8` (empty, or 2 elements when inputs are scaled too) flags the file; an
optional `X.scale_input` serves fp8 matmuls. diffusers and transformers know none of this, so
we turn such a state dict back into ordinary weights before handing it to them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily so header-only inspection (estimator route, CLI) stays light
    import torch

MARKER = "scaled_fp8"


def is_scaled_fp8(keys) -> bool:
    """True when the key set follows ComfyUI's scaled-fp8 layout."""
    return any(k == MARKER or k.endswith("." + MARKER) or k.endswith(".scale_weight") for k in keys)


def dequantize_scaled_fp8(sd: "dict[str, torch.Tensor]", dtype: "torch.dtype | None" = None) -> "dict[str, torch.Tensor]":
    """Return a state dict with every `X.weight` multiplied by `X.scale_weight` and cast to dtype.

    Drops the marker and the scale tensors. Non-scaled tensors are cast to dtype only when they
    are floating point; the caller decides the final storage precision afterwards.
    """
    import torch

    dtype = torch.bfloat16 if dtype is None else dtype
    out: dict[str, torch.Tensor] = {}
    scales = {k[: -len(".scale_weight")]: v for k, v in sd.items() if k.endswith(".scale_weight")}
    for k, v in sd.items():
        if k == MARKER or k.endswith("." + MARKER) or k.endswith(".scale_weight") or k.endswith(".scale_input"):
            continue
        if k.endswith(".weight") and k[: -len(".weight")] in scales:
            s = scales[k[: -len(".weight")]].to(torch.float32)
            out[k] = (v.to(torch.float32) * s).to(dtype)
        elif v.is_floating_point():
            out[k] = v.to(dtype)
        else:
            out[k] = v
    return out


def quantize_scaled_fp8(sd: "dict[str, torch.Tensor]", should_quantize, fp8_dtype: "torch.dtype | None" = None) -> "dict[str, torch.Tensor]":
    """Write a state dict in ComfyUI's scaled-fp8 layout (used to build test fixtures).

    `should_quantize(key, tensor)` picks the weights stored as fp8 (2-D linear weights in
    practice); each gets a per-tensor scale so its largest value maps to the fp8 maximum.
    """
    import torch

    fp8_dtype = torch.float8_e4m3fn if fp8_dtype is None else fp8_dtype
    fmax = torch.finfo(fp8_dtype).max
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(".weight") and should_quantize(k, v):
            w = v.to(torch.float32)
            scale = (w.abs().max() / fmax).clamp(min=1e-12)
            out[k] = (w / scale).to(fp8_dtype)
            out[k[: -len(".weight")] + ".scale_weight"] = scale.reshape(())
        else:
            out[k] = v
    out[MARKER] = torch.empty(0, dtype=fp8_dtype)
    return out
