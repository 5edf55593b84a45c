"""Between the nodes/routes and wanmeter.estimator: GPU choices, prompt -> settings, and the
estimator's result -> the JSON reply the web extension renders (web/estimate_logic.js)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..wanmeter.errors import WanMeterError

AUTO_GPU = "auto"
FALLBACK_GPU = "H100 SXM"  # what "auto" means on a machine without a GPU
GPU_TABLE = Path(__file__).resolve().parents[1] / "wanmeter" / "data" / "gpus.json"

# Prompt (API format) -> settings: the same sources as WIDGET_SOURCES in web/estimate_logic.js.
LOADER_KEYS = ("model", "model_low_noise", "weight_dtype", "offload", "blocks_to_stream", "attention")
SAMPLER_KEYS = ("width", "height", "frames", "steps", "cfg_high", "cfg_low")
DEFAULTS: dict[str, Any] = {
    "model_low_noise": "none", "width": 1280, "height": 720, "frames": 81, "steps": 40, "cfg_high": 4.0,
    "cfg_low": 3.0, "weight_dtype": "bf16", "offload": "auto", "blocks_to_stream": 0, "attention": "auto",
    "text_encoder_device": "gpu", "vae_tiled": False, "gpu": AUTO_GPU, "price_per_hour": 0.0,
    "videos_per_month": 100, "budget_gb": 0.0, "num_gpus": 1,
}


# ---------------------------------------------------------------- GPU table

@lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, Any]]:
    with open(GPU_TABLE, encoding="utf-8") as f:
        return json.load(f)["gpus"]


def gpu_rows() -> list[dict[str, Any]]:
    """GPU table rows for the combo and the /wanmeter/gpus route."""
    return [{"key": k, "name": g["name"], "vram_gb": g.get("vram_gb"), "price_per_hour": g.get("on_demand_per_hour")}
            for k, g in _table().items()]


def gpu_choices() -> list[str]:
    return [AUTO_GPU] + [r["name"] for r in gpu_rows()]


def match_gpu(device_name: str | None) -> str | None:
    """Table name for a torch.cuda device name (aliases in gpus.json), or None if unknown."""
    if not device_name:
        return None
    dn = device_name.strip().lower()
    best = None
    for g in _table().values():
        names = [g["name"], *g.get("aliases", [])]
        for n in names:
            nl = n.lower()
            if nl == dn:
                return g["name"]
            if nl in dn and (best is None or len(nl) > best[0]):
                best = (len(nl), g["name"])
    return best[1] if best else None


def gpu_key(name: str) -> str:
    for k, g in _table().items():
        if name in (k, g["name"]):
            return k
    raise WanMeterError(f"Unknown GPU {name!r}. Pick one from the estimator's gpu list.")


def resolve_gpu(choice: str, local: dict[str, Any] | None) -> tuple[str, bool]:
    """(table name, is_local) for the gpu widget; 'auto' = the detected GPU or the fallback."""
    detected = match_gpu(local["name"]) if local else None
    if choice in (AUTO_GPU, "", None):
        return (detected or FALLBACK_GPU), detected is not None
    gpu_key(choice)  # validates
    return choice, detected == choice


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


def _num(k: str) -> float:
    try:
        return float(k.split(":")[-1])
    except ValueError:
        return float("inf")


# ---------------------------------------------------------------- estimate

def run_estimate(settings: dict[str, Any], local: dict[str, Any] | None) -> dict[str, Any]:
    """Validate settings with the estimator, estimate on the chosen GPU, rank the others."""
    from ..wanmeter.variants import variant as facts

    s = dict(DEFAULTS)
    s.update(settings)
    gpu_name, is_local = resolve_gpu(str(s.get("gpu") or AUTO_GPU), local)
    s["gpu"] = gpu_name
    body = _engine_estimate(s)
    v = facts(s["variant"])
    body.update(variant=s["variant"], label=v.get("label", s["variant"]), width=s["width"], height=s["height"],
                frames=s["frames"], steps=s["steps"])
    body.setdefault("notes", [])
    if is_local and local is not None:
        body["free_vram_gb"] = round(local["free_gb"] * 1.073741824, 2)
        body["gpu"]["detected"] = True
    else:
        body["free_vram_gb"] = None
    return body


def _engine_estimate(s: dict[str, Any]) -> dict[str, Any]:
    """Call wanmeter.estimator and flatten its result (fields named as estimate_logic.js reads them)."""
    from ..wanmeter import estimator as est

    settings = est.validate_settings(s)
    return est.estimate_reply(settings)  # placeholder until the estimator lands


def summary(body: dict[str, Any]) -> str:
    """A short plain-text line (ui.text) for API users and logs."""
    if body.get("error"):
        return f"WanMeter: cannot estimate: {body['error']}"
    fit = "fits" if body.get("fits") else "DOES NOT FIT"
    return (f"{body.get('label')}: peak {body.get('peak_vram_gb', 0):.1f} GB of {body.get('budget_gb', 0):.0f} GB "
            f"on {body.get('gpu', {}).get('name')} ({fit}), {body.get('seconds_per_video', 0):.0f} s and "
            f"${body.get('cost_per_video', 0):.2f} per video")
