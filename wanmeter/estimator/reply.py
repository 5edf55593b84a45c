"""The JSON the web extension renders (via the node pack's POST /wanmeter/estimate route).

Field names follow web/estimate_logic.js (peak_vram_gb, budget_gb, seconds_per_video, ...);
"GB" there is decimal (10^9 bytes), as on GPU spec sheets. The full Estimate.to_dict() rides
along under "estimate" for anyone who wants the breakdown.
"""
from __future__ import annotations

from typing import Any

from .estimate import Estimate, Prices, estimate
from .fixes import rank_gpus, suggest_fixes
from .gpus import GpuSpec, get_gpu, load_gpus
from .settings import workload_from_settings

GB_PER_GIB = 1024 ** 3 / 1e9
FALLBACK_GPU = "h100_sxm"


def _prices(settings: dict[str, Any]) -> Prices | None:
    od = settings.get("price_per_hour") or None
    spot = settings.get("spot_per_hour") or None
    res = settings.get("reserved_per_hour") or None
    return None if od is None and spot is None and res is None else Prices(od, spot, res)


def _gb(x: float | None) -> float | None:
    return None if x is None else round(x * GB_PER_GIB, 2)


def estimate_reply(settings: dict[str, Any], gpus: dict[str, GpuSpec] | None = None) -> dict[str, Any]:
    """Estimate for validated settings on settings['gpu'] (key/name; auto -> H100 SXM), with the
    plan made to fit when offload is 'auto', fixes when it does not fit, and the cheapest GPUs."""
    gpus = gpus if gpus is not None else load_gpus()
    g = settings.get("gpu")
    gpu = get_gpu(FALLBACK_GPU if g in ("auto", "", None) else g, gpus)
    w, plan = workload_from_settings(settings)
    prices = _prices(settings)
    vpm = int(settings.get("videos_per_month") if settings.get("videos_per_month") is not None else 100)
    e = estimate(w, plan, gpu, prices, videos_per_month=vpm)
    notes = list(e.notes)
    if w and plan.step_cache != "none" and settings.get("cache_threshold") is not None:
        notes.append(f"cache_threshold {settings['cache_threshold']:g}: how many steps it skips is not predicted")
    fixes = [] if e.fits else suggest_fixes(w, plan, gpu, prices, videos_per_month=vpm)
    auto_changes: list[str] = []
    if settings.get("offload") == "auto" and not e.fits and fixes and not fixes[0].changes[0].startswith("resolution"):
        auto_changes = fixes[0].changes
        e = fixes[0].estimate
        notes.insert(0, "offload auto: " + ", ".join(auto_changes))
        fixes = []
    ranked = rank_gpus(w, plan, gpus=gpus, videos_per_month=vpm)
    cheapest = [{"key": r.gpu.key, "name": r.gpu.name, "cost_per_video": r.cost_per_video,
                 "seconds_per_video": round(r.estimate.per_video_s, 1), "peak_vram_gb": _gb(r.estimate.vram_peak_gib),
                 "changes": r.changes}
                for r in ranked if r.fits and r.cost_per_video is not None][:5]
    monthly = e.monthly()
    steps_total = max(1, w.steps * (w.s2v_clips if w.variant == "s2v_14b" else 1))
    return {
        "fits": e.fits,
        "peak_vram_gb": _gb(e.vram_peak_gib),
        "budget_gb": _gb(e.vram_limit_gib),
        "ram_gb": _gb(e.ram_gib),
        "seconds_per_video": round(e.per_video_s, 1),
        "seconds_per_step": round(e.denoise_s / steps_total, 3),
        "first_video_seconds": round(e.first_video_s, 1),
        "cost_per_video": None if e.cost_per_video is None else round(e.cost_per_video, 4),
        "cost_per_month": None if monthly["on_demand"] is None else round(monthly["on_demand"], 2),
        "cost_per_month_spot": None if monthly["spot"] is None else round(monthly["spot"], 2),
        "cost_per_month_reserved": None if monthly["reserved"] is None else round(monthly["reserved"], 2),
        "videos_per_month": vpm,
        "price_per_hour": e.prices.on_demand,
        "gpu": {"key": gpu.key, "name": gpu.name, "vram_gb": gpu.vram_gb, "price_source": gpu.price_source},
        "plan": e.plan.describe(),
        "suggestion": ("Fits with: " + ", ".join(fixes[0].changes) + f" ({fixes[0].estimate.per_video_s:.0f} s/video).")
        if fixes else None,
        "fixes": [{"changes": f.changes, "peak_vram_gb": _gb(f.estimate.vram_peak_gib),
                   "seconds_per_video": round(f.estimate.per_video_s, 1)} for f in fixes],
        "cheapest": cheapest,
        "warnings": [] if e.ram_fits in (None, True) else [f"needs {_gb(e.ram_gib)} GB of system RAM"],
        "notes": notes,
        "estimate": e.to_dict(),
    }


__all__ = ["estimate_reply", "Estimate"]
