"""Sizes the memory and time models share: bytes per expert and per block, tokens, FLOPs per forward.

Everything here is arithmetic on the variant's facts and the plan's precisions (no torch).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..variants import head_dim, text_len, vae_family
from .calibration import Calibration
from .flops import DiTShape, ForwardFlops, block_params, dit_params, forward_flops, latent_frames, video_tokens
from .workload import Plan, Workload

GIB = 1024 ** 3


@dataclass(frozen=True)
class Sizes:
    shape: DiTShape
    experts: int
    expert_params: float
    block_params: float
    bytes_per_weight: float
    expert_bytes: float
    block_bytes: float
    nonblock_bytes: float
    lora_bytes_per_expert: float     # all LoRAs' A/B matrices of one expert, bf16
    te_params: float
    te_bytes: float
    vae_bytes: float
    tokens_per_clip: tuple[int, ...]  # DiT sequence length per clip (S2V adds ref/motion tokens)
    video_tokens: int                 # noisy-video tokens only
    flops_per_clip: tuple[ForwardFlops, ...]  # one forward (batch included) per clip
    prompts: int                      # text sequences to encode (2 with CFG)


def lora_params_per_block(shape: DiTShape, rank: int) -> float:
    """A and B of rank r on every block linear: self/cross q,k,v,o (d->d) and the FFN pair."""
    d, f = shape.dim, shape.ffn_dim
    return float(rank) * (8 * 2 * d + 2 * (d + f))


def _te_bytes_per_param(dtype: str) -> float:
    return {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "fp8_e4m3fn": 1.0}[dtype]


def _s2v_extra(w: Workload, shape: DiTShape, n_video: int, cal: Calibration, clip_index: int) -> tuple[int, ForwardFlops]:
    """Reference-image and motion tokens of one S2V clip, and the audio injectors' FLOPs."""
    s = int(vae_family(w.facts["vae"])["stride_s"])
    hw = (w.height // s // 2) * (w.width // s // 2)
    extra_tokens = hw + (0 if clip_index == 0 else int(1.5 * hw))  # ref frame; motion: 1 + 1/4 + 1/4 frames
    lat = latent_frames(w.frames)
    a_tokens = lat * int(cal.v("s2v.audio_tokens_per_latent_frame"))
    d = float(shape.dim)
    layers = int(cal.v("s2v.injection_layers"))
    lin = layers * (2 * n_video * 2 * d * d + 2 * a_tokens * 2 * d * d)
    att = layers * 4.0 * n_video * int(cal.v("s2v.audio_tokens_per_latent_frame")) * d
    return extra_tokens, ForwardFlops(linear=w.batch * lin, attention=w.batch * att)


def compute_sizes(w: Workload, p: Plan, cal: Calibration) -> Sizes:
    shape = DiTShape.of_variant(w.variant)
    experts = int(w.facts["experts"])
    bpw = float(cal.v(f"weight_bytes_per_param.{p.weight_dtype}"))
    ep = float(dit_params(shape))
    if w.variant == "s2v_14b":
        ep += float(cal.v("s2v.extra_params"))
    bp = float(block_params(shape))
    lora = w.loras * lora_params_per_block(shape, w.lora_rank) * shape.num_layers * 2.0
    te_params = float(cal.v("text_encoder.params"))
    vae_params = float(vae_family(w.facts["vae"])["params"])
    vae_bpp = 4.0 if p.vae_dtype == "fp32" else 2.0
    n = video_tokens(w.variant, w.width, w.height, w.frames)
    per_token_t = w.variant == "ti2v_5b"
    clips = w.s2v_clips if w.variant == "s2v_14b" else 1
    tokens, flops = [], []
    for c in range(clips):
        if w.variant == "s2v_14b":
            extra, s2v_f = _s2v_extra(w, shape, n, cal, c)
        else:
            extra, s2v_f = 0, ForwardFlops(0.0, 0.0)
        base = forward_flops(shape, n + extra, batch=w.batch, per_token_timestep=per_token_t)
        lora_f = 0.0
        if p.lora_mode == "unmerged" and w.loras:
            lora_f = 2.0 * w.batch * (n + extra) * lora_params_per_block(shape, w.lora_rank) * shape.num_layers * w.loras
        tokens.append(n + extra)
        flops.append(ForwardFlops(linear=base.linear + s2v_f.linear + lora_f, attention=base.attention + s2v_f.attention))
    return Sizes(
        shape=shape, experts=experts, expert_params=ep, block_params=bp, bytes_per_weight=bpw,
        expert_bytes=ep * bpw, block_bytes=bp * bpw, nonblock_bytes=(ep - shape.num_layers * bp) * bpw,
        lora_bytes_per_expert=lora, te_params=te_params, te_bytes=te_params * _te_bytes_per_param(p.text_encoder_dtype),
        vae_bytes=vae_params * vae_bpp, tokens_per_clip=tuple(tokens), video_tokens=n, flops_per_clip=tuple(flops),
        prompts=(2 if any(c > 1.0 for c in w.cfg) else 1) * w.batch,
    )


__all__ = ["Sizes", "compute_sizes", "GIB", "head_dim", "text_len"]
