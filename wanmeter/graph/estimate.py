"""Graph pipelines -> (Workload, Plan) -> Estimate, until the lead's settings schema carries `runtime` and
`prefetch_blocks` (wanmeter.estimator.settings.workload_from_settings reads everything else)."""
from __future__ import annotations

from typing import Any

from ..estimator import Estimate, GpuSpec, Plan, Workload, estimate, validate_settings, workload_from_settings

EXTRA = ("runtime", "prefetch_blocks", "lora_mode")


def workload_plan(settings: dict[str, Any]) -> tuple[Workload, Plan]:
    """(Workload, Plan) for one pipeline's settings (graph.native / graph.kijai)."""
    flat = {k: v for k, v in settings.items() if k not in ("model_files", "notes", "label", "sampler_id", "current",
                                                           "active", *EXTRA)}
    w, p = workload_from_settings(validate_settings(flat))
    extra = {k: settings[k] for k in EXTRA if settings.get(k) is not None}
    if extra:
        p = p.with_(**extra)
    return w, p


def estimate_pipeline(settings: dict[str, Any], gpu: GpuSpec) -> Estimate:
    w, p = workload_plan(settings)
    e = estimate(w, p, gpu)
    e.notes[:0] = [n for n in settings.get("notes", []) if n not in e.notes]
    return e


def estimate_graph(data: Any, gpu: GpuSpec, find_file=None, calibration_path=None) -> list[dict[str, Any]]:
    """Every pipeline of a workflow (UI or API format) estimated on `gpu`, saved state first: label, current,
    active, runtime, the estimate (to_dict; corrected by this GPU's local calibration runs when a path is
    given) and, for native / kijai pipelines, the WanMeter alternative line. WanMeterError (one line) for bad
    input. For the route and the CLI until they are wired onto the one settings schema."""
    from ..estimator.alternative import alternative_line
    from ..estimator.local_calibration import corrected, correction
    from . import pipelines, read_graph

    out = []
    for s in pipelines(read_graph(data), find_file):
        w, p = workload_plan(s)
        e = estimate_pipeline(s, gpu)
        c = correction(calibration_path, gpu.key, p.runtime)
        e = corrected(e, c)
        out.append({"label": s["label"], "current": s["current"], "active": s["active"], "runtime": p.runtime,
                    "sampler_id": s["sampler_id"], "settings": {k: v for k, v in s.items() if k != "notes"},
                    "estimate": e.to_dict(), "calibrated": c.text or None,
                    "alternative": alternative_line(w, p, gpu) if p.runtime != "wanmeter" else None})
    return out
