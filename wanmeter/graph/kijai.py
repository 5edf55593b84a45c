"""kijai/ComfyUI-WanVideoWrapper graphs -> estimator settings (runtime "kijai").

Node and widget names are from the wrapper's public source (data/node_widgets.json). A chain is a
WanVideoSampler feeding no other sampler, with the samplers whose `samples` output it continues (the
Wan2.2 A14B high-noise / low-noise pair). Read per chain: the model loader (base_precision,
quantization, load_device, attention_mode), its block swap (blocks_to_swap, prefetch_blocks), compile
and LoRA inputs; the sampler (steps, cfg, shift, force_offload, cache_args); the size node
(WanVideoEmptyEmbeds / WanVideoImageToVideoEncode); the T5 loader; WanVideoDecode tiling.
"""
from __future__ import annotations

from typing import Any

from ..errors import WanMeterError
from .common import FindFile, chain_order, expert_of, inspect_model, short_number
from .model import Graph, Node
from .values import number, upstream, value

SAMPLERS = ("WanVideoSampler",)
ATTENTION = {"sdpa": "sdpa", "comfy": "sdpa", "flash_attn_2": "flash", "flash_attn_3": "flash_attn_3",
             "sageattn": "sage", "sageattn_3": "sage", "sageattn_compiled": "sage", "radial_sage_attention": "sage",
             "sageattn_ultravico": "sage", "spargeattn": "sage"}
CACHES = ("WanVideoTeaCache", "WanVideoMagCache", "WanVideoEasyCache")


def _quant_weight(quant: str, base: str, disk: str) -> tuple[str, bool]:
    """(storage format, fp8 matmuls) from the loader's quantization / base_precision and the file."""
    q = (quant or "disabled").lower()
    if q.startswith("fp8_e4m3fn"):
        return "fp8_e4m3fn", q.endswith("_fast")
    if q.startswith("fp8_e5m2"):
        return "fp8_e5m2", False
    if disk.startswith("fp8") or disk.startswith("Q"):
        return disk, False        # 'disabled' autodetects fp8 / GGUF files
    return {"fp16": "fp16", "fp16_fast": "fp16", "fp32": "fp32"}.get(base, "bf16"), False


def _chain_settings(g: Graph, chain: list[Node], find_file: FindFile | None) -> dict[str, Any]:
    first, last = chain[0], chain[-1]
    notes = ["kijai WanVideoWrapper: modelled from its source, not measured"]
    loaders: list[Node] = []
    for s in chain:
        ld = upstream(g, s, "model")
        if ld is None or ld.type != "WanVideoModelLoader":
            raise WanMeterError(f"{s.name}: its model does not come from a WanVideoModelLoader.")
        if ld not in loaders:
            loaders.append(ld)
    infos = {ld.id: inspect_model("diffusion_models", value(g, ld, "model"), ld.name, find_file) for ld in loaders}
    for v in infos.values():
        notes += v[2]
    variants = {v[0] for v in infos.values()}
    if len(variants) > 1:
        raise WanMeterError(f"{last.name}: its chain mixes models of different variants: use the two experts of one model.")
    var = variants.pop()
    ld0 = loaders[0]
    weight, fast = _quant_weight(str(value(g, ld0, "quantization", "disabled")), str(value(g, ld0, "base_precision", "bf16")),
                                 infos[ld0.id][1])
    att = ATTENTION.get(str(value(g, ld0, "attention_mode", "sdpa")), "sdpa")
    swap = upstream(g, ld0, "block_swap_args")
    blocks = int(number(value(g, swap, "blocks_to_swap", 0)) or 0) if swap is not None else 0
    prefetch = int(number(value(g, swap, "prefetch_blocks", 0)) or 0) if swap is not None else 0
    compiled = upstream(g, ld0, "compile_args") is not None
    loras, n = [], upstream(g, ld0, "lora")
    while n is not None and n.type.startswith("WanVideoLora") and len(loras) < 32:
        loras.append(n)
        n = upstream(g, n, "prev_lora")
    merged = all(value(g, n, "merge_loras", True) is not False for n in loras)
    force_offload = value(g, first, "force_offload", True) is not False
    load_dev = str(value(g, ld0, "load_device", "offload_device"))
    offload = "blocks" if blocks > 0 else ("model" if force_offload or load_dev == "offload_device" else "none")
    size = upstream(g, first, "image_embeds")
    if size is None or not any(k in size.widgets for k in ("width", "num_frames")):
        raise WanMeterError(f"{first.name}: cannot find WanVideoEmptyEmbeds / WanVideoImageToVideoEncode on its "
                            "image_embeds input (the node that sets the video size).")
    width, height = number(value(g, size, "width")), number(value(g, size, "height"))
    frames = number(value(g, size, "num_frames"))
    if not width or not height or not frames:
        raise WanMeterError(f"{size.name}: width, height or num_frames is not a number before Queue.")
    steps = int(number(value(g, first, "steps")) or 0)
    if steps < 1:
        raise WanMeterError(f"{first.name}: steps is not set: set it to 1 or more.")
    cfgs = {"high": None, "low": None}
    high_steps = None
    for i, s in enumerate(chain):
        role = expert_of(str(value(g, upstream(g, s, "model"), "model", ""))) or ("high" if i == 0 else "low")
        if cfgs[role] is None:
            cfgs[role] = number(value(g, s, "cfg", 1.0))
        a, b = number(value(g, s, "start_step")), number(value(g, s, "end_step"))
        if role == "high" and b is not None and b > 0:
            high_steps = int(min(b, steps) - (a or 0))
    c0 = next(c for c in (cfgs["high"], cfgs["low"], 1.0) if c is not None)
    two = var in ("t2v_a14b", "i2v_a14b")
    cfg = [cfgs["high"] or c0, cfgs["low"] or c0] if two else [c0]
    cache = upstream(g, first, "cache_args") or upstream(g, first, "teacache_args")
    t5 = None
    emb = upstream(g, first, "text_embeds")
    if emb is not None:
        t5 = upstream(g, emb, "t5")
    dec = None
    for c, _k in g.consumers(last):
        if c.type == "WanVideoDecode":
            dec = c
            break
    files = [("diffusion_models", str(value(g, ld, "model"))) for ld in loaders]
    te_dtype = "bf16"
    if t5 is not None:
        files.append(("text_encoders", str(value(g, t5, "model_name", ""))))
        if str(value(g, t5, "quantization", "disabled")).startswith("fp8"):
            te_dtype = "fp8_e4m3fn"
        elif value(g, t5, "precision", "bf16") == "fp32":
            te_dtype = "fp32"
    files += [("loras", str(value(g, n, "lora", ""))) for n in loras]
    label = f"{steps} steps, cfg {short_number(cfg[0])}" + (f", swap {blocks} blocks" if blocks else "")
    out: dict[str, Any] = {
        "variant": var, "width": int(width), "height": int(height), "frames": int(frames), "steps": steps, "cfg": cfg,
        "weight_dtype": weight, "fp8_compute": fast, "attention": att, "offload": offload,
        "blocks_to_stream": blocks, "prefetch_blocks": prefetch, "compile": compiled, "loras": len(loras),
        "lora_mode": "merged" if merged else "unmerged",
        "vae_tiled": bool(dec is not None and value(g, dec, "enable_vae_tiling", False) is True),
        "text_encoder_device": "gpu", "text_encoder_dtype": te_dtype, "runtime": "kijai", "sampler_id": last.id,
        "label": label, "model_files": files, "notes": notes,
    }
    sh = number(value(g, first, "shift"))
    if sh:
        out["shift"] = sh
    if two and high_steps is not None:
        out["high_noise_steps"] = max(0, min(high_steps, steps))
    if cache is not None:
        out["step_cache"] = "first_block"
        notes.append(f"{cache.type}: its time savings are not predicted (estimated with no skipped steps)")
    return out


def pipelines(graph: Graph, find_file: FindFile | None = None) -> list[dict[str, Any]]:
    samplers = graph.of_type(*SAMPLERS)
    chains = chain_order(samplers, lambda s: [u for u in [upstream(graph, s, "samples")] if u is not None and u.type in SAMPLERS])
    out = []
    for ch in chains:
        s = _chain_settings(graph, ch, find_file)
        s["current"], s["active"] = True, True
        out.append(s)
    if not out and graph.of_type("WanVideoModelLoader"):
        raise WanMeterError("The workflow loads a WanVideoModelLoader model but has no active WanVideoSampler: "
                            "connect a sampler to estimate.")
    return out


__all__ = ["pipelines", "SAMPLERS"]
