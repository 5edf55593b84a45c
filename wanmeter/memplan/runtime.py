"""offload=auto as the runtime applies it, in the two places it decides, and their composition.

The model loader decides first, before it knows the video size: at the variant's official size
(the smallest official size when nothing fits that) it picks the weight storage and the offload
with the free VRAM. The sampler decides again for the real size, with the weights as loaded,
and may change only the offload. An estimate made before Queue must show what those two
decisions will give, so it calls `runtime_plan`, which is literally the two calls in a row.
Every surface (loader node, sampler node, live estimate, CLI, fleet) goes through here.
"""
from __future__ import annotations

from ..errors import WanMeterError
from ..estimator import GpuSpec, Plan, Workload, get_gpu
from ..estimator.calibration import Calibration
from ..variants import variant as facts
from .auto import TUNE_RUNTIME, AutoPlan, plan_for


def _gpu(gpu: GpuSpec | str) -> GpuSpec:
    return get_gpu(gpu) if isinstance(gpu, str) else gpu


def official_workloads(variant: str) -> list[Workload]:
    """The sizes the loader plans for: the official default, then the smallest official size."""
    f = facts(variant)
    sizes = [tuple(f["sizes"][0]), tuple(min(f["sizes"], key=lambda s: s[0] * s[1]))]
    return [Workload(variant=variant, width=int(w), height=int(h), frames=int(f["default_frames"]),
                     steps=int(f["default_steps"]), cfg=tuple(float(x) for x in f["default_cfg"]))
            for w, h in dict.fromkeys(sizes)]


def loader_plan(variant: str, free_vram_bytes: float, free_ram_bytes: float | None, gpu: GpuSpec | str, *,
                source: str, base: Plan, cal: Calibration | None = None) -> AutoPlan:
    """The loader's decision (weights and offload) at the official size; WanMeterError if nothing fits
    even the smallest official size."""
    work = official_workloads(variant)
    for i, w in enumerate(work):
        try:
            return plan_for(w, free_vram_bytes, free_ram_bytes, _gpu(gpu), source=source, base=base, cal=cal,
                            tune=TUNE_RUNTIME)
        except WanMeterError:
            if i == len(work) - 1:
                raise
    raise AssertionError("unreachable")


def sampler_plan(workload: Workload, free_vram_bytes: float, free_ram_bytes: float | None, gpu: GpuSpec | str, *,
                 base: Plan, cal: Calibration | None = None) -> AutoPlan:
    """The sampler's decision for the real video: only the offload changes (weights are loaded).
    fp8 compute and compile cannot run on streamed blocks: a plan that needs streaming then fails
    with the change to make, before anything runs."""
    chosen = plan_for(workload, free_vram_bytes, free_ram_bytes, _gpu(gpu), source=base.weight_dtype, base=base,
                      cal=cal, tune=("offload",))
    p = chosen.plan
    if p.offload == "blocks" and (base.fp8_compute or base.compile):
        raise WanMeterError(
            f"offload=auto needs to stream {p.blocks_to_stream} blocks for {workload.width}x{workload.height}x"
            f"{workload.frames} on this GPU, and fp8_compute/compile do not work with streamed blocks: turn them off "
            "in WanMeter Model Loader, or lower the size.")
    return chosen


def runtime_plan(workload: Workload, free_vram_bytes: float, free_ram_bytes: float | None, gpu: GpuSpec | str, *,
                 source: str, base: Plan, cal: Calibration | None = None) -> AutoPlan:
    """What offload=auto will run: the loader's decision, then the sampler's for this workload."""
    loaded = loader_plan(workload.variant, free_vram_bytes, free_ram_bytes, gpu, source=source, base=base, cal=cal)
    return sampler_plan(workload, free_vram_bytes, free_ram_bytes, gpu,
                        base=base.with_(weight_dtype=loaded.plan.weight_dtype), cal=cal)
