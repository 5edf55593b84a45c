"""Peak VRAM and system RAM, phase by phase.

A run has three GPU phases (text encoding, sampling, VAE decode); the peak is the largest
phase's tensors x (1 + allocator fragmentation) + the CUDA context. Each phase is a dict of
named byte counts so the breakdown the user sees is the formula's terms.
"""
from __future__ import annotations

from .calibration import Calibration
from .gpus import GpuSpec
from .flops import heads
from .parallel import gpu_layout
from .runtimes import activation_factor, decode_residents
from .sizes import GIB, Sizes
from .workload import Plan, Workload


def resident_dit_bytes(s: Sizes, p: Plan) -> float:
    """DiT weights kept on one GPU during sampling. CFG-parallel and Ulysses keep every weight on
    every GPU (measured: cfg2 and ulysses2 peaks equal or below the single-GPU peak); FSDP
    (shard_weights) keeps 1/num_gpus (measured 26.7 -> 13.4 GiB per GPU on 2 H200s)."""
    if p.offload == "none":
        b = s.experts * s.expert_bytes
    elif p.offload == "model":
        b = s.expert_bytes
    else:
        n = min(p.blocks_to_stream, s.shape.num_layers)
        b = s.expert_bytes - n * s.block_bytes
    return b / p.num_gpus if p.shard_weights else b


def activation_bytes(s: Sizes, w: Workload, p: Plan, cal: Calibration) -> float:
    """Live activations of one forward: tokens x dim x factor (+ TI2V's per-token modulation),
    split by the Ulysses degree (CFG-parallel and FSDP do not split them). Compiled blocks keep
    fewer fp32 temporaries alive (fitted to the speed runs' peaks)."""
    n = max(s.tokens_per_clip) * w.batch
    d = s.shape.dim
    act = float(cal.v("activations.bytes_per_token_channel"))
    if p.compile:
        act *= float(cal.v("compile.activation_fraction"))
    act *= activation_factor(p, cal)  # ComfyUI's own Wan model (runtimes.py); 1 for WanMeter
    b = n * d * act
    if w.variant == "ti2v_5b":
        b += n * 6 * d * float(cal.v("activations.modulation_bytes_per_token"))
    if p.attention == "sage":
        b += n * d * float(cal.v("activations.sage_extra_bytes_per_token_channel"))
    return b / gpu_layout(p, w, heads(s.shape)).ulysses


def vae_decode_bytes(w: Workload, p: Plan, s: Sizes, cal: Calibration) -> float:
    fam = w.facts["vae"]
    k = cal.v(f"vae.{fam}.{'tiled' if p.vae_tiled else 'full'}")
    px = w.width * w.height
    frames = w.frames * (w.s2v_clips if w.variant == "s2v_14b" else 1)
    scale = 2.0 if p.vae_dtype == "fp32" else 1.0
    work = (float(k["fixed_gib"]) * GIB + float(k["per_pixel_bytes"]) * px) * scale
    out = float(cal.v("vae.output_bytes_per_pixel_frame")) * px * frames * w.batch
    return s.vae_bytes + work + out


def vram_phases(s: Sizes, w: Workload, p: Plan, cal: Calibration) -> dict[str, dict[str, float]]:
    """Bytes on one GPU in each phase, by component (before fragmentation and context)."""
    dit = resident_dit_bytes(s, p)
    keep_dit = p.offload == "none"          # models stay resident between phases
    te_gpu = p.text_encoder_device == "gpu"
    te_kept = te_gpu and not p.text_encoder_unload
    phases: dict[str, dict[str, float]] = {}
    if te_gpu:
        tokens = s.prompts * 512
        enc = {"text encoder weights": s.te_bytes,
               "text encoder activations": tokens * float(cal.v("text_encoder.activation_bytes_per_token"))}
        if keep_dit:
            enc["DiT weights (resident)"] = dit
        phases["text encoding"] = enc
    samp = {"DiT weights (resident)": dit}
    if p.offload == "blocks" and p.blocks_to_stream > 0:
        samp["streamed-block buffers"] = int(cal.v("streaming.buffer_blocks")) * s.block_bytes
    if p.num_gpus > 1 and p.shard_weights:
        samp["gathered blocks (FSDP)"] = 2 * s.block_bytes
    # fp8 compute reads the fp8 weights directly: no bf16 copy of a layer is made.
    if p.weight_dtype not in ("bf16", "fp16") and not (p.fp8_compute and p.weight_dtype.startswith("fp8")):
        samp["cast buffer"] = 2 * s.shape.dim * s.shape.ffn_dim * 2.0
    if p.lora_mode == "unmerged" and s.lora_bytes_per_expert:
        samp["LoRA weights"] = s.lora_bytes_per_expert * (s.experts if keep_dit else 1)
    samp["activations"] = activation_bytes(s, w, p, cal)
    if te_kept:
        samp["text encoder weights"] = s.te_bytes
    phases["sampling"] = samp
    dec = {"VAE decode": vae_decode_bytes(w, p, s, cal)}
    if keep_dit:
        dec["DiT weights (resident)"] = dit
    if te_kept:
        dec["text encoder weights"] = s.te_bytes
    phases["decode"] = decode_residents(dec, w, p, s, cal)  # ComfyUI native unloads models first (runtimes.py)
    return phases


def vram_peak(phases: dict[str, dict[str, float]], cal: Calibration) -> tuple[float, str, dict[str, float]]:
    """(peak bytes, peak phase, breakdown in GiB incl. overheads)."""
    frag = float(cal.v("overhead.fragmentation_fraction"))
    ctx = float(cal.v("overhead.cuda_context_gib")) * GIB
    name = max(phases, key=lambda k: sum(phases[k].values()))
    tensors = sum(phases[name].values())
    breakdown = {k: v / GIB for k, v in phases[name].items()}
    breakdown["allocator fragmentation"] = tensors * frag / GIB
    breakdown["CUDA context"] = ctx / GIB
    return tensors * (1 + frag) + ctx, name, breakdown


def ram_breakdown(s: Sizes, w: Workload, p: Plan, cal: Calibration) -> dict[str, float]:
    """System RAM (GiB) at its peak: process, parked or CPU-resident models, pinned blocks."""
    out = {"process (Python, torch, ComfyUI)": float(cal.v("overhead.process_ram_gib"))}
    te_cpu_bytes = s.te_params * (4.0 if p.text_encoder_dtype == "fp32" else 2.0 if p.text_encoder_dtype != "fp8_e4m3fn" else 1.0)
    if p.text_encoder_device == "cpu":
        out["text encoder (runs on CPU)"] = (te_cpu_bytes + s.prompts * 512 * float(cal.v("text_encoder.activation_bytes_per_token"))) / GIB
    elif p.text_encoder_unload:
        out["text encoder (parked)"] = s.te_bytes / GIB
    if p.offload == "none":
        out["DiT load staging (one file)"] = s.expert_bytes / GIB
    elif p.pinned_swap:  # every expert's resident part stays in pinned masters, also while on the GPU
        from .timing import pinned_masters_bytes

        out[f"DiT experts' pinned masters ({s.experts})"] = pinned_masters_bytes(s, p) / GIB
        if p.offload == "blocks":
            n = min(p.blocks_to_stream, s.shape.num_layers)
            out[f"streamed blocks, pinned ({s.experts} x {n})"] = s.experts * n * s.block_bytes / GIB
    elif p.offload == "model":
        out[f"DiT experts parked ({s.experts})"] = s.experts * s.expert_bytes / GIB
    else:
        n = min(p.blocks_to_stream, s.shape.num_layers)
        if s.experts > 1:
            out[f"other expert(s) parked ({s.experts - 1})"] = (s.experts - 1) * s.expert_bytes / GIB
        out[f"streamed blocks, pinned ({n})"] = n * s.block_bytes / GIB
    if s.lora_bytes_per_expert:
        out["LoRA files"] = s.lora_bytes_per_expert * s.experts / GIB
    out["VAE"] = s.vae_bytes / GIB
    return out

