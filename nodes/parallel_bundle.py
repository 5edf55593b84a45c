"""What a loaded WANMETER_MODEL was built from, and a picklable factory that rebuilds it.

wanmeter.parallel.run_parallel starts one process per GPU and each loads its own copy of the
weights through `bundle_factory(device)`; that factory crosses a process boundary (spawn), so it
is plain data (BundleSpec) plus a module-level class, never the loaded model itself.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from ..wanmeter.errors import WanMeterError

LORA_TARGETS = ("both", "high_noise", "low_noise")


@dataclass(frozen=True)
class LoraSpec:
    path: str
    strength: float
    apply_to: str = "both"


@dataclass(frozen=True)
class BundleSpec:
    """Files and options of a T2V/I2V/TI2V model as the loader (and LoRA nodes) built it."""

    variant: str
    high_path: str
    low_path: str | None
    weight_dtype: str = "bf16"
    compute_dtype: str = "bf16"
    attention: str = "auto"
    fp8_compute: bool = False
    compile: bool = False
    step_cache: dict | None = None
    loras: tuple[LoraSpec, ...] = field(default_factory=tuple)

    def with_lora(self, lora: LoraSpec) -> "BundleSpec":
        return replace(self, loras=self.loras + (lora,))


def expert_indices(num_experts: int, apply_to: str) -> list[int]:
    """Which experts a LoRA goes into; single-expert models (TI2V-5B) take it whatever apply_to says."""
    if apply_to not in LORA_TARGETS:
        raise WanMeterError(f"apply_to={apply_to!r}: use one of {', '.join(LORA_TARGETS)}.")
    if num_experts == 1:
        return [0]
    return {"both": [0, 1], "high_noise": [0], "low_noise": [1]}[apply_to]


def merge_loras(experts: list[Any], loras: tuple[LoraSpec, ...] | list[LoraSpec]) -> None:
    """Merge each LoRA into the experts it targets (before fp8 compute; the engine refuses fp8 weights).
    All-or-nothing: every LoRA is validated against every expert before any weight changes."""
    from ..wanmeter.accel import merge_loras_atomic

    merge_loras_atomic([(experts[i], lo.path, float(lo.strength)) for lo in loras
                        for i in expert_indices(len(experts), lo.apply_to) if experts[i] is not None])


class BundleFactory:
    """bundle_factory for run_parallel: load the DiT file(s) of `spec` on `device`, merge its LoRAs,
    and return a WanModelBundle with everything resident on that GPU (no offload)."""

    def __init__(self, spec: BundleSpec) -> None:
        self.spec = spec

    def __call__(self, device) -> Any:
        from ..wanmeter.loader import inspect_dit, load_dit
        from ..wanmeter.runtime import RuntimeOptions
        from ..wanmeter.sampler import WanModelBundle

        s = self.spec
        kw = dict(weight_dtype=s.weight_dtype, compute_dtype=s.compute_dtype, device=device)
        loaded = [load_dit(inspect_dit(s.high_path), **kw)]
        if s.low_path is not None:
            loaded.append(load_dit(inspect_dit(s.low_path), **kw))
        merge_loras([d.model for d in loaded], s.loras)
        runtime = RuntimeOptions(device=str(device), offload="none", attention=s.attention,
                                 compute_dtype=s.compute_dtype, fp8_compute=s.fp8_compute, compile=s.compile,
                                 step_cache=s.step_cache)
        return WanModelBundle.from_loaded(s.variant, *loaded, runtime=runtime)


def make_importable() -> None:
    """Let spawned workers unpickle BundleFactory: ComfyUI imports this pack under its folder name
    from custom_nodes/, which is not on sys.path; workers inherit the parent's sys.path."""
    pack = __name__.split(".")[0]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = os.path.dirname(root)
    if os.path.basename(root) == pack and parent not in sys.path:
        sys.path.append(parent)
