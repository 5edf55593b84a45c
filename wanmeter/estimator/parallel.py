"""How num_gpus split one generation, and what each split costs, for the estimator.

The engine's rule lives in wanmeter/parallel/layout.py (choose_layout: the CFG pair first, then
Ulysses over the rest). Importing that package pulls in torch, which the estimator must not, so
this is a local mirror of the same rule; tests/test_estimator_parallel.py checks it agrees.

Time: each scheme's parallel efficiency was measured on 4 H200s (bench/results/2026-11-22_h200x4/
multigpu.json). CFG-parallel loses ~1%; Ulysses' overhead grows as (u-1)/u (the share of each
GPU's tokens that crosses the link), with one fitted coefficient. On a slower link the physical
all-to-all time is a floor under that overhead.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import WanMeterError
from .calibration import Calibration
from .workload import Plan, Workload


@dataclass(frozen=True)
class GpuLayout:
    cfg: int = 1      # 2: the conditional and unconditional forwards run on different GPU groups
    ulysses: int = 1  # sequence-parallel degree inside each forward

    @property
    def name(self) -> str:
        parts = ([f"cfg{self.cfg}"] if self.cfg > 1 else []) + ([f"ulysses{self.ulysses}"] if self.ulysses > 1 else [])
        return "x".join(parts) or "single"


def gpu_layout(plan: Plan, workload: Workload, heads: int) -> GpuLayout:
    """The layout the engine picks for plan.num_gpus (same rule and errors as choose_layout)."""
    n, scheme = plan.num_gpus, plan.parallel_scheme
    guidance = any(c > 1.0 for c in workload.cfg)
    if n == 1:
        return GpuLayout()
    if scheme == "cfg" or (scheme == "auto" and n == 2 and guidance):
        if not guidance:
            raise WanMeterError("The 'cfg' multi-GPU scheme needs guidance (cfg != 1); use parallel_scheme 'ulysses'.")
        if n != 2:
            raise WanMeterError(f"The 'cfg' scheme uses exactly 2 GPUs (got {n}); use 'cfg_ulysses' or 'auto'.")
        lay = GpuLayout(cfg=2)
    elif scheme == "ulysses" or not guidance:
        lay = GpuLayout(ulysses=n)
    else:
        if n % 2:
            raise WanMeterError(f"CFG x Ulysses needs an even GPU count (got {n}); use parallel_scheme 'ulysses' "
                                f"or {n - 1} GPUs.")
        lay = GpuLayout(cfg=2, ulysses=n // 2)
    if lay.ulysses > 1 and heads % lay.ulysses:
        ok = [d for d in range(1, heads + 1) if heads % d == 0 and d <= 8]
        raise WanMeterError(f"Ulysses degree {lay.ulysses} must divide the {heads} attention heads; "
                            f"use a degree in {ok}.")
    return lay


def ulysses_overhead(u: int, cal: Calibration) -> float:
    """Extra time / ideal split time for Ulysses degree u (measured overhead model, no link floor)."""
    return float(cal.v("multi_gpu.ulysses_overhead_coefficient")) * (u - 1) / u if u > 1 else 0.0


def scheme_efficiency(lay: GpuLayout, cal: Calibration) -> float:
    """Speedup / GPUs of one guided step under `lay` (the measured-overhead model)."""
    eff = 1.0 / (1.0 + ulysses_overhead(lay.ulysses, cal))
    if lay.cfg > 1:
        eff *= float(cal.v("multi_gpu.cfg_efficiency"))
    return eff


__all__ = ["GpuLayout", "gpu_layout", "ulysses_overhead", "scheme_efficiency"]
