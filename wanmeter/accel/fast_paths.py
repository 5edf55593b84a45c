"""One entry point the runtime calls to turn on the speed features of a placed DiT expert.

Order matters and is fixed here: LoRAs are merged first (by the caller, `merge_lora`), then
fp8 compute swaps the block linears (needs float weights; must come after the runtime's
precision cast, which would otherwise cast fp8 weights back), then the step cache hooks are
installed, then the blocks are compiled (the compiled code must see the final modules).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..errors import WanMeterError
from .fp8_linear import Fp8Linear, fp8_matmul_supported, swap_fp8_linears
from .step_cache import enable_step_cache

log = logging.getLogger(__name__)


def compile_blocks(model: nn.Module, *, mode: str | None = None, dynamic: bool | None = None,
                   backend: str | None = None) -> int:
    """Regional torch.compile: compile each transformer block (they share one compiled graph), not
    the whole model, so compilation takes tens of seconds instead of minutes. Returns the count."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise WanMeterError(f"{type(model).__name__} has no .blocks; compile needs a Wan DiT.")
    kw: dict[str, Any] = {"fullgraph": False}
    if mode is not None:
        kw["mode"] = mode
    if dynamic is not None:
        kw["dynamic"] = dynamic
    if backend is not None:
        kw["backend"] = backend
    if hasattr(model, "compile_repeated_blocks") and getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(**kw)
    else:
        for b in blocks:
            b.compile(**kw)
    model._wanmeter_compiled = True
    return len(blocks)


def apply_fast_paths(model: nn.Module, *, fp8_compute: bool, compile: bool, cache: dict | None,
                     emulate_fp8: bool | None = None) -> dict[str, Any]:
    """Enable fp8 compute, a step cache and regional compile on a placed diffusers Wan DiT.

    Call after the runtime placed the expert on its device with its compute dtype and attention
    backend, and after merging LoRAs. Not for experts under block offload (streamed weights
    change device every step: compile would recompile and fp8 would re-quantize).
    cache: None, or {"kind": "first_block"|"taylorseer"|"mag", "threshold": float, ...}
    (remaining keys go to make_cache_config). Returns what was applied, for logs and the estimator.
    """
    report: dict[str, Any] = {"fp8_layers": 0, "cache": None, "compiled_blocks": 0}
    if getattr(model, "_wanmeter_compiled", False) and (fp8_compute or cache):
        raise WanMeterError("This model is already compiled; apply fp8 compute and the step cache before compile "
                            "(reload the model to change them).")
    if fp8_compute:
        already = any(isinstance(m, Fp8Linear) for m in model.modules())
        if not already:
            device = next(model.parameters()).device
            emulate = emulate_fp8
            if emulate is None and not fp8_matmul_supported(device):
                raise WanMeterError(
                    f"fp8 compute needs an Ada (sm89) or Hopper (sm90+) NVIDIA GPU; the model is on {device}. "
                    "Turn fp8 compute off."
                )
            names = swap_fp8_linears(model, emulate=bool(emulate), fused_quant=not compile)
            report["fp8_layers"] = len(names)
    if cache:
        c = dict(cache)
        kind = c.pop("kind", "first_block")
        threshold = c.pop("threshold", None)
        report["cache"] = enable_step_cache(model, kind, threshold, **c)
    if compile:
        if not getattr(model, "_wanmeter_compiled", False):
            report["compiled_blocks"] = compile_blocks(model)
    return report


def precompile_note() -> str:
    """What users see while the first compiled step runs (compilation happens on the first forward)."""
    return ("torch.compile: the first step of each new resolution compiles the transformer block "
            f"(~30-90 s with torch {torch.__version__.split('+')[0]}); later steps and runs reuse it.")
