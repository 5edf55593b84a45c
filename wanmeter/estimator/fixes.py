"""When a plan does not fit: the cheapest (in time) changes that make it fit; and the GPU ranking.

Candidates are combinations of the standard memory savers (fp8 weights, model offload,
streaming the fewest blocks that fit, text encoder on CPU, tiled decode); each is estimated
(microseconds, pure arithmetic) and the fitting ones are sorted by time per video. A lower
resolution changes the video, so it is offered only when nothing else fits.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

from .calibration import Calibration, load_calibration
from .estimate import Estimate, Prices, estimate, fits
from .estimate import fits as vram_fits_fn
from .gpus import GpuSpec, load_gpus
from .workload import Plan, Workload


@dataclass
class Fix:
    changes: list[str]
    estimate: Estimate

    @property
    def plan(self) -> Plan:
        return self.estimate.plan


def smallest_blocks(w: Workload, plan: Plan, gpu: GpuSpec, cal: Calibration, *,
                    fits: Callable[[Estimate], bool] | None = None, count: list[int] | None = None,
                    **kw) -> tuple[Estimate, bool]:
    """Stream the fewest blocks that fit: (that estimate, True), or (all blocks streamed, False).

    VRAM need falls and pinned RAM rises with N, so a binary search over N on VRAM fit finds the
    smallest N that fits VRAM, which is also the one with the least RAM among those. `fits` is
    the final test (e.g. VRAM and RAM); `count` counts the estimates made. The one block search:
    the planner (wanmeter.memplan) and the fixes below both call it.
    """
    from .flops import DiTShape

    fits = fits or (lambda e: e.fits)
    layers = DiTShape.of_variant(w.variant).num_layers

    def est(n: int) -> Estimate:
        if count is not None:
            count[0] += 1
        return estimate(w, plan.with_(offload="blocks", blocks_to_stream=n), gpu, cal=cal, **kw)

    def vram_fits(n: int) -> bool:
        # vram_fits() is estimate().fits without the time and cost (WanMeter's runtime): only the
        # chosen N gets a full estimate. Other runtimes re-plan inside estimate(): ask it.
        p = plan.with_(offload="blocks", blocks_to_stream=n)
        if p.runtime != "wanmeter":
            return est(n).fits
        if count is not None:
            count[0] += 1
        return vram_fits_fn(w, p, gpu, cal)

    if not vram_fits(layers):
        return est(layers), False
    lo, hi = 1, layers
    while lo < hi:
        mid = (lo + hi) // 2
        if vram_fits(mid):
            hi = mid
        else:
            lo = mid + 1
    e = est(lo)
    return e, fits(e)


def lower_resolution(w: Workload) -> Workload | None:
    """The next smaller official size of the same orientation, else 3/4 of each side."""
    area = w.width * w.height
    same = [(a, b) for a, b in w.facts["sizes"] if a * b < area and (a >= b) == (w.width >= w.height)]
    if same:
        a, b = max(same, key=lambda s: s[0] * s[1])
        return w.with_(width=a, height=b)
    m = int(w.facts["size_multiple"])
    nw, nh = w.width * 3 // 4 // m * m, w.height * 3 // 4 // m * m
    return w.with_(width=nw, height=nh) if nw >= 64 and nh >= 64 else None


def _candidates(w: Workload, plan: Plan, gpu: GpuSpec, cal: Calibration, **kw) -> list[Fix]:
    weights = [plan.weight_dtype]
    if plan.weight_dtype in ("bf16", "fp16", "fp32"):
        weights.append("fp8_e4m3fn")
    te = [plan.text_encoder_device] + (["cpu"] if plan.text_encoder_device == "gpu" else [])
    tiled = [plan.vae_tiled] + ([True] if not plan.vae_tiled else [])
    offloads = ["current", "model", "blocks"]
    out: list[Fix] = []
    for wd, td, vt, off in itertools.product(weights, te, tiled, offloads):
        p = plan.with_(weight_dtype=wd, text_encoder_device=td, vae_tiled=vt)
        changes = []
        if wd != plan.weight_dtype:
            changes.append(f"weights {wd}")
        if td != plan.text_encoder_device:
            changes.append("text encoder on CPU")
        if vt != plan.vae_tiled:
            changes.append("tiled VAE decode")
        if off == "model" and plan.offload == "none":
            p = p.with_(offload="model", blocks_to_stream=0)
            changes.append("offload: model")
        elif off == "blocks":
            e, ok = smallest_blocks(w, p, gpu, cal, **kw)
            if not ok:
                continue
            if (e.plan.offload, e.plan.blocks_to_stream) != (plan.offload, plan.blocks_to_stream):
                changes.append(f"stream {e.plan.blocks_to_stream} blocks")
            if changes:
                out.append(Fix(changes, e))
            continue
        elif off != "current":
            continue
        if not changes:
            continue
        if fits(w, p, gpu, cal):
            out.append(Fix(changes, estimate(w, p, gpu, cal=cal, **kw)))
    return out


def suggest_fixes(workload: Workload, plan: Plan, gpu: GpuSpec, prices: Prices | float | dict | None = None, *,
                  limit: int = 5, cal: Calibration | None = None, videos_per_month: int | None = None) -> list[Fix]:
    """Changes that make the plan fit, fastest first ([] if it already fits or nothing helps).
    A lower resolution is tried last, only when no plan change fits."""
    cal = cal or load_calibration()
    kw = {"prices": prices}
    if videos_per_month is not None:
        kw["videos_per_month"] = videos_per_month
    if fits(workload, plan, gpu, cal):
        return []
    fixes = _candidates(workload, plan, gpu, cal, **kw)
    if not fixes:
        smaller = lower_resolution(workload)
        tried = 0
        while smaller is not None and not fixes and tried < 3:
            res = f"resolution {smaller.width}x{smaller.height}"
            fixes = [Fix([res], estimate(smaller, plan, gpu, cal=cal, **kw))] if fits(smaller, plan, gpu, cal) else [Fix([res] + f.changes, f.estimate)
                                                    for f in _candidates(smaller, plan, gpu, cal, **kw)]
            smaller = lower_resolution(smaller)
            tried += 1
    fixes.sort(key=lambda f: (f.estimate.per_video_s, len(f.changes)))
    # Drop a fix that only adds changes to a faster one (the extra changes buy nothing).
    kinds = lambda f: frozenset(c.split(" ")[0] if c.startswith("stream") else c for c in f.changes)  # noqa: E731
    uniq: list[Fix] = []
    for f in fixes:
        if not any(kinds(g) <= kinds(f) for g in uniq):
            uniq.append(f)
    return uniq[:limit]


@dataclass
class Ranked:
    gpu: GpuSpec
    estimate: Estimate          # of the given plan, or of the auto plan that makes it fit
    fits: bool                  # False: nothing in suggest_fixes (short of lowering the resolution) fits
    changes: list[str]          # what the auto plan changed ([] = the given plan fits)

    @property
    def cost_per_video(self) -> float | None:
        return self.estimate.cost_per_video


def rank_gpus(workload: Workload, plan: Plan, *, gpus: dict[str, GpuSpec] | None = None,
              prices: dict[str, Prices | float | dict] | None = None, cal: Calibration | None = None,
              videos_per_month: int | None = None) -> list[Ranked]:
    """Every GPU in the table: time, cost per video and fit (with the fastest fitting plan when the
    given one does not fit), ranked by cost per video; unpriced GPUs by time after them; GPUs on
    which nothing fits last."""
    cal = cal or load_calibration()
    gpus = gpus if gpus is not None else load_gpus()
    prices = prices or {}
    out: list[Ranked] = []
    for key, g in gpus.items():
        kw = {"prices": prices.get(key)}
        if videos_per_month is not None:
            kw["videos_per_month"] = videos_per_month
        e = estimate(workload, plan, g, cal=cal, **kw)
        if e.fits:
            out.append(Ranked(g, e, True, []))
            continue
        fixes = [f for f in suggest_fixes(workload, plan, g, cal=cal, **kw) if not f.changes[0].startswith("resolution")]
        if fixes:
            out.append(Ranked(g, fixes[0].estimate, True, fixes[0].changes))
        else:
            out.append(Ranked(g, e, False, []))

    unvalidated = set(cal.v("ranking.unvalidated_archs"))

    def order(r: Ranked):
        # GPUs whose software stack nothing was measured on (ROCm) rank after the others: see calibration.json
        c = r.cost_per_video
        return (not r.fits, r.gpu.arch in unvalidated, c is None, c if c is not None else 0.0, r.estimate.per_video_s)

    out.sort(key=order)
    return out
