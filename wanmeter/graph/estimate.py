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
