"""How other runtimes run a Wan2.2 graph: ComfyUI's native nodes and kijai's WanVideoWrapper.

The estimator's formulas (FLOPs, bytes, rates) stay the same; what differs is the plan the runtime ends
up with, and a few behaviours:

comfy_native (ComfyUI 0.3.64's memory manager, comfy/model_management.py + sampler_helpers.py):
  - it reserves memory_required(latent) + 1.2 GiB for activations and loads as much of the model as fits
    in the rest; both A14B experts stay on the GPU when they fit, else one at a time (the other is moved
    out: "model" offload), else the model is partially loaded ("lowvram"): the part that does not fit
    stays in RAM and is copied to the GPU and cast layer by layer in every forward (blocks streaming,
    synchronous: no copy hides under compute unless --async-offload);
  - the text encoder stays loaded while there is room;
  - before the VAE decode it frees what its own decode estimate asks for (comfy/sd.py), unloading DiT
    weights; it falls back to a tiled decode only after an out-of-memory error;
  - attention is PyTorch SDPA; rotary and norms are its own eager kernels (no fused rotary);
  - fp8_e4m3fn_fast runs fp8 matmuls (torch._scaled_mm), estimated with WanMeter's measured fp8 rate.
kijai (ComfyUI-WanVideoWrapper): the plan is what its nodes say (block swap N with or without prefetch,
  attention mode, quantization, compile, force_offload = model offload); without prefetch each swapped
  block's copy is waited for.

All of it is read from the runtimes' source, not measured: estimates carry that label.
"""
from __future__ import annotations

import math

from .calibration import Calibration
from .gpus import GpuSpec
from .sizes import GIB, Sizes, compute_sizes
from .workload import Plan, Workload

RUNTIMES = ("wanmeter", "comfy_native", "kijai")
RUNTIME_LABEL = {"comfy_native": "ComfyUI native nodes", "kijai": "kijai WanVideoWrapper"}
SOURCE_NOTE = "modelled from source, not measured"


def _c(cal: Calibration, key: str) -> float:
    return cal.v(f"runtimes.comfy_native.{key}")


def comfy_memory_required(w: Workload, s: Sizes, cal: Calibration, batch: int) -> float:
    """Bytes ComfyUI's BaseModel.memory_required() asks for a latent batch of `batch` (bf16 compute)."""
    lat = s.video_tokens * 4  # latent T*H*W: tokens are (H/2)*(W/2) patches per latent frame
    factor = s.shape.dim * float(_c(cal, "memory_usage_factor_per_dim"))
    return batch * lat * 2.0 * float(_c(cal, "memory_required_mib_per_latent_element_byte")) * factor * 1024 ** 2


def comfy_vae_decode_estimate(w: Workload, cal: Calibration) -> float:
    """Bytes ComfyUI's VAE.memory_used_decode lambda asks for before decoding (bf16)."""
    fam = w.facts["vae"]
    from ..variants import vae_family

    st = int(vae_family(fam)["stride_s"])
    per = float(_c(cal, "vae_decode_estimate_bytes_per_latent_pixel")[fam])
    return (w.height // st) * (w.width // st) * per * 2.0


def native_plan(w: Workload, plan: Plan, gpu: GpuSpec, cal: Calibration) -> tuple[Plan, list[str]]:
    """The plan ComfyUI's memory manager ends up with for `w` on `gpu` (see module doc)."""
    limit = plan.budget_gib if plan.budget_gib is not None else gpu.usable_gib
    p = plan.with_(attention="sdpa", compile=False, step_cache="none", cache_skip_fraction=0.0,
                   offload="none", blocks_to_stream=0, budget_gib=limit, num_gpus=1, shard_weights=False,
                   lora_mode="merged")
    s = compute_sizes(w, p, cal)
    free = (limit - float(cal.v("overhead.cuda_context_gib"))) * GIB
    min_inf = (float(_c(cal, "minimum_inference_memory_gib")) + float(_c(cal, "extra_reserved_vram_gib"))) * GIB
    cfg_batch = w.batch * (2 if any(c > 1.0 for c in w.cfg) else 1)
    reserve_min = comfy_memory_required(w, s, cal, w.batch) + min_inf
    reserve_cfg = comfy_memory_required(w, s, cal, cfg_batch) + min_inf
    ratio = float(_c(cal, "min_weight_memory_ratio"))
    lowvram = max(128 * 1024 ** 2, free - reserve_min, min(free * ratio, free - min_inf))
    notes = [f"{RUNTIME_LABEL['comfy_native']}: {SOURCE_NOTE} (ComfyUI 0.3.64 memory manager; reserves "
             f"{reserve_min / GIB:.1f} GiB for activations)"]
    models = s.experts * s.expert_bytes
    if models + 0.1 * s.expert_bytes + reserve_cfg <= free:
        off, n = "none", 0
    elif s.expert_bytes <= lowvram:
        off, n = "model", 0
        if s.experts > 1:
            notes.append("ComfyUI unloads one expert to load the other (both do not fit with its reserve)")
    else:
        n = min(s.shape.num_layers, math.ceil(max(0.0, s.expert_bytes - lowvram) / s.block_bytes))
        off = "blocks"
        notes.append(f"ComfyUI loads the model partially: {n} of {s.shape.num_layers} blocks stay in RAM and are "
                     "copied and cast layer by layer in every step")
    te_kept = plan.text_encoder_device == "gpu" and off == "none" and models + s.te_bytes + reserve_cfg <= free
    p = p.with_(offload=off, blocks_to_stream=n, text_encoder_unload=not te_kept, prefetch_blocks=0)
    if not p.vae_tiled:
        from .memory import vram_peak, vram_phases

        dec = vram_phases(compute_sizes(w, p, cal), w, p, cal)["decode"]
        peak, _, _ = vram_peak({"decode": dec}, cal)
        if peak / GIB > limit - float(cal.v("overhead.vram_reserve_gib")):
            p = p.with_(vae_tiled=True)
            notes.append("the full VAE decode does not fit: ComfyUI retries tiled after an out-of-memory error "
                         "(the failed attempt's time is not counted)")
    return p, notes


def kijai_plan(w: Workload, plan: Plan, gpu: GpuSpec, cal: Calibration) -> tuple[Plan, list[str]]:
    p = plan.with_(num_gpus=1, shard_weights=False)
    if p.prefetch_blocks is None:
        p = p.with_(prefetch_blocks=int(cal.v("runtimes.kijai.prefetch_default")))
    notes = [f"{RUNTIME_LABEL['kijai']}: {SOURCE_NOTE} (its nodes' settings; no Wan2.2-era snapshot was run)"]
    if p.offload == "blocks" and p.blocks_to_stream and not p.prefetch_blocks:
        notes.append("block swap without prefetch: each swapped block's copy is waited for (set prefetch_blocks 1)")
    return p, notes


def resolve(w: Workload, plan: Plan, gpu: GpuSpec, cal: Calibration) -> tuple[Plan, list[str]]:
    """The plan `plan.runtime` actually runs, and notes saying how it was derived."""
    if plan.runtime == "comfy_native":
        return native_plan(w, plan, gpu, cal)
    if plan.runtime == "kijai":
        return kijai_plan(w, plan, gpu, cal)
    return plan, []


def activation_factor(p: Plan, cal: Calibration) -> float:
    """ComfyUI's Wan forward keeps fewer live activations than the diffusers model the estimator's activation
    term was fitted on (measured ratio, calibration.json); other runtimes: 1."""
    return float(_c(cal, "activation_fraction")) if p.runtime == "comfy_native" else 1.0


def transfers_hidden(p: Plan, cal: Calibration) -> bool:
    """Whether streamed blocks' copies overlap compute: WanMeter prefetches; ComfyUI 0.3.64 copies
    synchronously unless --async-offload; kijai's block swap overlaps only with prefetch_blocks > 0."""
    if p.runtime == "comfy_native":
        return bool(_c(cal, "async_offload"))
    if p.runtime == "kijai":
        return bool(p.prefetch_blocks)
    return True


def stream_rate_bytes_per_s(p: Plan, gpu: GpuSpec, cal: Calibration) -> float:
    """Host-to-GPU rate of streamed blocks: pinned for WanMeter; pageable memory for ComfyUI's partial
    loading and kijai's swap without non-blocking copies (their RAM copies are not pinned)."""
    link = gpu.host_link_gbps * 1e9
    if p.runtime in ("comfy_native", "kijai"):
        return link * float(cal.v("streaming.pageable_fraction_of_link"))
    return link


def decode_residents(dec: dict[str, float], w: Workload, p: Plan, s: Sizes, cal: Calibration) -> dict[str, float]:
    """The decode phase's terms as ComfyUI runs it: before decoding it frees what its own decode estimate
    asks for (comfy/sd.py), unloading the text encoder first, then DiT weights."""
    if p.runtime != "comfy_native" or p.budget_gib is None:
        return dec
    free = (p.budget_gib - float(cal.v("overhead.cuda_context_gib"))) * GIB
    room = free - comfy_vae_decode_estimate(w, cal) - 1.1 * s.vae_bytes - float(_c(cal, "extra_reserved_vram_gib")) * GIB
    out = dict(dec)
    for k in ("text encoder weights", "DiT weights (resident)"):
        if k in out:
            keep = max(0.0, min(out[k], room - sum(v for n, v in out.items() if n not in ("VAE decode", k)
                                                    and n in ("text encoder weights", "DiT weights (resident)"))))
            out[k] = keep
    return {k: v for k, v in out.items() if v > 0 or k == "VAE decode"}


__all__ = ["activation_factor", "RUNTIMES", "RUNTIME_LABEL", "SOURCE_NOTE", "resolve", "native_plan", "kijai_plan", "transfers_hidden",
           "stream_rate_bytes_per_s", "comfy_memory_required", "comfy_vae_decode_estimate", "decode_residents"]
