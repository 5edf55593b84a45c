"""FLOPs of one Wan2.2 DiT forward, counted the way torch's FlopCounterMode counts them.

Why a closed form: the estimator must answer instantly (no torch import) and every time it
prints must be traceable to "FLOPs / (efficiency x peak)". Only matmuls, convolutions and
scaled-dot-product attention are counted (2 FLOPs per multiply-add); elementwise work
(norms, RoPE, modulation, GELU) is not, matching FlopCounterMode, and is modelled separately
as memory traffic in the timing model.

Per forward of diffusers' WanTransformer3DModel with N video tokens, T text tokens, width d,
FFN width f, L blocks:
    blocks:  L * [ 2N(4d^2 + 2df + 2d^2) + 2T*2d^2 + 4N^2 d + 4NTd ]
    embeddings: patch Conv3d (2*N*d*in_ch*4), text projection (2T(text_dim*d + d^2)),
                time MLP + 6d projection per timestep row (2R(freq*d + d^2 + 6d^2)),
                proj_out (2*N*d*out_ch*4)
R is 1 for a scalar timestep, N for TI2V's per-token timestep.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..variants import head_dim, text_len, variant

FREQ_DIM = 256
TEXT_DIM = 4096
PATCH = (1, 2, 2)


@dataclass(frozen=True)
class DiTShape:
    """The sizes that set the DiT's cost (a variant's facts, or a tiny test config)."""

    dim: int
    ffn_dim: int
    num_layers: int
    in_channels: int
    out_channels: int
    text_dim: int = TEXT_DIM
    freq_dim: int = FREQ_DIM

    @classmethod
    def of_variant(cls, name: str) -> "DiTShape":
        v = variant(name)
        return cls(dim=int(v["dim"]), ffn_dim=int(v["ffn_dim"]), num_layers=int(v["num_layers"]),
                   in_channels=int(v["in_channels"]), out_channels=int(v["out_channels"]))


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward, split by the kind of kernel that runs them."""

    linear: float      # matmuls + convs (block linears, embeddings, proj_out)
    attention: float   # SDPA: self-attention QK^T and PV + cross-attention to the text

    @property
    def total(self) -> float:
        return self.linear + self.attention


def latent_frames(frames: int) -> int:
    """Latent frames for a pixel frame count (causal VAE: first frame alone, then groups of 4)."""
    return (int(frames) - 1) // 4 + 1


def video_tokens(variant_name: str, width: int, height: int, frames: int) -> int:
    """DiT sequence length: latent frames x (H/stride/2) x (W/stride/2)."""
    from ..variants import vae_family

    s = int(vae_family(variant(variant_name)["vae"])["stride_s"])
    return latent_frames(frames) * (int(height) // s // PATCH[1]) * (int(width) // s // PATCH[2])


def forward_flops(shape: DiTShape, tokens: int, *, batch: int = 1, text_tokens: int | None = None,
                  per_token_timestep: bool = False) -> ForwardFlops:
    """FLOPs of one forward of `batch` sequences of `tokens` video tokens (see module doc)."""
    n = float(tokens)
    t = float(text_len() if text_tokens is None else text_tokens)
    d, f, layers = float(shape.dim), float(shape.ffn_dim), shape.num_layers
    patch_vol = PATCH[0] * PATCH[1] * PATCH[2]
    block_linear = 2 * n * (4 * d * d + 2 * d * f + 2 * d * d) + 2 * t * 2 * d * d
    block_attn = 4 * n * n * d + 4 * n * t * d
    rows = n if per_token_timestep else 1.0
    embed = (2 * n * d * shape.in_channels * patch_vol
             + 2 * t * (shape.text_dim * d + d * d)
             + 2 * rows * (shape.freq_dim * d + d * d + 6 * d * d)
             + 2 * n * d * shape.out_channels * patch_vol)
    return ForwardFlops(linear=batch * (layers * block_linear + embed),
                        attention=batch * layers * block_attn)


def block_params(shape: DiTShape) -> int:
    """Parameters of one transformer block (what a streamed block moves over the host link)."""
    d, f = shape.dim, shape.ffn_dim
    attn = 4 * (d * d + d) + 2 * d          # q,k,v,o with bias + RMS norm on q and k
    return 2 * attn + (d * f + f) + (f * d + d) + 2 * d + 6 * d  # self+cross, FFN, norm2 affine, table


def dit_params(shape: DiTShape) -> int:
    """All parameters of one DiT (one expert); equals diffusers' count (tested)."""
    d = shape.dim
    pv = PATCH[0] * PATCH[1] * PATCH[2]
    embed = (shape.in_channels * pv * d + d
             + shape.text_dim * d + d + d * d + d
             + shape.freq_dim * d + d + d * d + d
             + d * 6 * d + 6 * d)
    head = d * shape.out_channels * pv + shape.out_channels * pv + 2 * d
    return shape.num_layers * block_params(shape) + embed + head


def heads(shape: DiTShape) -> int:
    return shape.dim // head_dim()
