"""Flat settings (what the web extension and the HTTP route send) and UI workflows -> Workload, Plan.

The browser sends a small JSON of widget values; everything in it is untrusted, so
validate_settings() checks size, types, ranges and names before anything else looks at it.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import WanMeterError
from ..variants import variant_names
from .gpus import GpuSpec, get_gpu, load_gpus
from .workload import (ATTENTION, ATTENTION_ALIASES, LIMITS, OFFLOAD, PARALLEL_SCHEMES, STEP_CACHES, WEIGHT_DTYPES, Plan,
                       Workload)

MAX_PAYLOAD_BYTES = 64 * 1024
GIB_PER_GB = 1e9 / 1024 ** 3
AUTO = ("auto", "", None)

# Node-pack attention names -> estimator names.
NODE_ATTENTION = {"sdpa_flash": "flash", "sdpa_cudnn": "cudnn", "flash": "flash", "8bit": "8bit"}

# name: (kind, low, high). Unknown keys are ignored (the browser sends model names and more).
NUMBERS: dict[str, tuple[type, float, float]] = {
    "width": (int, 64, 4096), "height": (int, 64, 4096), "frames": (int, 1, 1025), "steps": (int, 1, 1000),
    "batch": (int, 1, 64), "batch_size": (int, 1, 64), "blocks_to_stream": (int, 0, 100), "loras": (int, 0, 32),
    "lora_rank": (int, 1, 1024), "s2v_clips": (int, 1, 100), "num_gpus": (int, 1, 64),
    "videos_per_month": (int, 0, 10_000_000), "high_noise_steps": (int, 0, 1000),
    "cfg_high": (float, 0, 100), "cfg_low": (float, 0, 100), "shift": (float, 0, 100), "boundary": (float, 0, 1),
    "price_per_hour": (float, 0, 1000), "spot_per_hour": (float, 0, 1000), "reserved_per_hour": (float, 0, 1000),
    "budget_gb": (float, 0, 4096), "ram_gb": (float, 0, 65536),
    "cache_threshold": (float, 0, 10), "cache_skip_fraction": (float, 0, 0.95),
}
CHOICES: dict[str, tuple] = {
    "variant": tuple(variant_names()),
    "weight_dtype": WEIGHT_DTYPES,
    "compute": ("bf16", "fp16", "fp8"), "compute_dtype": ("bf16", "fp16", "fp8"),
    "offload": OFFLOAD + ("auto",),
    "attention": ATTENTION + tuple(ATTENTION_ALIASES) + tuple(NODE_ATTENTION),
    "text_encoder_device": ("gpu", "cpu"), "text_encoder_dtype": ("bf16", "fp16", "fp32", "fp8_e4m3fn"),
    "vae_dtype": ("bf16", "fp16", "fp32"), "lora_mode": ("merged", "unmerged"),
    "step_cache": STEP_CACHES, "parallel_scheme": PARALLEL_SCHEMES,
}
BOOLS = ("vae_tiled", "text_encoder_unload", "fp8_compute", "compile", "shard_weights")
NAME_KEYS = ("model", "model_low_noise", "text_encoder", "vae", "audio_encoder")


def check_model_name(key: str, name: Any) -> None:
    """A model file name from the browser: a name relative to ComfyUI's model folders, subfolders
    allowed ('wan/x.safetensors', as ComfyUI lists them), that cannot leave them: no absolute
    path, drive letter, '..' or empty component, no NUL. (The node pack then resolves the name and
    checks the resolved path lies inside the folder: nodes/common.resolve_model.)"""
    if not isinstance(name, str):
        raise WanMeterError(f"{key} must be a file name (text), got {type(name).__name__}.")
    parts = name.replace("\\", "/").split("/")
    if (not name or len(name) > 512 or "\x00" in name or ":" in name or name[0] in "/\\"
            or any(p in ("", ".", "..") for p in parts)):
        raise WanMeterError(f"{key}={name!r} is not a file name inside a models folder: pick the model from the "
                            "list (subfolders are fine; no absolute paths, no '..').")


def validate_settings(payload: Any, gpus: dict[str, GpuSpec] | None = None) -> dict[str, Any]:
    """Checked copy of a settings payload: a JSON object under 64 KiB with known GPU, sane numbers
    and plain model names. Raises WanMeterError naming the bad field and the fix."""
    if isinstance(payload, (bytes, str)):
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise WanMeterError(f"Settings are {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES} are accepted.")
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WanMeterError(f"Settings are not valid JSON ({e}). Send a JSON object.") from None
    if not isinstance(payload, dict):
        raise WanMeterError(f"Settings must be a JSON object of name: value, got {type(payload).__name__}.")
    try:
        size = len(json.dumps(payload, default=str))
    except (TypeError, ValueError) as e:
        raise WanMeterError(f"Settings cannot be serialized ({e}).") from None
    if size > MAX_PAYLOAD_BYTES:
        raise WanMeterError(f"Settings are {size} bytes; at most {MAX_PAYLOAD_BYTES} are accepted. Send only the widget values.")
    out = dict(payload)
    for k in NAME_KEYS:
        if k in out and out[k] is not None:
            check_model_name(k, out[k])
    for k, (kind, lo, hi) in NUMBERS.items():
        if k not in out or out[k] is None:
            continue
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise WanMeterError(f"{k} must be a number between {lo:g} and {hi:g}, got {v!r}.")
        if kind is int and int(v) != v:
            raise WanMeterError(f"{k} must be a whole number, got {v!r}.")
        if not lo <= v <= hi:
            raise WanMeterError(f"{k}={v:g} is out of range: use {lo:g}..{hi:g}.")
        out[k] = kind(v)
    if "cfg" in out and out["cfg"] is not None:
        cfg = out["cfg"] if isinstance(out["cfg"], list) else [out["cfg"]]
        if not 1 <= len(cfg) <= 2 or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 100 for c in cfg):
            raise WanMeterError(f"cfg={out['cfg']!r}: give one or two guidance scales between 0 and 100.")
    for k, choices in CHOICES.items():
        if k in out and out[k] is not None and out[k] not in choices:
            raise WanMeterError(f"{k}={out[k]!r} is not supported. Use one of: {', '.join(str(c) for c in choices)}.")
    for k in BOOLS:
        if k in out and out[k] is not None and not isinstance(out[k], bool):
            raise WanMeterError(f"{k} must be true or false, got {out[k]!r}.")
    gpu = out.get("gpu")
    if gpu not in AUTO:
        if not isinstance(gpu, str) or len(gpu) > 100:
            raise WanMeterError(f"gpu must be a GPU name from the table, got {gpu!r}.")
        out["gpu"] = get_gpu(gpu, gpus if gpus is not None else load_gpus()).key
    return out


def workload_from_settings(settings: dict[str, Any]) -> tuple[Workload, Plan]:
    """(Workload, Plan) from validated flat settings. offload "auto" gives offload "none" here;
    estimate_reply() then picks the fastest plan that fits."""
    s = settings
    var = s.get("variant") or "t2v_a14b"
    from ..variants import variant

    f = variant(var)
    if s.get("cfg") is not None:
        cfg = tuple(s["cfg"]) if isinstance(s["cfg"], list) else (s["cfg"],)
    else:
        d = f["default_cfg"]
        cfg = (float(s.get("cfg_high", d[0])),) if f["experts"] == 1 else \
              (float(s.get("cfg_high", d[0])), float(s.get("cfg_low", d[-1])))
    w = Workload(
        variant=var, width=int(s.get("width") or f["sizes"][0][0]), height=int(s.get("height") or f["sizes"][0][1]),
        frames=int(s.get("frames") or f["default_frames"]), steps=int(s.get("steps") or f["default_steps"]), cfg=cfg,
        batch=int(s.get("batch") or s.get("batch_size") or 1), shift=s.get("shift") or None,
        high_noise_steps=s.get("high_noise_steps"), boundary=s.get("boundary") or None,
        loras=int(s.get("loras") or 0), lora_rank=int(s.get("lora_rank") or 64), s2v_clips=int(s.get("s2v_clips") or 1),
    )
    att = s.get("attention") or "sdpa"
    att = NODE_ATTENTION.get(att, att)
    offload = s.get("offload") or "none"
    blocks = int(s.get("blocks_to_stream") or 0)
    budget_gb = s.get("budget_gb") or None
    plan = Plan(
        weight_dtype=s.get("weight_dtype") or "bf16",
        compute=s.get("compute") or s.get("compute_dtype") or "bf16",
        offload="none" if offload == "auto" else offload,
        blocks_to_stream=blocks if offload == "blocks" else 0,
        attention=att,
        text_encoder_device=s.get("text_encoder_device") or "gpu",
        text_encoder_dtype=s.get("text_encoder_dtype") or "bf16",
        text_encoder_unload=bool(s.get("text_encoder_unload", True)),
        vae_tiled=bool(s.get("vae_tiled", False)),
        vae_dtype=s.get("vae_dtype") or "bf16",
        num_gpus=int(s.get("num_gpus") or 1),
        lora_mode=s.get("lora_mode") or "merged",
        budget_gib=None if budget_gb is None else float(budget_gb) * GIB_PER_GB,
        ram_gib=None if not s.get("ram_gb") else float(s["ram_gb"]) * GIB_PER_GB,
        fp8_compute=bool(s.get("fp8_compute", False)),
        compile=bool(s.get("compile", False)),
        step_cache=s.get("step_cache") or "none",
        # cache_threshold only shapes a note: how many steps a threshold skips is not predicted.
        cache_skip_fraction=float(s.get("cache_skip_fraction") or 0.0) if (s.get("step_cache") or "none") != "none" else 0.0,
        parallel_scheme=s.get("parallel_scheme") or "auto",
        shard_weights=bool(s.get("shard_weights", False)),
    )
    return w, plan


# ---------------------------------------------------------------- UI-format workflows

# Widget order of our nodes (INPUT_TYPES order, required then optional); tests check it against nodes/.
WIDGETS: dict[str, tuple[str, ...]] = {
    "WanMeterModelLoader": ("model", "weight_dtype", "compute_dtype", "offload", "blocks_to_stream", "attention",
                            "fp8_compute", "compile", "model_low_noise"),
    "WanMeterTextEncoderLoader": ("text_encoder", "text_encoder_device", "text_encoder_dtype"),
    "WanMeterVAELoader": ("vae", "vae_tiled", "vae_dtype"),
    "WanMeterSampler": ("width", "height", "frames", "steps", "cfg_high", "cfg_low", "shift", "seed", "batch_size",
                        "scheduler", "boundary", "denoise", "step_cache", "cache_threshold", "num_gpus"),
    "WanMeterVAEDecode": ("tiled",),
    "WanMeterEstimator": ("gpu", "price_per_hour", "videos_per_month", "budget_gb"),
    "WanMeterS2VAudio": ("audio_encoder", "audio_scale", "audio_device", "s2v_clips"),
    "WanMeterS2VSampler": ("width", "height", "steps", "cfg_high", "shift", "seed", "drop_first_motion"),
}
SEED_CONTROL = ("fixed", "increment", "decrement", "randomize")
_IGNORED = {"seed", "scheduler", "denoise", "tiled", "cache_threshold", "audio_encoder", "audio_scale", "audio_device", "drop_first_motion"}


def _widget_values(node: dict[str, Any]) -> dict[str, Any]:
    names = WIDGETS.get(node.get("type", ""), ())
    vals = node.get("widgets_values")
    if isinstance(vals, dict):  # some frontends save widgets by name
        return {k: vals[k] for k in names if k in vals}
    vals = list(vals or [])
    out, i = {}, 0
    for name in names:
        if i >= len(vals):
            break
        out[name] = vals[i]
        i += 1
        if name == "seed" and i < len(vals) and vals[i] in SEED_CONTROL:
            i += 1
    return out


def workload_from_ui_workflow(workflow: dict[str, Any] | str, variant: str | None = None) -> tuple[Workload, Plan, dict[str, Any]]:
    """(Workload, Plan, settings) from a UI-format workflow using our nodes. The variant comes from
    the argument, else from the model file name (official/ComfyUI naming)."""
    if isinstance(workflow, str):
        try:
            workflow = json.loads(workflow)
        except json.JSONDecodeError as e:
            raise WanMeterError(f"The workflow is not valid JSON ({e}).") from None
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise WanMeterError("Not a UI-format workflow (no 'nodes' list). Save it from ComfyUI with Workflow > Save "
                            "(API-format prompts are not supported here).")
    settings: dict[str, Any] = {}
    found = set()
    for node in sorted((n for n in workflow["nodes"] if isinstance(n, dict)), key=lambda n: n.get("id", 0)):
        t = node.get("type", "")
        if t not in WIDGETS or t in found or node.get("mode") in (2, 4):  # first active node of each type
            continue
        found.add(t)
        for k, v in _widget_values(node).items():
            if k in _IGNORED:
                if t == "WanMeterVAEDecode" and v in ("enable", "disable"):
                    settings["vae_tiled"] = v == "enable"
                continue
            settings[k] = v
    if "WanMeterModelLoader" not in found:
        raise WanMeterError("The workflow has no WanMeter Model Loader node: nothing to estimate.")
    if variant is None:
        variant = _variant_from_name(str(settings.get("model", "")))
    settings["variant"] = variant
    for k in ("price_per_hour", "budget_gb", "s2v_clips"):  # 0 = automatic / this GPU's default
        if settings.get(k) in (0, 0.0):
            settings.pop(k)
    for k in ("model", "model_low_noise", "text_encoder", "vae"):
        settings.pop(k, None) if settings.get(k) == "none" else None
    settings = validate_settings(settings)
    w, p = workload_from_settings(settings)
    return w, p, settings


def _variant_from_name(name: str) -> str:
    n = name.lower()
    for key, v in (("ti2v", "ti2v_5b"), ("5b", "ti2v_5b"), ("s2v", "s2v_14b"), ("i2v", "i2v_a14b"), ("t2v", "t2v_a14b")):
        if key in n:
            return v
    raise WanMeterError(f"Cannot tell the Wan2.2 variant from the model name {name!r}; pass --variant.")
