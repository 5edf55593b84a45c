"""Seconds per phase: loading, text encoding, denoising, decoding.

Denoising, per forward: linear FLOPs / matmul rate + attention FLOPs / kernel rate +
elementwise HBM traffic / bandwidth + weight-cast traffic (fp8/GGUF storage) + streamed-block
transfers not hidden under compute + multi-GPU communication. Rates are the GPU's achieved
matmul rate x calibrated fractions, so no term can beat FLOPs / peak.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .calibration import Calibration
from .flops import heads
from .gpus import GpuSpec
from .parallel import GpuLayout, gpu_layout, ulysses_overhead
from .runtimes import stream_rate_bytes_per_s, transfers_hidden
from .sizes import GIB, Sizes
from .workload import Plan, Workload


def matmul_rate(gpu: GpuSpec, cal: Calibration) -> float:
    """FLOP/s of the DiT's bf16 linears on this GPU."""
    frac = cal.v("matmul.default_fraction_of_datasheet")
    by_arch = cal.data.get("matmul", {}).get("default_fraction_by_arch", {})
    if gpu.arch in by_arch:
        frac = by_arch[gpu.arch]["value"]
    base = gpu.achieved_bf16_tflops or gpu.bf16_tflops * float(frac)
    return min(base * float(cal.v("matmul.in_model_fraction_of_achieved")), gpu.peak_bf16_tflops) * 1e12


def attention_backend(plan: Plan, gpu: GpuSpec, cal: Calibration) -> str:
    """The kernel that actually runs: 'sdpa' resolves per architecture; FA3 only on Hopper."""
    b = plan.attention
    if b == "8bit" and not (gpu.has_fp8 and float(cal.v(f"attention_fraction_of_matmul.{gpu.arch}.8bit")) > 0):
        b = "sdpa"  # the runtime refuses 8bit without fp8 tensor cores; what runs instead is auto
    if b == "sdpa":
        b = cal.v("sdpa_auto_backend")[gpu.arch]
    return b


def attention_rate(plan: Plan, gpu: GpuSpec, cal: Calibration) -> float:
    b = attention_backend(plan, gpu, cal)
    frac = float(cal.v(f"attention_fraction_of_matmul.{gpu.arch}.{b}"))
    cap = 2.0 if b in ("sage", "8bit") else 1.0   # 8-bit tensor cores: up to 2x the bf16 rate
    return min(matmul_rate(gpu, cal) * frac, gpu.peak_bf16_tflops * 1e12 * cap)


def fp8_compute_active(plan: Plan, gpu: GpuSpec) -> bool:
    """fp8 matmuls run only on GPUs with fp8 tensor cores and only from fp8 weights."""
    return plan.fp8_compute and gpu.has_fp8 and plan.weight_dtype.startswith("fp8")


def layout_of(s: Sizes, w: Workload, p: Plan) -> GpuLayout:
    return gpu_layout(p, w, heads(s.shape))


@dataclass
class ForwardTime:
    linear: float = 0.0
    attention: float = 0.0
    elementwise: float = 0.0
    weight_cast: float = 0.0
    streaming: float = 0.0
    communication: float = 0.0
    trace: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.elementwise + self.weight_cast + self.streaming + self.communication


def forward_time(s: Sizes, w: Workload, p: Plan, gpu: GpuSpec, cal: Calibration, clip: int = 0) -> ForwardTime:
    """Seconds of one DiT forward (one CFG branch) for clip `clip`, on one GPU group of the layout
    (its Ulysses degree splits the tokens; CFG-parallel is accounted per step in phase_times)."""
    f = s.flops_per_clip[clip]
    n_tok = s.tokens_per_clip[clip] * w.batch
    lay = layout_of(s, w, p)
    u = lay.ulysses
    t = ForwardTime()
    r_mm = matmul_rate(gpu, cal)
    fp8 = fp8_compute_active(p, gpu)
    lin_rate = r_mm / (float(cal.v("fp8.compute_linear_time_fraction")) if fp8 else 1.0)
    lin_rate = min(lin_rate, (gpu.fp8_tflops if fp8 else gpu.peak_bf16_tflops) * 1e12)
    r_att = attention_rate(p, gpu, cal)
    bw = gpu.mem_bw_gbps * 1e9
    t.linear = f.linear / lin_rate / u
    t.attention = f.attention / r_att / u
    layers, d = s.shape.num_layers, s.shape.dim
    elt_b = float(cal.v("elementwise_bytes_per_token_channel_block"))
    kept = 1.0 - float(cal.v("compile.elementwise_fraction_removed")) if p.compile else 1.0
    if p.fused_rotary and not p.compile and attention_backend(p, gpu, cal) != "8bit":
        # eager on CUDA: our fused-rotary processor replaces diffusers' fp32 rotary kernels
        elt_b -= float(cal.v("fused_rotary_bytes_saved_per_token_channel_block"))
    t.elementwise = layers * n_tok * d * elt_b * kept / bw / u
    sfx = f" / {u} GPUs" if u > 1 else ""
    t.trace.append(f"linear {f.linear / 1e12:.1f} TFLOP / {lin_rate / 1e12:.0f} TF/s{' (fp8)' if fp8 else ''}{sfx}"
                   f" = {t.linear:.3f} s")
    t.trace.append(f"attention {f.attention / 1e12:.1f} TFLOP / {r_att / 1e12:.0f} TF/s "
                   f"({attention_backend(p, gpu, cal)}){sfx} = {t.attention:.3f} s")
    t.trace.append(f"elementwise {layers} blocks x {n_tok} tokens x {d} x {elt_b:.0f} B"
                   + (f" x {kept:.2f} (compiled)" if p.compile else "") + f" / {gpu.mem_bw_gbps:.0f} GB/s{sfx}"
                   f" = {t.elementwise:.3f} s")
    if fp8 and not p.compile:  # eager: per-token activation quantization is not fused into the block
        q = float(cal.v("fp8.eager_quant_bytes_per_token_channel_block"))
        t.weight_cast = layers * n_tok * d * q / bw / u
        t.trace.append(f"fp8 activation quantization (eager) {layers} x {n_tok} x {d} x {q:.0f} B = {t.weight_cast:.3f} s")
    if p.weight_dtype not in ("bf16", "fp16") and not fp8:
        k = float(cal.v("fp8.cast_bytes_per_weight"))
        if p.is_gguf:
            k *= float(cal.v("fp8.gguf_dequant_factor"))
        t.weight_cast = s.expert_params * k / bw
        if p.shard_weights:
            t.weight_cast /= p.num_gpus
        t.trace.append(f"weight upcast {s.expert_params / 1e9:.1f}e9 weights x {k:.0f} B / {gpu.mem_bw_gbps:.0f} GB/s = {t.weight_cast:.3f} s")
    if p.offload == "blocks" and p.blocks_to_stream > 0:
        n = min(p.blocks_to_stream, layers)
        per_block_compute = (t.linear + t.attention + t.elementwise + t.weight_cast) / layers
        xfer = s.block_bytes / stream_rate_bytes_per_s(p, gpu, cal)
        ovh = float(cal.v("streaming.overhead_s_per_block"))
        if not transfers_hidden(p, cal):  # ComfyUI partial loading / kijai swap without prefetch (runtimes.py)
            per_block_compute = 0.0
        t.streaming = n * (max(0.0, xfer - per_block_compute) + ovh)
        t.trace.append(f"streaming {n} blocks x (max(0, {xfer * 1e3:.1f} ms transfer - {per_block_compute * 1e3:.1f} ms compute)"
                       f" + {ovh * 1e3:.1f} ms) = {t.streaming:.3f} s")
    compute = t.linear + t.attention + t.elementwise + t.weight_cast
    link = gpu.interconnect_gbps * 1e9
    if u > 1:
        # Measured overhead model (H200 NVLink), floored by the all-to-all bytes over this GPU's link.
        measured = compute * ulysses_overhead(u, cal)
        a2a = layers * int(cal.v("multi_gpu.alltoall_per_block")) * n_tok * d * 2.0 * (u - 1) / u / u / link
        t.communication += max(measured, a2a)
        t.trace.append(f"Ulysses {u}: max(measured overhead {measured:.3f} s, all-to-all {a2a:.3f} s over "
                       f"{gpu.interconnect_gbps:.0f} GB/s)")
    if p.shard_weights and p.num_gpus > 1:
        g = p.num_gpus
        gather = s.expert_bytes * (g - 1) / g / link * float(cal.v("multi_gpu.comm_exposed_fraction"))
        fsdp = max(compute * float(cal.v("multi_gpu.fsdp_time_overhead")), gather)
        t.communication += fsdp
        t.trace.append(f"FSDP all-gather: max(measured overhead, {gather:.3f} s of weights over the link) = {fsdp:.3f} s")
    return t


def forwards_per_expert(w: Workload) -> tuple[int, ...]:
    """Forwards each expert runs for one clip: steps x (2 with CFG, else 1)."""
    return tuple(st * (2 if c > 1.0 else 1) * 1 for st, c in zip(w.expert_steps(), w.cfg))


def forward_slots_per_expert(w: Workload, lay: GpuLayout) -> tuple[float, ...]:
    """Forward times each expert costs on the wall clock: with CFG-parallel the guided pair runs at
    once (one slot per step, divided by the measured CFG efficiency); unguided steps gain nothing."""
    out = []
    for st, c in zip(w.expert_steps(), w.cfg):
        out.append(2.0 * st if c > 1.0 and lay.cfg == 1 else float(st))
    return tuple(out)


def skipped_fraction(p: Plan) -> float:
    """Share of forwards a step cache skips: the user's number (not predicted; see docs/ESTIMATOR.md)."""
    return float(p.cache_skip_fraction) if p.step_cache != "none" else 0.0


@dataclass
class PhaseTimes:
    load_cold: float
    text_encode: float
    transfers: float
    denoise: float
    decode: float
    denoise_parts: dict[str, float]
    per_forward: ForwardTime
    forwards: int


# ---------------------------------------------------------------- whole-model moves, first-call costs
# Measured on an H200 host with bench/swap_compile_load.py and bench/whole_video.py
# (bench/results/2026-12-01_h200/); constants and their sources in calibration.json "swap", "compile".

def model_move_seconds(nbytes: float, direction: str, pinned: bool, gpu: GpuSpec, cal: Calibration) -> float:
    """Seconds to move a whole model of `nbytes` host->device ("in") or device->host ("out").

    Pageable (nn.Module.to): host-bound rates, the copy out allocating fresh CPU memory (1.5 GB/s
    measured, the slow half of a swap). Pinned (RuntimeOptions.pinned_swap): the DMA rate of the
    host link in; nothing out (the pinned master is still valid, so the device copy is dropped)."""
    if pinned:
        if direction == "out":
            return 0.0
        return nbytes / (gpu.host_link_gbps * 1e9 * float(cal.v("swap.pinned_fraction_of_link")))
    key = "swap.pageable_h2d_gbps" if direction == "in" else "swap.pageable_d2h_gbps"
    return nbytes / (float(cal.v(key)) * 1e9)


def expert_transfer_seconds(s: Sizes, p: Plan, gpu: GpuSpec, cal: Calibration) -> tuple[float, str]:
    """Per video, moving the DiT experts' resident weights under offload model/blocks: each expert
    comes in once and goes out once (video n ends on the low-noise expert; video n+1 swaps back)."""
    if p.offload == "none":
        return 0.0, ""
    if p.offload == "model":
        moved = s.expert_bytes
    else:  # the resident part leaves the GPU for text encoding / decode, like "model"
        moved = s.expert_bytes - min(p.blocks_to_stream, s.shape.num_layers) * s.block_bytes
    t_in = model_move_seconds(moved, "in", p.pinned_swap, gpu, cal)
    t_out = model_move_seconds(moved, "out", p.pinned_swap, gpu, cal)
    total = s.experts * (t_in + t_out)
    how = "pinned" if p.pinned_swap else "pageable"
    return total, (f"expert moves ({how}): {s.experts} x ({moved / 1e9:.1f} GB in {t_in:.2f} s + out {t_out:.2f} s)"
                   f" = {total:.2f} s per video")


def pinned_masters_bytes(s: Sizes, p: Plan) -> float:
    """Pinned RAM of the experts' masters: whole 1 GiB chunks (wanmeter.runtime.placement)."""
    if not p.pinned_swap or p.offload == "none":
        return 0.0
    if p.offload == "model":
        per = s.expert_bytes
    else:
        per = s.expert_bytes - min(p.blocks_to_stream, s.shape.num_layers) * s.block_bytes
    return s.experts * math.ceil(per / GIB * PINNED_PACKING) * GIB


PINNED_PACKING = 1.02   # first-fit packing slack: 26.67 GiB -> 28 chunks, 13.58 GiB -> 14 (measured)


def first_call_seconds(s: Sizes, p: Plan, cal: Calibration) -> tuple[float, list[str]]:
    """Once per session, on top of reading the files: copying the experts into pinned masters
    (pinned_swap) and compiling (compile=True: once per resolution; the second expert reuses the
    compiled block, measured no recompile)."""
    t, trace = 0.0, []
    pinned = pinned_masters_bytes(s, p)
    if pinned:
        park = pinned / (float(cal.v("swap.pin_gbps")) * 1e9)
        t += park
        trace.append(f"pinning {pinned / GIB:.0f} GiB of expert masters / {cal.v('swap.pin_gbps')} GB/s = {park:.1f} s")
    if p.compile:
        c = float(cal.v("compile.first_call_s"))
        if p.fp8_compute or p.attention == "8bit":
            c += float(cal.v("compile.fast_paths_extra_s"))
        t += c
        trace.append(f"first compiled step: +{c:.1f} s of compilation")
    return t, trace


def phase_times(s: Sizes, w: Workload, p: Plan, gpu: GpuSpec, cal: Calibration) -> PhaseTimes:
    disk = float(cal.v("overhead.disk_gbps")) * 1e9
    # Cold load: every file read from disk once, then what lives on the GPU crosses the host link;
    # plus pinning and compilation, once per session (first_call_seconds).
    files = s.experts * s.expert_bytes + s.te_bytes + s.vae_bytes
    load = files / disk + first_call_seconds(s, p, cal)[0]
    # Text encoding.
    tokens = s.prompts * 512
    te_flops = 2.0 * (s.te_params - float(cal.v("text_encoder.embedding_params"))) * tokens
    if p.text_encoder_device == "gpu":
        te = te_flops / (matmul_rate(gpu, cal) * float(cal.v("text_encoder.gpu_fraction_of_matmul")))
    else:
        te = te_flops / (float(cal.v("text_encoder.cpu_tflops")) * 1e12)
    # Per-video host<->GPU moves of whole models.
    transfers = 0.0
    if p.text_encoder_device == "gpu" and p.text_encoder_unload:
        transfers += model_move_seconds(s.te_bytes, "in", False, gpu, cal)  # brought back in for each video
    transfers += expert_transfer_seconds(s, p, gpu, cal)[0]
    # Denoising.
    parts = {k: 0.0 for k in ("linear", "attention", "elementwise", "weight_cast", "streaming", "communication", "step_overhead")}
    fwd_counts = forwards_per_expert(w)
    lay = layout_of(s, w, p)
    slots = forward_slots_per_expert(w, lay)
    keep = 1.0 - skipped_fraction(p)
    cfg_eff = float(cal.v("multi_gpu.cfg_efficiency")) if lay.cfg > 1 else 1.0
    guided_share = sum(sl for sl, c in zip(slots, w.cfg) if c > 1.0) / max(sum(slots), 1e-9)
    n_fwd = 0
    first: ForwardTime | None = None
    for c in range(len(s.tokens_per_clip)):
        ft = forward_time(s, w, p, gpu, cal, c)
        first = first or ft
        n_fwd += sum(fwd_counts)
        k = sum(slots) * keep
        for name in ("linear", "attention", "elementwise", "weight_cast", "streaming", "communication"):
            parts[name] += k * getattr(ft, name)
        if cfg_eff < 1.0:  # CFG-parallel: the guided slots cost 1/efficiency (prediction exchange, sync)
            parts["communication"] += k * guided_share * ft.total * (1.0 / cfg_eff - 1.0)
        parts["step_overhead"] += w.steps * float(cal.v("overhead.per_step_overhead_s"))
    denoise = sum(parts.values())
    # Decode.
    fam = w.facts["vae"]
    k = cal.v(f"vae.{fam}.{'tiled' if p.vae_tiled else 'full'}")
    frames = w.frames * len(s.tokens_per_clip)
    ref_rate = float(cal.v("reference_matmul_tflops")) * 1e12  # decode times were measured there
    decode = (float(k["fixed_s"]) + float(k["ns_per_pixel_frame"]) * 1e-9 * w.width * w.height * frames * w.batch)
    decode *= ref_rate / matmul_rate(gpu, cal)
    if p.vae_dtype == "fp32":
        decode *= float(cal.v("vae.fp32_time_factor"))
    return PhaseTimes(load_cold=load, text_encode=te, transfers=transfers, denoise=denoise, decode=decode,
                      denoise_parts=parts, per_forward=first or ForwardTime(), forwards=n_fwd)


__all__ = ["phase_times", "model_move_seconds", "expert_transfer_seconds", "first_call_seconds", "pinned_masters_bytes", "forward_time", "layout_of", "skipped_fraction", "fp8_compute_active", "matmul_rate", "attention_rate", "GIB"]
