"""The automatic memory plan: the fastest way to run a workload within the free VRAM and RAM.

Why: users on 8-24 GB cards cannot tell how many blocks to stream or whether fp8 weights,
model offload, a CPU text encoder or a tiled decode are needed (peers.md: "how many blocks must
I swap?"). The estimator already predicts VRAM, RAM and time for any plan in microseconds, so
this module simply asks it about every sensible combination and keeps the fastest that fits:

    weights   what the user's file allows, e.g. bf16 file -> bf16 or fp8 storage; GGUF -> as is
    offload   none -> model -> blocks N (the smallest N that fits; fit is monotone in N)
    text encoder on the GPU (unloaded after encoding) or on the CPU
    VAE decode full or tiled

When nothing fits, the error names the smallest plan, what it needs, what the machine has, and
the changes that would make it fit (a Q4_K_M GGUF, a lower resolution), before anything loads.
Pure Python (no torch), like the estimator.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..errors import WanMeterError
from ..estimator import Estimate, GpuSpec, Plan, Workload, estimate, get_gpu
from ..estimator.calibration import Calibration, load_calibration
from ..estimator.fixes import lower_resolution, smallest_blocks
from ..estimator.flops import DiTShape
from ..estimator.sizes import GIB
from ..estimator.workload import GGUF_TYPES

FLOAT_SOURCES = ("bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2")
# What the planner may change. The graph's own nodes decide the text encoder's device and the VAE
# tiling, so the runtime (the loader and the sampler) only tunes weights and offload: TUNE_RUNTIME.
TUNE_ALL = ("weights", "offload", "text_encoder", "vae")
TUNE_RUNTIME = ("weights", "offload")


@dataclass
class AutoPlan:
    """The chosen plan, its estimate, and a one-line description for the UI and logs."""

    plan: Plan
    estimate: Estimate
    description: str
    considered: int = 0                       # plans estimated to choose this one
    alternatives: list[Estimate] = field(default_factory=list, repr=False)  # other fitting plans, fastest first

    def __str__(self) -> str:
        return self.description


def weight_candidates(source: str) -> list[str]:
    """Storage formats a file of `source` precision can be loaded in (fastest-to-load first).

    Float files can be kept as bf16/fp16 or stored as fp8 (diffusers layerwise casting); a GGUF file
    stays in its own quantization (re-quantizing at load would take minutes).
    """
    if source in GGUF_TYPES:
        return [source]
    if source not in FLOAT_SOURCES:
        raise WanMeterError(f"source={source!r} is not a weight format WanMeter loads. Use one of: "
                            f"{', '.join(FLOAT_SOURCES + GGUF_TYPES)}.")
    first = "fp16" if source == "fp16" else "bf16"
    return [first, "fp8_e4m3fn"]


def _weights_phrase(p: Plan) -> str:
    if p.is_gguf:
        return f"{p.weight_dtype} GGUF weights"
    return {"fp8_e4m3fn": "fp8 weights", "fp8_e5m2": "fp8 (e5m2) weights"}.get(p.weight_dtype, f"{p.weight_dtype} weights")


def describe(p: Plan, e: Estimate, workload: Workload) -> str:
    """'fp8 weights, stream 14 of 40 blocks, text encoder on CPU, tiled decode: 13.9 GiB peak, 312 s'."""
    experts = int(workload.facts["experts"])
    layers = DiTShape.of_variant(workload.variant).num_layers
    parts = [_weights_phrase(p)]
    if p.offload == "none":
        parts.append("both experts on the GPU" if experts > 1 else "all on the GPU")
    elif p.offload == "model":
        parts.append("one expert on the GPU at a time" if experts > 1 else "model offload")
    else:
        parts.append(f"stream {min(p.blocks_to_stream, layers)} of {layers} blocks")
    if p.text_encoder_device == "cpu":
        parts.append("text encoder on CPU")
    if p.vae_tiled:
        parts.append("tiled decode")
    return f"{', '.join(parts)}: {e.vram_peak_gib:.1f} GiB peak, {e.ram_gib:.0f} GiB RAM, {e.per_video_s:.0f} s"


def _fits(e: Estimate) -> bool:
    return e.fits and e.ram_fits is not False


def _with_pinned_swap(e: Estimate, w: Workload, gpu: GpuSpec, cal: Calibration, count: list[int]) -> Estimate:
    """Offloaded experts swap from pinned RAM (RuntimeOptions.pinned_swap: ~40x faster swaps, measured)
    when the RAM estimate with pinned masters is known and still fits; else the pageable plan stays."""
    if e.plan.offload == "none" or e.plan.pinned_swap:
        return e
    count[0] += 1
    pinned = estimate(w, e.plan.with_(pinned_swap=True), gpu, cal=cal)
    return pinned if pinned.fits and pinned.ram_fits is True and pinned.per_video_s <= e.per_video_s else e


def _search(w: Workload, base: Plan, weights: list[str], gpu: GpuSpec, cal: Calibration,
            count: list[int], tune: tuple[str, ...] = TUNE_ALL) -> tuple[list[Estimate], list[Estimate]]:
    """(fitting estimates, all estimates tried) over weights x text encoder x decode x offload."""
    fitting: list[Estimate] = []
    tried: list[Estimate] = []
    tes = [base.text_encoder_device] + (["cpu"] if base.text_encoder_device == "gpu" and "text_encoder" in tune else [])
    tiles = [base.vae_tiled] + ([True] if not base.vae_tiled and "vae" in tune else [])
    for wd, te, tiled in itertools.product(weights, tes, tiles):
        p = base.with_(weight_dtype=wd, text_encoder_device=te, vae_tiled=tiled, offload="none", blocks_to_stream=0)
        for off in ("none", "model"):
            count[0] += 1
            e = estimate(w, p.with_(offload=off), gpu, cal=cal)
            tried.append(e)
            if _fits(e):
                fitting.append(e)
        e, ok = smallest_blocks(w, p, gpu, cal, fits=_fits, count=count)
        tried.append(e)
        if ok:
            fitting.append(e)
    return fitting, tried


def plan_for(workload: Workload, free_vram_bytes: int | float, free_ram_bytes: int | float | None,
             gpu: GpuSpec | str, *, source: str = "bf16", base: Plan | None = None,
             cal: Calibration | None = None, tune: tuple[str, ...] = TUNE_ALL) -> AutoPlan:
    """The fastest plan that fits `free_vram_bytes` of VRAM and `free_ram_bytes` of system RAM.

    source: the precision of the DiT file(s) the user has (bf16/fp16/fp32/fp8_e4m3fn or a GGUF type
        such as Q4_K_M); it decides which storage formats are possible (see weight_candidates).
    base: the user's other settings (attention, text encoder dtype, LoRAs...), kept as given.
    tune: what may change ("weights": fp8 storage of a float file, "offload", "text_encoder": to
        the CPU, "vae": tiled decode); the rest stays as in base.
    Raises WanMeterError before anything is loaded when no plan fits.
    """
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    cal = cal or load_calibration()
    if not free_vram_bytes or free_vram_bytes <= 0:
        raise WanMeterError(f"free VRAM must be a positive number of bytes, got {free_vram_bytes!r}.")
    budget = float(free_vram_bytes) / GIB
    ram = None if free_ram_bytes is None else float(free_ram_bytes) / GIB
    base = (base or Plan()).with_(budget_gib=budget, ram_gib=ram)
    count = [0]
    weights = weight_candidates(source) if "weights" in tune else [base.weight_dtype]
    fitting, tried = _search(workload, base, weights, gpu, cal, count, tune)
    fitting = [_with_pinned_swap(e, workload, gpu, cal, count) for e in fitting]
    if fitting:
        # fastest first; among equal times the order of the search (fewer changes) wins
        order = sorted(range(len(fitting)), key=lambda i: (round(fitting[i].per_video_s, 3), i))
        best = fitting[order[0]]
        return AutoPlan(best.plan, best, describe(best.plan, best, workload), count[0],
                        [fitting[i] for i in order[1:]])
    raise WanMeterError(_nothing_fits(workload, base, source, tried, gpu, cal, budget, ram))


def _nothing_fits(w: Workload, base: Plan, source: str, tried: list[Estimate], gpu: GpuSpec,
                  cal: Calibration, budget: float, ram: float | None) -> str:
    def shortfall(e: Estimate) -> tuple[float, float]:
        short = max(0.0, e.vram_peak_gib - budget) + (max(0.0, e.ram_gib - ram) if ram is not None else 0.0)
        return round(short, 3), e.vram_peak_gib

    smallest = min(tried, key=shortfall)   # the plan closest to fitting (VRAM and RAM shortage together)
    have = f"you have {budget:.1f} GiB VRAM" + (f" and {ram:.1f} GiB RAM" if ram is not None else "") + " free"
    msg = (f"{w.facts['label']} at {w.width}x{w.height}x{w.frames} does not fit: the smallest plan "
           f"({describe(smallest.plan, smallest, w).split(':')[0]}) needs {smallest.vram_peak_gib:.1f} GiB VRAM and "
           f"{smallest.ram_gib:.1f} GiB RAM; {have}.")
    fixes: list[str] = []
    count = [0]
    if source != "Q4_K_M":
        ok, _ = _search(w, base, ["Q4_K_M"], gpu, cal, count)
        if ok:
            best = min(ok, key=lambda e: e.per_video_s)
            fixes.append(f"use a Q4_K_M GGUF of the model ({describe(best.plan, best, w)})")
    smaller = lower_resolution(w)
    tries = 0
    while smaller is not None and tries < 3:
        ok, _ = _search(smaller, base, weight_candidates(source), gpu, cal, count)
        if ok:
            best = min(ok, key=lambda e: e.per_video_s)
            fixes.append(f"render at {smaller.width}x{smaller.height} ({describe(best.plan, best, smaller)})")
            break
        smaller, tries = lower_resolution(smaller), tries + 1
    if ram is not None and smallest.vram_peak_gib <= budget and smallest.ram_gib > ram:
        fixes.append(f"free system RAM (close other programs or add swap) to reach {smallest.ram_gib:.0f} GiB")
    if not fixes:
        fixes.append("use a GPU with more memory (python -m wanmeter.estimator gpus lists those that fit)")
    return msg + " Fix: " + "; or ".join(fixes) + "."
