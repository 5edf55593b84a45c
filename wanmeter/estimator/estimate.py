"""estimate(): VRAM, RAM, time and cost of one workload on one GPU under one plan.

Every number is a formula over the workload's sizes and the GPU's specs times a calibration
constant (data/calibration.json); Estimate.trace lists the terms so the result can be checked
by hand.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

from .calibration import Calibration, load_calibration
from .gpus import GpuSpec
from .memory import ram_breakdown, vram_peak, vram_phases
from .runtimes import resolve as resolve_runtime
from .sizes import GIB, compute_sizes
from .timing import attention_backend, fp8_compute_active, layout_of, phase_times, skipped_fraction
from .workload import Plan, Workload

DEFAULT_VIDEOS_PER_MONTH = 1000
HOURS_PER_MONTH = 730.0   # 8,760 h a year / 12: the hours a reserved (monthly) GPU is billed, busy or not


@dataclass(frozen=True)
class Prices:
    """$/GPU-hour; None = unknown."""

    on_demand: float | None = None
    spot: float | None = None
    reserved: float | None = None

    @classmethod
    def of(cls, gpu: GpuSpec, override: "Prices | float | dict | None" = None) -> "Prices":
        base = cls(gpu.on_demand_per_hour, gpu.spot_per_hour, gpu.reserved_per_hour)
        if override is None:
            return base
        if isinstance(override, (int, float)):
            return cls(float(override), base.spot, base.reserved)
        if isinstance(override, dict):
            override = cls(**{k: override.get(k) for k in ("on_demand", "spot", "reserved")})
        return cls(override.on_demand if override.on_demand is not None else base.on_demand,
                   override.spot if override.spot is not None else base.spot,
                   override.reserved if override.reserved is not None else base.reserved)

    def bill(self, busy_gpu_hours: float, reserved_gpus: int) -> dict[str, float | None]:
        """A month's bill for `busy_gpu_hours` of work: on-demand and spot pay the hours used; reserved
        pays `reserved_gpus` GPUs for every hour of the month (HOURS_PER_MONTH), busy or not."""
        return {"on_demand": None if self.on_demand is None else busy_gpu_hours * self.on_demand,
                "spot": None if self.spot is None else busy_gpu_hours * self.spot,
                "reserved": None if self.reserved is None else reserved_gpus * HOURS_PER_MONTH * self.reserved}


def gpus_for_hours(busy_hours: float, hours_per_gpu: float = HOURS_PER_MONTH) -> int:
    """GPUs needed to fit `busy_hours` of work in `hours_per_gpu` each (at least 1 for any work)."""
    return 0 if busy_hours <= 0 else max(1, math.ceil(busy_hours / hours_per_gpu - 1e-9))


@dataclass
class Estimate:
    workload: Workload
    plan: Plan
    gpu: GpuSpec
    vram_peak_gib: float
    vram_peak_phase: str
    vram_breakdown: dict[str, float]          # GiB, the peak phase's terms
    vram_phases_gib: dict[str, float]          # GiB per phase (tensors only)
    vram_limit_gib: float
    fits: bool
    ram_gib: float
    ram_breakdown: dict[str, float]
    ram_fits: bool | None
    load_cold_s: float
    text_encode_s: float
    transfers_s: float
    denoise_s: float
    decode_s: float
    denoise_parts: dict[str, float]
    forwards: int
    flops_total: float
    flop_floor_s: float
    prices: Prices
    videos_per_month: int = DEFAULT_VIDEOS_PER_MONTH
    notes: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    @property
    def per_video_s(self) -> float:
        """Seconds per run with models already loaded (the steady state): one run makes `batch` videos."""
        return self.text_encode_s + self.transfers_s + self.denoise_s + self.decode_s

    @property
    def seconds_per_video(self) -> float:
        """Seconds per video: a run's time shared by the `batch` videos it makes."""
        return self.per_video_s / self.workload.batch

    @property
    def first_video_s(self) -> float:
        return self.load_cold_s + self.per_video_s

    def _cost(self, per_hour: float | None) -> float | None:
        return None if per_hour is None else self.seconds_per_video / 3600.0 * per_hour * self.plan.num_gpus

    @property
    def cost_per_video(self) -> float | None:
        """$ per video (not per batch) at the on-demand price (None without a price)."""
        return self._cost(self.prices.on_demand)

    def gpu_hours(self, videos: int | None = None) -> float:
        """GPU-hours `videos` videos keep the plan's GPUs busy (models loaded)."""
        n = self.videos_per_month if videos is None else videos
        return n * self.seconds_per_video * self.plan.num_gpus / 3600.0

    def monthly(self, videos: int | None = None) -> dict[str, float | None]:
        """A month of `videos` videos: GPU-hours, GPUs needed, and the bill per pricing.

        on_demand / spot: the busy GPU-hours x the price. reserved: GPUs reserved for the whole month
        (enough to do the work in HOURS_PER_MONTH each) x 730 h x the reserved price, busy or not; so
        reserved is cheaper only when the GPUs are busy more than reserved/on-demand of the month.
        """
        hours = self.gpu_hours(videos)
        gpus = gpus_for_hours(hours / self.plan.num_gpus) * self.plan.num_gpus
        return {**self.prices.bill(hours, gpus), "gpu_hours": hours, "gpus": gpus}

    @property
    def headroom_gib(self) -> float:
        return self.vram_limit_gib - self.vram_peak_gib

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for --json and the HTTP route)."""
        r = lambda x, n=3: None if x is None else round(float(x), n)  # noqa: E731
        return {
            "gpu": self.gpu.key, "gpu_name": self.gpu.name, "gpu_measured": self.gpu.measured,
            "runtime": self.plan.runtime, "plan": self.plan.describe(),
            "plan_fields": {k: getattr(self.plan, k) for k in self.plan.__dataclass_fields__},
            "fits": self.fits, "vram_peak_gib": r(self.vram_peak_gib, 2), "vram_limit_gib": r(self.vram_limit_gib, 2),
            "vram_peak_phase": self.vram_peak_phase,
            "vram_breakdown_gib": {k: r(v, 2) for k, v in self.vram_breakdown.items()},
            "vram_phases_gib": {k: r(v, 2) for k, v in self.vram_phases_gib.items()},
            "ram_gib": r(self.ram_gib, 2), "ram_breakdown_gib": {k: r(v, 2) for k, v in self.ram_breakdown.items()},
            "ram_fits": self.ram_fits,
            "time_s": {"load_cold": r(self.load_cold_s, 1), "text_encode": r(self.text_encode_s, 2),
                       "transfers": r(self.transfers_s, 2), "denoise": r(self.denoise_s, 1),
                       "decode": r(self.decode_s, 1), "per_video": r(self.per_video_s, 1),
                       "each_video": r(self.seconds_per_video, 1), "first_video": r(self.first_video_s, 1)},
            "denoise_parts_s": {k: r(v, 2) for k, v in self.denoise_parts.items()},
            "forwards": self.forwards, "pflop": r(self.flops_total / 1e15, 2), "flop_floor_s": r(self.flop_floor_s, 1),
            "price_per_hour": {"on_demand": self.prices.on_demand, "spot": self.prices.spot, "reserved": self.prices.reserved},
            "cost_per_video": r(self.cost_per_video, 4), "videos_per_month": self.videos_per_month,
            "monthly": {k: v if k == "gpus" else r(v, 2) for k, v in self.monthly().items()},
            "notes": list(self.notes), "trace": list(self.trace),
        }


def flop_floor(flops_linear: float, flops_attn: float, plan: Plan, gpu: GpuSpec) -> float:
    """No implementation on one GPU can beat this: each kind of FLOP at the fastest peak it may use."""
    lin_peak = (gpu.fp8_tflops or gpu.peak_bf16_tflops) if plan.fp8_compute else gpu.peak_bf16_tflops
    att_peak = gpu.peak_bf16_tflops * (2.0 if plan.attention == "sage" else 1.0)
    return flops_linear / (lin_peak * 1e12) + flops_attn / (att_peak * 1e12)


def path_notes(workload: Workload, plan: Plan, gpu: GpuSpec, cal: Calibration, denoise: float, s) -> list[str]:
    """One line per fast path / parallel layout: its effect on denoising time, by re-estimating
    without it (so the figure is this workload's, not a fixed percentage)."""
    out: list[str] = []
    where = "measured on H200" if gpu.key == "h200" else "fitted on H200"

    def effect(name: str, **off) -> None:
        base = phase_times(compute_sizes(workload, plan.with_(**off), cal), workload, plan.with_(**off), gpu, cal).denoise
        if base > 0:
            out.append(f"{name}: {100.0 * (denoise / base - 1.0):+.0f}% per step ({where})")

    if fp8_compute_active(plan, gpu):
        effect("fp8 compute", fp8_compute=False, compute="bf16")
    if plan.compile:
        effect("compile", compile=False)
    if plan.step_cache != "none":
        f = skipped_fraction(plan)
        out.append(f"{plan.step_cache} cache: time savings are not predicted; "
                   + (f"assumed {100 * f:.0f}% of forwards skipped (your cache_skip_fraction)" if f else
                      "estimated with no skipped steps (set cache_skip_fraction to the share your threshold skips)"))
    if plan.num_gpus > 1:
        lay = layout_of(s, workload, plan)
        one = plan.with_(num_gpus=1, shard_weights=False, parallel_scheme="auto")
        base = phase_times(compute_sizes(workload, one, cal), workload, one, gpu, cal).denoise
        speed = base / denoise if denoise > 0 else 0.0
        out.append(f"{plan.num_gpus} GPUs as {lay.name}{' + FSDP' if plan.shard_weights else ''}: {speed:.2f}x denoising "
                   f"(efficiencies measured on 4 H200s over NVLink" + ("" if gpu.key == "h200" else
                   f"; applied to {gpu.name} unchanged, floored by its {gpu.interconnect_gbps:.0f} GB/s link") + ")")
    return out


_COOPERATIVE = threading.local()


@contextmanager
def cooperative() -> Iterator[None]:
    """Within this block (in this thread), estimate() lets other threads run once a millisecond
    (time.sleep(0) hands the GIL over). An HTTP server runs the estimate in a worker thread: without
    this, the event loop waits up to the 5 ms switch interval for the GIL at every wake-up, so a
    GET answered in 0.4 ms takes tens of ms while estimates run. One request makes ~170 estimate()
    calls of ~0.05 ms; the GIL is offered once per millisecond, so the loop waits about that long at most."""
    prev = getattr(_COOPERATIVE, "on", False)
    _COOPERATIVE.on = True
    _COOPERATIVE.last = time.perf_counter()
    try:
        yield
    finally:
        _COOPERATIVE.on = prev


def _pause(every_s: float = 0.001) -> None:
    """time.sleep(0) at most once per `every_s` (each one may cost a scheduler round on a busy machine)."""
    now = time.perf_counter()
    if now - _COOPERATIVE.last >= every_s:
        time.sleep(0)
        _COOPERATIVE.last = time.perf_counter()


@lru_cache(maxsize=4096)
def _memory(workload: Workload, plan: Plan, cal: Calibration):
    """(sizes, VRAM phases, peak bytes, peak phase, breakdown): none of it depends on the GPU, so
    the fix search and the GPU ranking (hundreds of plans x 17 GPUs per request) share it.
    Callers must not mutate what this returns (estimate() copies the dicts it keeps)."""
    s = compute_sizes(workload, plan, cal)
    phases = vram_phases(s, workload, plan, cal)
    peak, phase, breakdown = vram_peak(phases, cal)
    return s, phases, peak, phase, breakdown


def _vram_limit(plan: Plan, gpu: GpuSpec) -> float:
    # The same headroom is kept under a user budget as under the card's own size: a plan planned to the last
    # byte fails on the first allocation the model did not foresee.
    return float(plan.budget_gib if plan.budget_gib is not None else gpu.usable_gib)


def _fits(peak: float, plan: Plan, gpu: GpuSpec, cal: Calibration) -> bool:
    return peak / GIB <= _vram_limit(plan, gpu) - float(cal.v("overhead.vram_reserve_gib"))


def fits(workload: Workload, plan: Plan, gpu: GpuSpec, cal: Calibration | None = None) -> bool:
    """estimate(workload, plan, gpu).fits without the time and cost (what the fix search asks)."""
    cal = cal or load_calibration()
    return _fits(_memory(workload, plan, cal)[2], plan, gpu, cal)


def estimate(workload: Workload, plan: Plan, gpu: GpuSpec, prices: Prices | float | dict | None = None, *,
             videos_per_month: int = DEFAULT_VIDEOS_PER_MONTH, cal: Calibration | None = None) -> Estimate:
    """VRAM, RAM, time and cost of `workload` on `gpu` run as `plan` (see module doc)."""
    if getattr(_COOPERATIVE, "on", False):
        _pause()
    cal = cal or load_calibration()
    notes: list[str] = []
    if plan.runtime != "wanmeter":  # ComfyUI native / kijai: the plan that runtime ends up with (runtimes.py)
        plan, rt_notes = resolve_runtime(workload, plan, gpu, cal)
        notes += rt_notes
    s, phases, peak, phase, breakdown = _memory(workload, plan, cal)
    if plan.fp8_compute and not fp8_compute_active(plan, gpu):
        notes.append("fp8 compute needs fp8 weights and a GPU with fp8 tensor cores: estimated as bf16 compute"
                     if gpu.has_fp8 else f"{gpu.name} has no fp8 tensor cores: estimated as bf16 compute")
    if plan.attention == "flash_attn_3" and gpu.arch != "hopper":
        notes.append("FlashAttention-3 runs only on Hopper: estimated at FlashAttention-2 speed")
    if plan.offload == "blocks" and plan.blocks_to_stream > s.shape.num_layers:
        notes.append(f"{workload.variant} has {s.shape.num_layers} blocks: streaming all of them")
    limit = _vram_limit(plan, gpu)
    ram = ram_breakdown(s, workload, plan, cal)
    ram_total = sum(ram.values())
    t = phase_times(s, workload, plan, gpu, cal)
    fwd_counts = sum(c for c in (st * (2 if g > 1.0 else 1) for st, g in zip(workload.expert_steps(), workload.cfg)))
    fwd_counts *= 1.0 - skipped_fraction(plan)  # forwards a step cache skips cost no FLOPs
    lin = sum(f.linear for f in s.flops_per_clip) * fwd_counts
    att = sum(f.attention for f in s.flops_per_clip) * fwd_counts
    floor = flop_floor(lin, att, plan, gpu) / plan.num_gpus  # G GPUs share the FLOPs at best perfectly
    if t.denoise < floor:  # cannot happen with calibration fractions <= 1; kept as a hard guarantee
        notes.append("denoise time raised to the FLOP floor")
        t.denoise = floor
    notes += path_notes(workload, plan, gpu, cal, t.denoise, s)
    if not gpu.measured:
        notes.append(f"{gpu.name} is not measured: its datasheet rates x efficiencies measured on H100/H200 "
                     "or assumed (see data/calibration.json)")
    trace = [f"tokens {s.tokens_per_clip[0]} ({workload.width}x{workload.height}x{workload.frames}), "
             f"{t.forwards} forwards ({'/'.join(map(str, workload.expert_steps()))} steps per expert, cfg "
             f"{'/'.join('on' if c > 1 else 'off' for c in workload.cfg)})"
             + (f" x {len(s.tokens_per_clip)} clips" if len(s.tokens_per_clip) > 1 else ""),
             "per forward: " + "; ".join(t.per_forward.trace),
             f"weights: {s.expert_params / 1e9:.2f}e9 params x {s.bytes_per_weight} B = {s.expert_bytes / GIB:.1f} GiB per expert"
             f" x {s.experts} expert(s)",
             f"FLOP floor: {(lin + att) / 1e15:.1f} PFLOP at peak = {floor:.1f} s"]
    return Estimate(
        workload=workload, plan=plan, gpu=gpu, vram_peak_gib=peak / GIB, vram_peak_phase=phase,
        vram_breakdown=dict(breakdown), vram_phases_gib={k: sum(v.values()) / GIB for k, v in phases.items()},
        vram_limit_gib=limit, fits=_fits(peak, plan, gpu, cal),
        ram_gib=ram_total, ram_breakdown=ram, ram_fits=None if plan.ram_gib is None else ram_total <= plan.ram_gib,
        load_cold_s=t.load_cold, text_encode_s=t.text_encode, transfers_s=t.transfers, denoise_s=t.denoise,
        decode_s=t.decode, denoise_parts=t.denoise_parts, forwards=t.forwards, flops_total=lin + att,
        flop_floor_s=floor, prices=Prices.of(gpu, prices), videos_per_month=int(videos_per_month),
        notes=notes, trace=trace + [f"attention backend: {attention_backend(plan, gpu, cal)}"],
    )
