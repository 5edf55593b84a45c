"""The one estimate every surface shows: settings or a workflow graph -> the reply dict.

The node's live display (web extension via POST /wanmeter/estimate), the queued estimator node,
the CLI (`python -m wanmeter estimate`, which prints this reply as text or JSON), the fleet
planner and the workflow thumbnails all call `estimate_reply` / `estimate_graph`; none of them
decides a plan or a default of its own. With offload=auto the plan is the one the runtime
applies (wanmeter.memplan.runtime_plan), and the reply carries it (`plan`, `plan_fields`).
Field names and units: docs/ARCHITECTURE.md "Estimate reply" (GiB, seconds, $).
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import WanMeterError
from ..variants import variant as facts
from .estimate import Estimate, Prices, estimate
from .fixes import rank_gpus, suggest_fixes
from .gpus import GpuSpec, get_gpu, load_gpus
from .graph import read_pipelines
from .settings import AUTO, defaults, validate_settings, workload_from_settings
from .sizes import GIB
from .workload import GGUF_TYPES, Plan, Workload

FALLBACK_GPU = "h100_sxm"     # what gpu=auto shows on a machine without a (known) GPU
CHEAPEST = 3
PLAN_FIELDS = ("weight_dtype", "offload", "blocks_to_stream", "attention", "text_encoder_device", "vae_tiled",
               "fp8_compute", "compile", "step_cache", "num_gpus")
_NAME_VARIANTS = (("ti2v", "ti2v_5b"), ("5b", "ti2v_5b"), ("s2v", "s2v_14b"), ("i2v", "i2v_a14b"), ("t2v", "t2v_a14b"))


def variant_from_name(name: str) -> str | None:
    """The variant the official/ComfyUI file naming says (for files not on this machine)."""
    n = str(name).lower().replace("\\", "/").rsplit("/", 1)[-1]
    return next((v for key, v in _NAME_VARIANTS if key in n), None)


def source_from_name(name: str | None) -> str:
    """The weight precision a file name says (fp8_scaled, fp16, a GGUF quant), bf16 when it says none."""
    n = str(name or "").lower()
    for q in GGUF_TYPES:
        if q.lower() in n:
            return q
    if "fp8" in n:
        return "fp8_e4m3fn"
    if "fp16" in n:
        return "fp16"
    return "bf16"


def _prices(s: dict[str, Any]) -> Prices | None:
    od, spot, res = (s.get(k) or None for k in ("price_per_hour", "spot_per_hour", "reserved_per_hour"))
    return None if od is None and spot is None and res is None else Prices(od, spot, res)


def resolve_gpu(choice: Any, local: dict[str, Any] | None, gpus: dict[str, GpuSpec]) -> tuple[GpuSpec, bool, str | None]:
    """(GPU, is this machine's GPU, note) for the gpu setting; auto = the detected GPU or, said so, the fallback."""
    from .gpus import detect_gpu_name

    detected = detect_gpu_name(local["name"], gpus) if local and local.get("name") else None
    if choice in AUTO:
        if detected:
            return gpus[detected], True, None
        fb = gpus.get(FALLBACK_GPU) or next(iter(gpus.values()))
        why = (f"this machine's GPU ({local['name']}) is not in the GPU table" if local and local.get("name")
               else "no GPU on this machine")
        return fb, False, f"{why}: showing {fb.name}; pick a GPU in the estimator node"
    g = get_gpu(str(choice), gpus)
    return g, detected == g.key, None


def check_sampler_matches(variant: str, sampler_type: str | None) -> None:
    """A model and a sampler that cannot work together, said the same way on every surface."""
    audio = bool(facts(variant).get("audio"))
    label = facts(variant)["label"]
    if sampler_type == "WanMeterS2VSampler" and not audio:
        raise WanMeterError(f"The model loader holds {label}, but the sampler is WanMeter S2V Sampler, which needs "
                            "S2V-14B (wan2.2_s2v_14B_*.safetensors). Load the S2V model, or use WanMeter Sampler.")
    if sampler_type == "WanMeterSampler" and audio:
        raise WanMeterError("The model loader holds S2V-14B, which WanMeter Sampler cannot run: use WanMeter S2V "
                            "Sampler (with WanMeter S2V Audio), or load a T2V/I2V/TI2V model.")


def plan_and_estimate(w: Workload, p: Plan, gpu: GpuSpec, *, auto: bool, source: str, prices: Prices | None = None,
                      videos_per_month: int = 100, free_gib: float | None = None) -> tuple[Estimate, str | None]:
    """(estimate of the plan that will run, why nothing fits or None). With auto the plan is
    wanmeter.memplan.runtime_plan's for `free_gib` (default: the user's budget, else the GPU's usable VRAM)."""
    kw = {"prices": prices, "videos_per_month": videos_per_month}
    if not auto:
        return estimate(w, p, gpu, **kw), None
    from ..memplan import runtime_plan

    free = free_gib if free_gib is not None else (p.budget_gib or gpu.usable_gib)
    try:
        chosen = runtime_plan(w, free * GIB, None if p.ram_gib is None else p.ram_gib * GIB, gpu, source=source,
                              base=p)
    except WanMeterError as err:
        return estimate(w, p, gpu, **kw), str(err)
    plan = chosen.plan.with_(budget_gib=p.budget_gib, ram_gib=p.ram_gib)
    return estimate(w, plan, gpu, **kw), None


def _cheapest(w: Workload, p: Plan, gpus: dict[str, GpuSpec], *, auto: bool, source: str, vpm: int) -> list[dict]:
    rows: list[tuple[float, float, dict]] = []
    if auto:
        for g in gpus.values():
            e, why = plan_and_estimate(w, p.with_(budget_gib=None), g, auto=True, source=source, videos_per_month=vpm)
            if why is None and e.fits and e.cost_per_video is not None:
                rows.append((e.cost_per_video, e.per_video_s, _gpu_row(g, e, [e.plan.describe()])))
    else:
        for r in rank_gpus(w, p.with_(budget_gib=None), gpus=gpus, videos_per_month=vpm):
            if r.fits and r.cost_per_video is not None:
                rows.append((r.cost_per_video, r.estimate.per_video_s, _gpu_row(r.gpu, r.estimate, r.changes)))
    rows.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in rows[:CHEAPEST]]


def _gpu_row(g: GpuSpec, e: Estimate, changes: list[str]) -> dict[str, Any]:
    return {"name": g.name, "key": g.key, "cost_per_video": round(e.cost_per_video, 4),
            "seconds_per_video": round(e.per_video_s, 1), "peak_vram_gib": round(e.vram_peak_gib, 2),
            "vram_gib": g.usable_gib, "changes": changes}


def estimate_reply(settings: dict[str, Any], *, local: dict[str, Any] | None = None,
                   gpus: dict[str, GpuSpec] | None = None, rank: bool = True) -> dict[str, Any]:
    """The estimate of one sampler chain's settings. `local`: this machine's GPU as ComfyUI sees it
    ({name, total_gib, free_gib}) or None. Raises WanMeterError for bad settings (callers turn it
    into {"error": ...})."""
    gpus = gpus if gpus is not None else load_gpus()
    s = validate_settings(settings, gpus)
    if not s.get("variant"):
        v = variant_from_name(s.get("model") or "")
        if v is None:
            raise WanMeterError(f"Cannot tell the Wan2.2 variant of {s.get('model')!r}: pick an official file "
                                "(t2v/i2v/ti2v/s2v in its name) or give the variant.")
        s["variant"] = v
    check_sampler_matches(s["variant"], settings.get("sampler_type"))
    gpu, is_local, gpu_note = resolve_gpu(s.get("gpu"), local, gpus)
    w, p = workload_from_settings(s)
    auto = (s.get("offload") or defaults()["offload"]) == "auto"
    source = settings.get("source") or source_from_name(s.get("model"))
    prices = _prices(s)
    vpm = int(s["videos_per_month"] if s.get("videos_per_month") is not None else defaults()["videos_per_month"])
    e, nothing_fits = plan_and_estimate(w, p, gpu, auto=auto, source=source, prices=prices, videos_per_month=vpm)
    notes = list(e.notes)
    if auto and nothing_fits is None:
        notes.insert(0, "offload auto: the plan the loader and sampler will apply on this GPU")
    if s["variant"] == "s2v_14b" and not s.get("s2v_clips"):
        notes.insert(0, "S2V: per 5 s clip (clips=0: the audio length decides how many; time and cost grow per clip)")
    if p.step_cache != "none" and s.get("cache_threshold"):
        notes.append(f"cache_threshold {s['cache_threshold']:g}: how many steps it skips is not predicted")
    if gpu_note:
        notes.insert(0, gpu_note)
    suggestion = ""
    if nothing_fits:
        suggestion = nothing_fits
    elif not e.fits:
        fixes = suggest_fixes(w, e.plan, gpu, prices, videos_per_month=vpm, limit=1)
        if fixes:
            suggestion = f"Try: {', '.join(fixes[0].changes)} ({_fmt_s(fixes[0].estimate.per_video_s)} per video)."
    steps_total = max(1, w.steps * (w.s2v_clips if facts(w.variant).get("audio") else 1))
    month = e.monthly(vpm).get("on_demand")
    return {
        "variant": w.variant, "label": facts(w.variant)["label"], "width": w.width, "height": w.height,
        "frames": w.frames, "steps": w.steps, "runtime": settings.get("runtime") or "wanmeter",
        "sampler_id": settings.get("sampler_id"),
        "gpu": {"name": gpu.name, "key": gpu.key, "vram_gib": gpu.usable_gib, "detected": is_local,
                "note": gpu_note, "measured": bool(getattr(gpu, "measured", False))},
        "plan": e.plan.describe(),
        "plan_fields": {k: getattr(e.plan, k) for k in PLAN_FIELDS},
        "fits": bool(e.fits and not nothing_fits), "peak_vram_gib": round(e.vram_peak_gib, 3),
        "budget_gib": round(e.vram_limit_gib, 3),
        "free_vram_gib": round(local["free_gib"], 2) if is_local and local and local.get("free_gib") else None,
        "ram_gib": round(e.ram_gib, 2), "ram_fits": e.ram_fits,
        "seconds_per_video": round(e.per_video_s, 2), "first_video_seconds": round(e.first_video_s, 2),
        "seconds_per_step": round(e.denoise_s / steps_total, 4),
        "time_parts": {"load": round(e.load_cold_s, 2), "text": round(e.text_encode_s, 2),
                       "transfers": round(e.transfers_s, 2), "denoise": round(e.denoise_s, 2),
                       "decode": round(e.decode_s, 2)},
        "cost_per_video": None if e.cost_per_video is None else round(e.cost_per_video, 4),
        "cost_per_month": None if month is None else round(month, 2), "videos_per_month": vpm,
        "price_per_hour": e.prices.on_demand,
        "cheapest": _cheapest(w, p, gpus, auto=auto, source=source, vpm=vpm) if rank else [],
        "suggestion": suggestion, "alternative": None, "warnings": [], "notes": notes,
    }


def estimate_graph(data: Any, *, overrides: dict[str, Any] | None = None, local: dict[str, Any] | None = None,
                   sampler_id: str | None = None, resolve: Callable[[dict[str, Any]], str | None] | None = None,
                   gpus: dict[str, GpuSpec] | None = None) -> dict[str, Any]:
    """The estimate of a workflow graph (UI format or API prompt): the chain of `sampler_id` (default:
    the first sampler) in full, every chain in `pipelines`. `resolve(settings)` may fill variant and
    source from the model file's header and return a note (the route does; the CLI goes by names).
    `overrides` win over the graph's values (CLI flags)."""
    chains = read_pipelines(data)
    gpus = gpus if gpus is not None else load_gpus()
    notes: dict[int, str] = {}
    for i, s in enumerate(chains):
        s.update(overrides or {})
        if resolve is not None:
            note = resolve(s)
            if note:
                notes[i] = note
    i_pick = next((i for i, s in enumerate(chains) if sampler_id is not None
                   and str(s.get("sampler_id")) == str(sampler_id)), 0)
    pick = chains[i_pick]
    body = estimate_reply(pick, local=local, gpus=gpus)
    if i_pick in notes:
        body["notes"].insert(0, notes[i_pick])
    if len(chains) > 1:
        summary = []
        for s in chains:
            try:
                r = body if s is pick else estimate_reply(s, local=local, gpus=gpus, rank=False)
                summary.append({k: r[k] for k in ("sampler_id", "seconds_per_video", "cost_per_video", "peak_vram_gib",
                                                  "fits", "plan")} | {"label": _chain_label(r)})
            except WanMeterError as err:
                summary.append({"sampler_id": s.get("sampler_id"), "error": str(err)})
        body["pipelines"] = summary
    return body


def _chain_label(r: dict[str, Any]) -> str:
    return f"{r['label']} {r['width']}x{r['height']}x{r['frames']}, {r['steps']} steps"


def _fmt_s(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


__all__ = ["estimate_reply", "estimate_graph", "plan_and_estimate", "resolve_gpu", "variant_from_name",
           "source_from_name", "check_sampler_matches", "Estimate"]


def workload_from_ui_workflow(workflow: Any, variant: str | None = None,
                              sampler_id: str | None = None) -> tuple[Workload, Plan, dict[str, Any]]:
    """(Workload, Plan as the widgets say, validated settings) of one sampler chain of a workflow
    (UI format or API prompt; JSON text accepted). The variant comes from the argument, else from the
    model file's name. With offload=auto the Plan here has offload 'none': plan_and_estimate (or
    estimate_reply) gives the plan the runtime applies."""
    import json

    if isinstance(workflow, str):
        try:
            workflow = json.loads(workflow)
        except (json.JSONDecodeError, RecursionError) as e:
            raise WanMeterError(f"The workflow is not valid JSON ({str(e)[:80]}).") from None
    chains = read_pipelines(workflow)
    s = next((c for c in chains if sampler_id is not None and str(c.get("sampler_id")) == str(sampler_id)), chains[0])
    s = dict(s)
    v = variant or s.get("variant") or variant_from_name(s.get("model") or "")
    if v is None:
        raise WanMeterError(f"Cannot tell the Wan2.2 variant from the model name {s.get('model')!r}; pass --variant.")
    s["variant"] = v
    check_sampler_matches(v, s.get("sampler_type"))
    settings = validate_settings(s)
    w, p = workload_from_settings(settings)
    return w, p, settings
