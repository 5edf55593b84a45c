"""Settings -> (Workload, Plan): the one reader behind every surface (node, route, web, CLI, fleet).

The settings vocabulary (names, types, units, ranges, defaults) is declared once in
data/node_schema.json ("settings"); our nodes' widgets point at it. Three kinds of input reach
here: a flat settings dict (CLI flags, API users), a UI-format workflow and an API-format prompt
(the browser sends the graph; a queued estimator node has the prompt). All of it is untrusted, so
validate_settings() checks types, ranges and names before anything else looks at it.
Pure Python: no torch.
"""
from __future__ import annotations

import json
import math
from typing import Any

from .. import schema
from ..attention_kernels import all_names as attention_names
from ..errors import WanMeterError
from ..variants import variant, variant_names
from .gpus import GpuSpec, get_gpu, load_gpus
from .workload import WEIGHT_DTYPES, Plan, Workload

MAX_PAYLOAD_BYTES = 64 * 1024
AUTO = ("auto", "", None)
# Old names still accepted from saved API prompts and scripts: old name -> current key.
ALIASES = {"budget_gb": "budget_gib", "batch_size": "batch", "ram_gb": "ram_gib", "compute": "compute_dtype",
           "cfg": "cfg"}
NAME_KEYS = ("model", "model_low_noise", "text_encoder", "vae", "audio_encoder")
# Keys the engine takes beyond the declared settings (not user widgets).
EXTRA = {"cfg", "lora_mode", "text_encoder_unload", "fused_rotary"}
# Pass-through facts about the graph (not user settings): reported, never used as numbers.
PASS = ("sampler_id", "sampler_type", "source", "runtime")


def setting_specs() -> dict[str, dict[str, Any]]:
    """key -> {type, unit, min/max or choices, default, help} (data/node_schema.json "settings")."""
    return schema.settings()


def choices_of(key: str) -> tuple[Any, ...] | None:
    spec = setting_specs()[key]
    if "choices" in spec:
        return tuple(spec["choices"])
    src = spec.get("choices_from")
    if src == "variants":
        return tuple(variant_names())
    if src == "weight_dtypes":
        return WEIGHT_DTYPES + ("file",)   # file: the file's own precision (settings["source"])
    if src == "attention":
        return tuple(attention_names())
    return None  # gpus: checked against the table (names and keys)


def defaults() -> dict[str, Any]:
    """The default of every setting (None = the variant's official value)."""
    return {k: v.get("default") for k, v in setting_specs().items()}


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


def _number(key: str, v: Any, spec: dict[str, Any]) -> int | float:
    lo, hi = spec["min"], spec["max"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise WanMeterError(f"{key} must be a number between {lo:g} and {hi:g}, got {v!r:.40}.")
    if not lo <= v <= hi:
        raise WanMeterError(f"{key}={_short(v)} is out of range: use {lo:g}..{hi:g}.")
    if spec["type"] == "int":
        if int(v) != v:
            raise WanMeterError(f"{key} must be a whole number, got {_short(v)}.")
        return int(v)
    return float(v)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 24 else s[:20] + "..."


def validate_settings(payload: Any, gpus: dict[str, GpuSpec] | None = None) -> dict[str, Any]:
    """Checked copy of a settings payload: a JSON object under 64 KiB with known keys' values in
    range (finite numbers), known choices, plain model names and a GPU from the table. Unknown keys
    are dropped. Raises WanMeterError naming the bad field and the fix."""
    if isinstance(payload, (bytes, str)):
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise WanMeterError(f"Settings are {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES} are accepted.")
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
            raise WanMeterError(f"Settings are not valid JSON ({str(e)[:80]}). Send a JSON object.") from None
    if not isinstance(payload, dict):
        raise WanMeterError(f"Settings must be a JSON object of name: value, got {type(payload).__name__}.")
    try:
        size = len(json.dumps(payload, default=str))
    except (TypeError, ValueError, RecursionError) as e:
        raise WanMeterError(f"Settings cannot be serialized ({str(e)[:80]}).") from None
    if size > MAX_PAYLOAD_BYTES:
        raise WanMeterError(f"Settings are {size} bytes; at most {MAX_PAYLOAD_BYTES} are accepted. Send only the "
                            "widget values.")
    specs = setting_specs()
    out: dict[str, Any] = {}
    for k, v in payload.items():
        k = ALIASES.get(k, k)
        if k in specs or k in EXTRA or k in NAME_KEYS:
            out[k] = v
        elif k in PASS and (v is None or (isinstance(v, str) and len(v) <= 100)):
            out[k] = v
    for k in NAME_KEYS:
        if out.get(k) is not None and out[k] != "none":
            check_model_name(k, out[k])
    for k, spec in specs.items():
        v = out.get(k)
        if v is None:
            continue
        if spec["type"] in ("int", "float"):
            out[k] = _number(k, v, spec)
        elif spec["type"] == "bool":
            if not isinstance(v, bool):
                raise WanMeterError(f"{k} must be true or false, got {_short(v)}.")
        elif k in NAME_KEYS:
            continue
        else:
            if not isinstance(v, str):
                raise WanMeterError(f"{k} must be text, got {_short(v)}.")
            ch = choices_of(k)
            if ch is not None and v not in ch:
                raise WanMeterError(f"{k}={v[:40]!r} is not supported. Use one of: {', '.join(map(str, ch))}.")
    if out.get("cfg") is not None:
        cfg = out["cfg"] if isinstance(out["cfg"], list) else [out["cfg"]]
        if not 1 <= len(cfg) <= 2 or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 100
                                         for c in cfg):
            raise WanMeterError(f"cfg={_short(out['cfg'])}: give one or two guidance scales between 0 and 100.")
    gpu = out.get("gpu")
    if gpu not in AUTO:
        if not isinstance(gpu, str) or len(gpu) > 100:
            raise WanMeterError(f"gpu must be a GPU name from the table, got {_short(gpu)}.")
        out["gpu"] = get_gpu(gpu, gpus if gpus is not None else load_gpus()).key
    return out


def _or(s: dict[str, Any], key: str, default: Any) -> Any:
    v = s.get(key)
    return default if v is None else v


def workload_from_settings(settings: dict[str, Any]) -> tuple[Workload, Plan]:
    """(Workload, Plan) from validated settings; the one mapping. offload 'auto' gives offload 'none'
    here: the planner (wanmeter.memplan.runtime_plan) decides it, as the runtime does."""
    s = {**defaults(), **{k: v for k, v in settings.items() if v is not None}}
    var = s.get("variant") or "t2v_a14b"
    f = variant(var)
    experts = int(f["experts"])
    if settings.get("cfg") is not None:
        cfg = tuple(settings["cfg"]) if isinstance(settings["cfg"], list) else (settings["cfg"],)
    else:
        d = f["default_cfg"]
        cfg = (float(_or(s, "cfg_high", d[0])),) if experts == 1 else \
              (float(_or(s, "cfg_high", d[0])), float(_or(s, "cfg_low", d[-1])))
    clips = int(s.get("s2v_clips") or 0)
    w = Workload(
        variant=var, width=s.get("width") or None, height=s.get("height") or None, frames=s.get("frames") or None,
        steps=s.get("steps") or None, cfg=cfg, batch=int(s.get("batch") or 1), shift=s.get("shift") or None,
        high_noise_steps=s.get("high_noise_steps"), boundary=s.get("boundary") or None,
        loras=int(s.get("loras") or 0), lora_rank=int(s.get("lora_rank") or 64), s2v_clips=max(1, clips),
    )
    offload = s.get("offload") or "auto"
    blocks = int(s.get("blocks_to_stream") or 0)
    if offload == "blocks" and blocks < 1:
        raise WanMeterError("offload=blocks needs blocks_to_stream >= 1 (WanMeter Model Loader), or use offload=model.")
    step_cache = s.get("step_cache") or "none"
    wd = s.get("weight_dtype") or "bf16"
    if wd == "file":   # keep the file's format: its precision as read from the header (or the name)
        wd = settings.get("source") if settings.get("source") in WEIGHT_DTYPES else "bf16"
    plan = Plan(
        weight_dtype=wd,
        compute="bf16",
        offload="none" if offload == "auto" else offload,
        blocks_to_stream=blocks if offload == "blocks" else 0,
        attention=s.get("attention") or "auto",
        text_encoder_device=s.get("text_encoder_device") or "gpu",
        text_encoder_dtype=s.get("text_encoder_dtype") or "bf16",
        text_encoder_unload=bool(s.get("text_encoder_unload", True)),
        vae_tiled=bool(s.get("vae_tiled", False)),
        vae_dtype=s.get("vae_dtype") or "bf16",
        num_gpus=int(s.get("num_gpus") or 1),
        lora_mode=s.get("lora_mode") or "merged",
        budget_gib=float(s["budget_gib"]) if s.get("budget_gib") else None,
        ram_gib=float(s["ram_gib"]) if s.get("ram_gib") else None,
        fp8_compute=bool(s.get("fp8_compute", False)),
        compile=bool(s.get("compile", False)),
        step_cache=step_cache,
        # cache_threshold only shapes a note: how many steps a threshold skips is not predicted.
        cache_skip_fraction=float(s.get("cache_skip_fraction") or 0.0) if step_cache != "none" else 0.0,
        parallel_scheme=s.get("parallel_scheme") or "auto",
        shard_weights=bool(s.get("shard_weights", False)),
        fused_rotary=bool(s.get("fused_rotary", True)),
    )
    return w, plan
