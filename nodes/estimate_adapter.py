"""Between the nodes/routes and wanmeter.estimator: GPU choices, prompt -> settings, and the
estimator's result -> the JSON reply the web extension renders (web/estimate_logic.js)."""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError

AUTO_GPU = "auto"
FALLBACK_GPU = "H100 SXM"  # what "auto" means on a machine without a GPU

# Prompt (API format) -> settings: the same sources as WIDGET_SOURCES in web/estimate_logic.js.
LOADER_KEYS = ("model", "model_low_noise", "weight_dtype", "offload", "blocks_to_stream", "attention", "fp8_compute",
               "compile")
SAMPLER_KEYS = ("width", "height", "frames", "steps", "cfg_high", "cfg_low", "step_cache", "num_gpus")
S2V_SAMPLER = "WanMeterS2VSampler"
S2V_AUDIO = "WanMeterS2VAudio"
S2V_CLIP_FRAMES = 80  # one S2V clip: 80 frames, 5 s at 16 fps (the estimator counts clips via s2v_clips)
DEFAULTS: dict[str, Any] = {
    "model_low_noise": "none", "width": 1280, "height": 720, "frames": 81, "steps": 40, "cfg_high": 4.0,
    "cfg_low": 3.0, "weight_dtype": "bf16", "offload": "auto", "blocks_to_stream": 0, "attention": "auto",
    "text_encoder_device": "gpu", "vae_tiled": False, "gpu": AUTO_GPU, "price_per_hour": 0.0,
    "videos_per_month": 100, "budget_gb": 0.0, "num_gpus": 1, "fp8_compute": False, "compile": False,
    "step_cache": "none", "loras": 0,
}


# ---------------------------------------------------------------- GPU table

def _gpus():
    from ..wanmeter.estimator.gpus import load_gpus

    return load_gpus()


def gpu_rows() -> list[dict[str, Any]]:
    """GPU table rows for the combo and the /wanmeter/gpus route."""
    return [{"key": k, "name": g.name, "vram_gb": g.vram_gb, "price_per_hour": g.on_demand_per_hour}
            for k, g in _gpus().items()]


def gpu_choices() -> list[str]:
    try:
        return [AUTO_GPU] + [r["name"] for r in gpu_rows()]
    except Exception:  # a broken user GPU file must not hide the node
        return [AUTO_GPU]


def match_gpu(device_name: str | None) -> str | None:
    """Table name for a torch.cuda device name (estimator's alias matching), or None if unknown."""
    from ..wanmeter.estimator.gpus import detect_gpu_name

    if not device_name:
        return None
    gpus = _gpus()
    key = detect_gpu_name(device_name, gpus)
    return gpus[key].name if key else None


def resolve_gpu(choice: str, local: dict[str, Any] | None) -> tuple[str, bool]:
    """(table name, is_local) for the gpu widget; 'auto' = the detected GPU or the fallback."""
    from ..wanmeter.estimator.gpus import get_gpu

    detected = match_gpu(local["name"]) if local else None
    if choice in (AUTO_GPU, "", None):
        return (detected or FALLBACK_GPU), detected is not None
    name = get_gpu(choice, _gpus()).name  # WanMeterError naming the known GPUs
    return name, detected == name


# ---------------------------------------------------------------- prompt -> settings

def settings_from_prompt(prompt: dict[str, Any], estimator_id: str | None = None) -> dict[str, Any] | None:
    """The flat settings dict from an API-format prompt (mirror of graphToSettings in the JS).

    Linked inputs ([node_id, slot]) are skipped (their value is not known before running)."""
    nodes = {str(k): v for k, v in prompt.items() if isinstance(v, dict)}

    def of_type(pred) -> list[tuple[str, dict]]:
        return sorted(((k, v) for k, v in nodes.items() if pred(v.get("class_type", ""))), key=lambda kv: _num(kv[0]))

    def val(node: dict, name: str):
        v = node.get("inputs", {}).get(name)
        return None if isinstance(v, list) else v

    samplers = of_type(lambda t: t.startswith("WanMeter") and "Sampler" in t)
    loaders = of_type(lambda t: t == "WanMeterModelLoader")
    loader = None
    if samplers:
        link = samplers[0][1].get("inputs", {}).get("model")
        if isinstance(link, list) and str(link[0]) in nodes and nodes[str(link[0])].get("class_type") == "WanMeterModelLoader":
            loader = nodes[str(link[0])]
    if loader is None and loaders:
        loader = loaders[0][1]
    if loader is None:
        return None
    s = dict(DEFAULTS)
    for k in LOADER_KEYS:
        if val(loader, k) is not None:
            s[k] = val(loader, k)
    if samplers:
        for k in SAMPLER_KEYS:
            if val(samplers[0][1], k) is not None:
                s[k] = val(samplers[0][1], k)
        if samplers[0][1].get("class_type") == S2V_SAMPLER:
            apply_s2v(s, val(samplers[0][1], "cfg"), [val(n, "clips") for _, n in of_type(lambda t: t == S2V_AUDIO)])
    s["loras"] = len(of_type(lambda t: t == "WanMeterLoRA"))
    te = of_type(lambda t: t == "WanMeterTextEncoderLoader")
    if te and val(te[0][1], "device") is not None:
        s["text_encoder_device"] = val(te[0][1], "device")
    vae = of_type(lambda t: t == "WanMeterVAELoader")
    if vae and val(vae[0][1], "tiled") is not None:
        s["vae_tiled"] = bool(val(vae[0][1], "tiled"))
    dec = of_type(lambda t: t == "WanMeterVAEDecode")
    if dec:
        o = val(dec[0][1], "tiled")
        if o in ("enable", "disable"):
            s["vae_tiled"] = o == "enable"
    return s


def apply_s2v(s: dict[str, Any], cfg: Any, clips: list[Any]) -> None:
    """S2V: frames are per 80-frame clip and the clip count comes from WanMeterS2VAudio's `clips`
    (0 = as many as the audio needs, unknown before running: estimated as 1 clip, with a note)."""
    s["frames"] = S2V_CLIP_FRAMES
    if cfg is not None:
        s["cfg_high"] = cfg
    n = clips[0] if clips and clips[0] is not None else 0
    s["s2v_clips"] = n


def _num(k: str) -> float:
    try:
        return float(k.split(":")[-1])
    except ValueError:
        return float("inf")


# ---------------------------------------------------------------- estimate

# Node attention choices -> the estimator's kernel names.
ATTENTION_TO_ESTIMATOR = {"auto": "sdpa", "sdpa": "sdpa", "sdpa_flash": "flash", "sdpa_cudnn": "cudnn",
                          "sage": "sage", "flash": "flash"}


def workload_and_plan(s: dict[str, Any]):
    """(Workload, Plan) from the flat settings (the estimator's validate_settings /
    workload_from_settings are used when present; this mapping is the fallback)."""
    from ..wanmeter import estimator as est
    from ..wanmeter.estimator.workload import Plan, Workload
    from ..wanmeter.variants import variant as facts

    if hasattr(est, "validate_settings"):
        est.validate_settings({k: v for k, v in s.items() if not (k == "s2v_clips" and v == 0)})
    experts = int(facts(s["variant"])["experts"])
    cfg = (float(s["cfg_high"]), float(s["cfg_low"])) if experts == 2 else (float(s["cfg_high"]),)
    clips = max(1, _int(s, "s2v_clips")) if s.get("s2v_clips") is not None else 1
    w = Workload(variant=s["variant"], width=_int(s, "width"), height=_int(s, "height"), frames=_int(s, "frames"),
                 steps=_int(s, "steps"), cfg=cfg, batch=int(s.get("batch_size", 1) or 1), loras=_int(s, "loras"),
                 s2v_clips=clips)
    budget = float(s.get("budget_gb") or 0)
    offload = str(s.get("offload", "auto"))
    blocks = _int(s, "blocks_to_stream") if offload == "blocks" else 0
    p = Plan(weight_dtype=str(s["weight_dtype"]), compute="bf16", offload="none" if offload == "auto" else offload,
             blocks_to_stream=blocks, attention=ATTENTION_TO_ESTIMATOR.get(str(s["attention"]), str(s["attention"])),
             text_encoder_device=str(s.get("text_encoder_device", "gpu")), vae_tiled=bool(s.get("vae_tiled")),
             num_gpus=_int(s, "num_gpus"), budget_gib=budget if budget > 0 else None,
             fp8_compute=bool(s.get("fp8_compute")), compile=bool(s.get("compile")),
             step_cache=str(s.get("step_cache") or "none"))
    if offload == "blocks" and blocks < 1:
        raise WanMeterError("offload=blocks needs blocks_to_stream >= 1 in WanMeter Model Loader (or use offload=model).")
    return w, p


def _int(s: dict[str, Any], k: str) -> int:
    v = s.get(k, DEFAULTS.get(k))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise WanMeterError(f"{k} must be a whole number, got {v!r}.")
    return int(v)


def plan_for(w, p, gpu, *, auto: bool, prices=None, videos_per_month=None):
    """The estimate of plan p, or with auto offload the fastest plan that fits (and what changed)."""
    from ..wanmeter.estimator.estimate import estimate
    from ..wanmeter.estimator.fixes import suggest_fixes

    kw = {"prices": prices}
    if videos_per_month is not None:
        kw["videos_per_month"] = videos_per_month
    e = estimate(w, p, gpu, **kw)
    if e.fits or not auto:
        return e, []
    offload_only = [f for f in suggest_fixes(w, p, gpu, **kw)
                    if all(c.startswith(("stream", "offload")) for c in f.changes)]
    if offload_only:
        return offload_only[0].estimate, offload_only[0].changes
    return e, []


def budget_plan(w, p, gpu, s: dict[str, Any], *, prices=None, videos_per_month=None):
    """offload=auto under the estimator node's budget_gb: wanmeter.memplan.plan_for with that budget
    (the same search the loader runs with the free VRAM), then the estimate at this GPU's prices.
    Returns (estimate, note); when nothing fits, the user's plan as is, with the planner's reason."""
    from ..wanmeter.estimator.estimate import estimate
    from ..wanmeter.memplan import plan_for as memplan_for

    kw: dict[str, Any] = {"prices": prices}
    if videos_per_month is not None:
        kw["videos_per_month"] = videos_per_month
    source = str(s.get("weight_dtype") or "bf16")
    try:
        chosen = memplan_for(w, p.budget_gib * 1024 ** 3, None, gpu, source=source, base=p)
    except WanMeterError as err:
        return estimate(w, p, gpu, **kw), f"offload auto: nothing fits {p.budget_gib:g} GiB ({err})"
    plan = chosen.plan.with_(budget_gib=p.budget_gib, ram_gib=p.ram_gib)
    return estimate(w, plan, gpu, **kw), f"offload auto within {p.budget_gib:g} GiB: {chosen.description}"


def auto_offload(variant: str, weight_dtype: str, *, width: int, height: int, frames: int, steps: int,
                 batch: int = 1) -> tuple[str, int]:
    """(offload, blocks_to_stream) for offload=auto on this machine's GPU: the fastest plan the
    estimator finds that fits the free VRAM (after ComfyUI unloaded its models)."""
    from ..wanmeter.estimator.gpus import get_gpu
    from ..wanmeter.estimator.workload import Plan, Workload
    from ..wanmeter.variants import variant as facts
    from .routes import local_gpu

    local = local_gpu()
    if local is None:
        return "none", 0
    name = match_gpu(local["name"])
    f = facts(variant)
    cfg = tuple(float(c) for c in f["default_cfg"])
    w = Workload(variant=variant, width=width, height=height, frames=frames, steps=steps, cfg=cfg, batch=batch)
    wd = weight_dtype if weight_dtype in ("bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2") else "bf16"
    p = Plan(weight_dtype=wd, budget_gib=max(1.0, float(local["free_gib"]) - 0.5))
    if name is None:  # a GPU missing from the table: judge by weights alone, conservatively
        experts = 2 if int(f["experts"]) == 2 else 1
        return ("model", 0) if experts > 1 else ("none", 0)
    e, _ = plan_for(w, p, get_gpu(name), auto=True)
    return e.plan.offload, int(e.plan.blocks_to_stream if e.plan.offload == "blocks" else 0)


def run_estimate(settings: dict[str, Any], local: dict[str, Any] | None) -> dict[str, Any]:
    """The reply of POST /wanmeter/estimate (fields as web/estimate_logic.js reads them)."""
    from ..wanmeter.estimator.fixes import rank_gpus, suggest_fixes
    from ..wanmeter.estimator.gpus import get_gpu
    from ..wanmeter.variants import variant as facts

    s = dict(DEFAULTS)
    s.update(settings)
    gpu_name, is_local = resolve_gpu(str(s.get("gpu") or AUTO_GPU), local)
    gpu = get_gpu(gpu_name)
    w, p = workload_and_plan(s)
    price = float(s.get("price_per_hour") or 0)
    prices = price if price > 0 else None
    vpm = _int(s, "videos_per_month")
    auto = s.get("offload") == "auto"
    auto_note = ""
    if auto and p.budget_gib:
        e, auto_note = budget_plan(w, p, gpu, s, prices=prices, videos_per_month=vpm)
        changes = []
    else:
        e, changes = plan_for(w, p, gpu, auto=auto, prices=prices, videos_per_month=vpm)
    notes = list(e.notes)
    if auto:
        notes.insert(0, auto_note or f"offload auto: {', '.join(changes) if changes else 'everything stays in VRAM'}")
    if s["variant"] == "s2v_14b" and not s.get("s2v_clips"):
        notes.insert(0, "S2V: per 5 s clip (clips=0: the audio length decides how many; time and cost grow per clip)")
    suggestion = ""
    if not e.fits:
        fixes = suggest_fixes(w, e.plan, gpu, prices=prices, videos_per_month=vpm, limit=1)
        if fixes:
            suggestion = f"Try: {', '.join(fixes[0].changes)} ({_minutes(fixes[0].estimate.per_video_s)} per video)."
    cheapest = []
    for r in rank_gpus(w, e.plan if not auto else p, videos_per_month=vpm):
        if r.fits and r.cost_per_video is not None:
            cheapest.append({"name": r.gpu.name, "cost_per_video": r.cost_per_video,
                             "seconds_per_video": r.estimate.per_video_s,
                             "peak_vram_gib": r.estimate.vram_peak_gib, "changes": r.changes})
        if len(cheapest) == 3:
            break
    month = e.monthly(vpm).get("on_demand")
    v = facts(s["variant"])
    return {
        "variant": s["variant"], "label": v.get("label", s["variant"]), "width": w.width, "height": w.height,
        "frames": w.frames, "steps": w.steps,
        "gpu": {"name": gpu.name, "key": gpu.key, "vram_gb": gpu.vram_gb, "detected": bool(is_local)},
        "plan": e.plan.describe(),
        "peak_vram_gib": e.vram_peak_gib, "budget_gib": e.vram_limit_gib, "fits": bool(e.fits),
        "free_vram_gib": (local["free_gib"] if is_local and local else None),
        "ram_gib": e.ram_gib, "ram_fits": e.ram_fits,
        "seconds_per_video": e.per_video_s, "first_video_seconds": e.first_video_s,
        "seconds_per_step": e.denoise_s / max(w.steps, 1),
        "cost_per_video": e.cost_per_video, "cost_per_month": month, "videos_per_month": vpm,
        "price_per_hour": e.prices.on_demand,
        "cheapest": cheapest, "suggestion": suggestion, "warnings": [], "notes": notes,
    }


def _minutes(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def summary(body: dict[str, Any]) -> str:
    """A short plain-text line (ui.text) for API users and logs."""
    if body.get("error"):
        return f"WanMeter: cannot estimate: {body['error']}"
    fit = "fits" if body.get("fits") else "DOES NOT FIT"
    return (f"{body.get('label')}: peak {body.get('peak_vram_gib', 0):.1f} GiB of {body.get('budget_gib', 0):.1f} GiB "
            f"on {body.get('gpu', {}).get('name')} ({fit}), {body.get('seconds_per_video', 0):.0f} s and "
            f"${body.get('cost_per_video') or 0:.2f} per video")
