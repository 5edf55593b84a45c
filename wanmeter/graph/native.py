"""Native ComfyUI Wan2.2 graphs (the official templates and graphs built like them) -> estimator settings.

One settings dict per sampler chain: a chain is a sampler that feeds no other sampler together with every
sampler whose latent flows into it (the A14B pair of KSamplerAdvanced split by start/end step; S2V's
KSampler per WanSoundImageToVideoExtend chunk). Settings use wanmeter.estimator.settings' vocabulary, plus
runtime, sampler_id, label, model_files, current (the graph as saved), active (False: a bypassed copy,
estimated as if enabled) and notes.
"""
from __future__ import annotations

from typing import Any

from ..errors import WanMeterError
from .common import (LABEL, FindFile, chain_order, expert_of, inspect_model, short_number, unbypassed, variants_of)
from .model import BYPASSED, Graph, Node
from .values import number, upstream, value

SAMPLERS = ("KSampler", "KSamplerAdvanced")
MODEL_LOADERS = ("UNETLoader", "UnetLoaderGGUF")
# Nodes a latent passes through between two samplers: (type, latent inputs).
LATENT_PATH = {"WanSoundImageToVideoExtend": ("video_latent",), "LatentConcat": ("samples1", "samples2"),
               "LatentCut": ("samples",), "TrimVideoLatent": ("samples",), "LatentBatch": ("samples1", "samples2"),
               "SetLatentNoiseMask": ("samples",)}
LORA_NODES = ("LoraLoaderModelOnly", "LoraLoader")
NATIVE_WEIGHT = {"fp8_e4m3fn": "fp8_e4m3fn", "fp8_e4m3fn_fast": "fp8_e4m3fn", "fp8_e5m2": "fp8_e5m2"}
MAX_CHAIN = 64


def _prev_samplers(g: Graph, s: Node) -> list[Node]:
    out: list[Node] = []
    stack = [(s, "latent_image")]
    seen: set[tuple[str, str]] = set()
    while stack and len(seen) < 4 * MAX_CHAIN:
        n, name = stack.pop()
        if (n.id, name) in seen:
            continue
        seen.add((n.id, name))
        up = upstream(g, n, name)
        if up is None:
            continue
        if up.type in SAMPLERS:
            if up not in out:
                out.append(up)
        elif up.type in LATENT_PATH:
            stack.extend((up, k) for k in LATENT_PATH[up.type])
    return out


def _latent_source(g: Graph, first: Node) -> Node | None:
    """The node that makes the first sampler's latent (EmptyHunyuanLatentVideo, WanImageToVideo...)."""
    n = upstream(g, first, "latent_image")
    hops = 0
    while n is not None and hops < 16:
        if "width" in n.widgets or "length" in n.widgets or n.inputs.get("width") is not None:
            return n
        nxt = None
        for k in LATENT_PATH.get(n.type, ()) + ("samples", "latent"):
            if n.inputs.get(k) is not None:
                nxt = upstream(g, n, k)
                break
        n, hops = nxt, hops + 1
    return None


def _model_chain(g: Graph, sampler: Node) -> tuple[Node | None, list[Node], float | None]:
    """(model loader, LoRA nodes, shift) along the sampler's model input."""
    loras: list[Node] = []
    shift = None
    n = upstream(g, sampler, "model")
    hops = 0
    while n is not None and hops < 64:
        if n.type in MODEL_LOADERS:
            return n, loras, shift
        if n.type in LORA_NODES:
            loras.append(n)
        if n.type == "ModelSamplingSD3" and shift is None:
            shift = number(value(g, n, "shift"))
        n = upstream(g, n, "model") if n.inputs.get("model") is not None else None
        hops += 1
    return None, loras, shift


def _find_upstream(g: Graph, start: Node, inputs: tuple[str, ...], types: tuple[str, ...], limit: int = 40) -> Node | None:
    """Breadth-first search upstream of `start` for a node of `types`."""
    todo = [start]
    seen = {start.id}
    while todo and len(seen) < limit:
        n = todo.pop(0)
        for k in list(n.inputs):
            if inputs and k not in inputs and n is start:
                continue
            up = upstream(g, n, k)
            if up is None or up.id in seen:
                continue
            if up.type in types:
                return up
            seen.add(up.id)
            todo.append(up)
    return None


def _decode_after(g: Graph, last: Node) -> Node | None:
    todo, seen = [last], {last.id}
    while todo and len(seen) < 40:
        n = todo.pop(0)
        for c, _k in g.consumers(n):
            if c.type in ("VAEDecode", "VAEDecodeTiled"):
                return c
            if c.id not in seen and (c.type in LATENT_PATH or c.type in SAMPLERS):
                seen.add(c.id)
                todo.append(c)
    return None


def _steps_range(g: Graph, s: Node) -> tuple[int, int, int]:
    """(total steps, first step, end step) one sampler runs."""
    steps = int(number(value(g, s, "steps")) or 0)
    if steps < 1:
        raise WanMeterError(f"{s.name}: steps is not set (or not a number): set it to 1 or more.")
    if s.type != "KSamplerAdvanced":
        return steps, 0, steps
    a = int(number(value(g, s, "start_at_step", 0)) or 0)
    b = int(number(value(g, s, "end_at_step", 10000)) or 0)
    a, b = max(0, min(a, steps)), max(0, min(b, steps))
    return steps, a, max(a, b)


def _chain_settings(g: Graph, chain: list[Node], find_file: FindFile | None) -> dict[str, Any]:
    first, last = chain[0], chain[-1]
    notes: list[str] = []
    loaders = []
    per_sampler = []
    for s in chain:
        loader, loras, shift = _model_chain(g, s)
        if loader is None:
            raise WanMeterError(f"{s.name}: its model does not come from a UNETLoader (or a GGUF loader): "
                                "WanMeter reads native Wan2.2 graphs built on UNETLoader.")
        per_sampler.append((s, loader, loras, shift))
        if loader not in loaders:
            loaders.append(loader)
    infos = {}
    for ld in loaders:
        name = value(g, ld, "unet_name")
        infos[ld.id] = inspect_model("diffusion_models", name, ld.name, find_file)
        notes += infos[ld.id][2]
    variants = {infos[ld.id][0] for ld in loaders}
    if len(variants) > 1:
        raise WanMeterError(f"{last.name}: its chain mixes models of different variants "
                            f"({', '.join(sorted(LABEL[v] for v in variants))}): use the two experts of one model.")
    var = variants.pop()
    two_experts = var in ("t2v_a14b", "i2v_a14b")
    src = _latent_source(g, first)
    if src is None:
        raise WanMeterError(f"{first.name}: cannot find the node that sets the video size (EmptyHunyuanLatentVideo, "
                            "WanImageToVideo, Wan22ImageToVideoLatent...) on its latent_image input.")
    width, height = number(value(g, src, "width")), number(value(g, src, "height"))
    frames = number(value(g, src, "length")) or number(value(g, src, "num_frames"))
    batch = int(number(value(g, src, "batch_size", 1)) or 1)
    if not width or not height or not frames:
        raise WanMeterError(f"{src.name}: width, height or length is not a number before Queue.")
    s0, loader0, loras0, shift0 = per_sampler[0]
    total, _, _ = _steps_range(g, s0)
    cfg_of = {"high": None, "low": None}
    high_steps = 0
    clips = 1
    if var == "s2v_14b":
        clips = len(chain)
        cfg_list = [number(value(g, s0, "cfg", 1.0)) or 1.0]
    elif two_experts:
        for i, (s, loader, _l, _sh) in enumerate(per_sampler):
            st, a, b = _steps_range(g, s)
            if st != total:
                notes.append(f"{s.name}: steps {st} differs from {s0.name}'s {total}; counted from {s0.name}")
            role = expert_of(str(value(g, loader, "unet_name"))) or ("high" if i == 0 else "low")
            if role == "high":
                high_steps += b - a
            if cfg_of[role] is None:
                cfg_of[role] = number(value(g, s, "cfg", 1.0))
        if len(per_sampler) == 1:
            high_steps = total if (expert_of(str(value(g, loader0, "unet_name"))) or "high") == "high" else 0
        high_steps = min(high_steps, total)
        c0 = next(c for c in (cfg_of["high"], cfg_of["low"], 1.0) if c is not None)
        cfg_list = [cfg_of["high"] if cfg_of["high"] is not None else c0, cfg_of["low"] if cfg_of["low"] is not None else c0]
    else:
        if len(chain) > 1:
            notes.append(f"{len(chain)} samplers in a row: estimated as one run of {total} steps")
        cfg_list = [number(value(g, s0, "cfg", 1.0)) or 1.0]
    wd_widget = str(value(g, loader0, "weight_dtype", "default") or "default")
    disk = infos[loader0.id][1]
    weight = NATIVE_WEIGHT.get(wd_widget, disk)
    fast = wd_widget == "fp8_e4m3fn_fast"
    clip = _find_upstream(g, first, ("positive",), ("CLIPLoader",))
    te_device, te_dtype = "gpu", "bf16"
    files = [("diffusion_models", str(value(g, ld, "unet_name"))) for ld in loaders]
    if clip is not None:
        te_name = str(value(g, clip, "clip_name", ""))
        te_device = "cpu" if value(g, clip, "device", "default") == "cpu" else "gpu"
        te_dtype = "fp8_e4m3fn" if ("fp8" in te_name.lower() or "e4m3" in te_name.lower()) else "bf16"
        files.append(("text_encoders", te_name))
    dec = _decode_after(g, last)
    if dec is not None:
        vae = upstream(g, dec, "vae")
        if vae is not None and vae.type == "VAELoader":
            files.append(("vae", str(value(g, vae, "vae_name", ""))))
    else:
        notes.append("no VAE decode after the sampler: decode time and memory are estimated anyway")
    lora_names = [str(value(g, n, "lora_name", "")) for n in loras0]
    files += [("loras", n) for n in lora_names]
    light = any("lightx2v" in n.lower() or "lightning" in n.lower() or "4step" in n.lower() for n in lora_names)
    shift = shift0
    if var == "s2v_14b":
        label = f"{clips} x {frames:g} frames, {total} steps, cfg {short_number(cfg_list[0])}"
    elif light:
        label = f"{total} steps {'lightx2v' if any('lightx2v' in n.lower() for n in lora_names) else 'LoRA'}"
    else:
        label = f"{total} steps, cfg {short_number(cfg_list[0])}"
    out: dict[str, Any] = {
        "variant": var, "width": int(width), "height": int(height), "frames": int(frames), "steps": int(total),
        "cfg": [float(c) for c in cfg_list], "batch": batch, "weight_dtype": weight, "fp8_compute": fast,
        "attention": "sdpa", "offload": "none", "loras": len(loras0), "lora_mode": "merged",
        "vae_tiled": dec is not None and dec.type == "VAEDecodeTiled", "text_encoder_device": te_device,
        "text_encoder_dtype": te_dtype, "runtime": "comfy_native", "sampler_id": last.id, "label": label,
        "model_files": files, "notes": notes,
    }
    if two_experts:
        out["high_noise_steps"] = int(high_steps)
    if var == "s2v_14b":
        out["s2v_clips"] = clips
    if shift:
        out["shift"] = float(shift)
    return out


def _chains(g: Graph) -> list[list[Node]]:
    samplers = g.of_type(*SAMPLERS)
    return chain_order(samplers, lambda s: _prev_samplers(g, s))


def pipelines(graph: Graph, find_file: FindFile | None = None) -> list[dict[str, Any]]:
    """One settings dict per native sampler chain (see module doc); [] when the graph has no native sampler.
    Each setting of the frontend's boolean switches is a pipeline of its own; chains whose samplers are all
    bypassed are included (active False), estimated as if enabled."""
    out: list[dict[str, Any]] = []
    seen: set[tuple] = set()

    def add(g: Graph, suffix: str, current: bool, active: bool, only: set[str] | None) -> None:
        for chain in _chains(g):
            if only is not None and not all(s.id in only for s in chain):
                continue
            if len(chain) > MAX_CHAIN:
                raise WanMeterError(f"{chain[-1].name}: more than {MAX_CHAIN} samplers in one chain; not estimated.")
            s = _chain_settings(g, chain, find_file)
            s["current"], s["active"] = current, active
            if suffix:
                s["label"] += f" ({suffix})"
            if not active:
                s["label"] += " (bypassed)"
            key = tuple(sorted((k, str(v)) for k, v in s.items() if k not in ("label", "current", "notes", "active")))
            if key in seen:
                continue
            seen.add(key)
            out.append(s)

    for g, suffix, current in variants_of(graph):
        add(g, suffix, current, True, None)
    bypassed = {n.id for n in graph.nodes.values() if n.mode == BYPASSED and n.type in SAMPLERS}
    if bypassed:
        add(unbypassed(graph), "", False, False, bypassed)
    loaders = graph.of_type(*MODEL_LOADERS)
    if not out and loaders:
        raise WanMeterError(f"The workflow loads {len(loaders)} model(s) ({loaders[0].name}...) but has no active "
                            "KSampler / KSamplerAdvanced: connect a sampler (or enable the bypassed one) to estimate.")
    return out


__all__ = ["pipelines", "SAMPLERS"]
