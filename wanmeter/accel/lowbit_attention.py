"""8-bit attention for Hopper / Ada GPUs: int8 (or fp8) Q.K^T and fp8 P.V, in a Triton kernel of ours.

Why: at 1280x720x81 attention is 4.68 of the 6.52 PFLOP of an A14B forward. bf16 attention on an
H200 tops out at the cuDNN rate measured here (572 TF/s), which alone takes longer than the
1.6x-over-ComfyUI target allows; 8-bit tensor cores run at twice the bf16 rate. SageAttention
>= 2.1.1 (what diffusers' "sage" backend wants) has no wheel on the package registry, so this
module is the 8-bit path that installs with the pack.

The method follows the published SageAttention recipe (Zhang et al., 2024/2025; written from the
papers' description, not from their code):
  * K is smoothed: its mean over tokens is subtracted per head and channel. Softmax is invariant
    to adding the same number to every score of a row, and q.mean(K) is such a number, so the
    result is unchanged while K's outliers (a shared offset across tokens) leave the quantizer.
  * Q (pre-multiplied by the softmax scale and log2(e), so the kernel can use exp2) and K are
    quantized per tile of tokens (one scale per BLOCK_M rows of Q, per BLOCK_N rows of K, per
    head) to int8 (default) or fp8 e4m3; scores are dequantized in fp32 with the two scales.
  * The online softmax runs in fp32. P (in [0, 1]) is multiplied by 256 and cast to fp8 e4m3,
    which keeps small probabilities out of e4m3's subnormal range.
  * V is quantized to fp8 e4m3 with one scale per head and channel and stored transposed (tokens
    contiguous), the layout Hopper's fp8 tensor-core instructions need for the P.V operand.
  * P.V is computed as a fresh fp8 dot per tile and added into an fp32 accumulator in registers
    (not accumulated inside the tensor core), because Hopper's fp8 accumulators keep fewer
    mantissa bits than fp32 and the sum runs over tens of thousands of tokens.

Tensors come in and go out in diffusers' attention layout [batch, tokens, heads, head_dim]; the
kernel reads Q and K in place through strides (no transposes of the bf16 activations).

`lowbit_attention_reference` runs the same quantization in PyTorch with fp32 math: it is what the
CPU tests check against SDPA, and what the GPU check compares the kernel to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0
INT8_MAX = 127.0
P_SCALE = 256.0  # P in [0, 1] -> [0, 256] before the fp8 cast (e4m3 max is 448)
LOG2E = 1.4426950408889634
_EPS = 1e-8


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and pipelining of the kernel; the tile sizes are also the quantization groups."""
    block_m: int = 64
    block_n: int = 128
    num_warps: int = 4
    num_stages: int = 3
    qk: str = "int8"            # "int8" or "fp8" for Q and K
    pv_acc: str = "registers"    # "registers": fresh dot + fp32 add; "dot": accumulate inside tl.dot
    magic_i2f: bool = True       # int32 -> fp32 scores by the magic-number trick (lowbit_kernel)
    exp16: bool = False          # exp2 in fp16 via inline PTX (measured slower on an H100: off)
    tma: bool = True             # Hopper tensor-memory-accelerator loads (host descriptors; sm90+ only)
    warp_specialize: bool = False  # Triton's warp specialization of the K/V loop

    def __post_init__(self):
        if self.qk not in ("int8", "fp8"):
            raise ValueError(f"qk must be 'int8' or 'fp8', not {self.qk!r}")
        if self.pv_acc not in ("registers", "dot"):
            raise ValueError(f"pv_acc must be 'registers' or 'dot', not {self.pv_acc!r}")


DEFAULT_CONFIG = KernelConfig()


def config_for(device: torch.device | str, cfg: KernelConfig = DEFAULT_CONFIG) -> KernelConfig:
    """cfg adapted to the GPU: TMA loads exist from Hopper (sm90) on; Ada (sm89) uses pointer loads."""
    from dataclasses import replace

    device = torch.device(device)
    if cfg.tma and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0)):
        return replace(cfg, tma=False)
    return cfg


def lowbit_supported(device: torch.device | str, head_dim: int = 128) -> bool:
    """True where the kernel runs: CUDA sm89+ (fp8 tensor cores), Triton importable, head_dim a power of two >= 16."""
    device = torch.device(device)
    if FP8 is None or device.type != "cuda" or not torch.cuda.is_available():
        return False
    if head_dim < 16 or head_dim & (head_dim - 1):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


# ------------------------------------------------------------------ quantization (PyTorch; fuses under torch.compile)

def _pad_tokens(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = (-x.shape[1]) % multiple
    return F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x


def _quantize_tiles(x: torch.Tensor, block: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, S, H, D] (S a multiple of block) -> (x8 [B, S, H, D] int8/fp8, scale fp32 [B, S/block, H])."""
    b, s, h, d = x.shape
    xt = x.view(b, s // block, block, h, d)
    amax = xt.abs().amax(dim=(2, 4)).float().clamp_min(_EPS)  # [B, nb, H]
    top = INT8_MAX if kind == "int8" else FP8_MAX
    scale = amax / top
    y = xt.float() / scale[:, :, None, :, None]
    y = y.round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8) if kind == "int8" else y.to(FP8)
    return y.view(b, s, h, d), scale


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: KernelConfig = DEFAULT_CONFIG,
                 scale: float | None = None) -> dict:
    """The kernel's operands from bf16/fp32 q, k, v [B, S, H, D].

    Returns q8, k8 ([B, S_pad, H, D]), vt8 ([B, H, D, S_kv_pad] fp8, tokens contiguous), q_scale
    [B, nq, H], k_scale [B, nk, H], v_scale [B, H, D] and the true lengths. Q carries the softmax
    scale times log2(e); K is mean-smoothed over its true tokens before padding.
    """
    d = q.shape[-1]
    sm = (1.0 / math.sqrt(d)) if scale is None else scale
    s_q, s_kv = q.shape[1], k.shape[1]
    qf = q.float() * (sm * LOG2E)
    kf = k.float()
    kf = kf - kf.mean(dim=1, keepdim=True)
    q8, q_scale = _quantize_tiles(_pad_tokens(qf, cfg.block_m), cfg.block_m, cfg.qk)
    k8, k_scale = _quantize_tiles(_pad_tokens(kf, cfg.block_n), cfg.block_n, cfg.qk)
    vf = v.float()
    v_scale = (vf.abs().amax(dim=1).clamp_min(_EPS) / FP8_MAX)  # [B, H, D]
    v8 = (vf / v_scale[:, None]).to(FP8)
    vt8 = _pad_tokens(v8.view(torch.uint8), cfg.block_n).permute(0, 2, 3, 1).contiguous().view(FP8)
    return {"q8": q8, "k8": k8, "vt8": vt8, "q_scale": q_scale.contiguous(), "k_scale": k_scale.contiguous(),
            "v_scale": v_scale.contiguous(), "s_q": s_q, "s_kv": s_kv}


def lowbit_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               cfg: KernelConfig = DEFAULT_CONFIG, scale: float | None = None) -> torch.Tensor:
    """The kernel's arithmetic in PyTorch (fp32 math on the quantized operands). [B, S, H, D] in and out.

    Same quantization of Q, K, V and P as the kernel; the softmax is exact (not online), which
    differs from the kernel only by fp32 rounding. For CPU tests and for checking the kernel.
    """
    return reference_from_operands(quantize_qkv(q, k, v, cfg, scale), q.dtype, cfg)


def reference_from_operands(ops: dict, out_dtype: torch.dtype, cfg: KernelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """run_kernel's result computed in PyTorch from quantize_qkv's operands (any device)."""
    b, _, h, d = ops["q8"].shape
    s_q, s_kv = ops["s_q"], ops["s_kv"]
    qd = ops["q8"].float().view(b, -1, cfg.block_m, h, d) * ops["q_scale"][:, :, None, :, None]
    kd = ops["k8"].float().view(b, -1, cfg.block_n, h, d) * ops["k_scale"][:, :, None, :, None]
    qd = qd.reshape(b, -1, h, d)[:, :s_q].transpose(1, 2)        # [B, H, Sq, D]
    kd = kd.reshape(b, -1, h, d)[:, :s_kv].transpose(1, 2)       # [B, H, Skv, D]
    vt = ops["vt8"].float()[..., :s_kv]                            # [B, H, D, Skv]
    s = qd @ kd.transpose(-1, -2)                                  # log2 units
    s = s - s.amax(dim=-1, keepdim=True)
    p = torch.exp2(s)
    denom = p.sum(dim=-1, keepdim=True)
    p8 = (p * P_SCALE).to(FP8).float()
    out = (p8 @ vt.transpose(-1, -2)) / denom / P_SCALE * ops["v_scale"][:, :, None, :]
    return out.transpose(1, 2).to(out_dtype)


# ------------------------------------------------------------------ the Triton kernel (built on first use)

def _kernel(tma: bool = False):
    from . import lowbit_kernel

    return lowbit_kernel.attn_fwd_tma if tma else lowbit_kernel.attn_fwd


_OP = None


def _launch(q8, k8, vt8, q_scale, k_scale, v_scale, out, s_q, s_kv, block_m, block_n, num_warps, num_stages,
            qk_int8, pv_in_dot, magic_i2f, exp16, tma, ws):
    b, s_pad, h, d = q8.shape
    grid = (triton_cdiv(s_q, block_m), b * h)
    meta = dict(HEAD_D=d, BLOCK_M=block_m, BLOCK_N=block_n, QK_INT8=qk_int8, PV_IN_DOT=pv_in_dot,
                MAGIC_I2F=magic_i2f, EXP16=exp16, WS=ws, num_warps=num_warps, num_stages=num_stages)
    kernel = _kernel(tma)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        s_kpad = k8.shape[1]
        desc_q = TensorDescriptor.from_tensor(q8.view(b * s_pad, h * d), [block_m, d])
        desc_k = TensorDescriptor.from_tensor(k8.view(b * s_kpad, h * d), [block_n, d])
        desc_v = TensorDescriptor.from_tensor(vt8.view(b * h * d, vt8.shape[-1]), [d, block_n])
        kernel[grid](desc_q, desc_k, desc_v, q_scale, k_scale, v_scale, out,
                     out.stride(0), out.stride(1), out.stride(2),
                     h, q_scale.shape[1], k_scale.shape[1], s_q, s_kv, s_pad, s_kpad, **meta)
        return
    kernel[grid](
        q8, k8, vt8, q_scale, k_scale, v_scale, out,
        q8.stride(0), q8.stride(1), q8.stride(2), k8.stride(0), k8.stride(1), k8.stride(2),
        vt8.stride(0), vt8.stride(1), vt8.stride(2), out.stride(0), out.stride(1), out.stride(2),
        h, q_scale.shape[1], k_scale.shape[1], s_q, s_kv, **meta,
    )


def _op():
    """The kernel as an opaque PyTorch operator (torch.library.custom_op with a shape-only fake).

    torch.compile keeps the whole transformer block in one graph around it and calls the real
    kernel at run time. Opaque rather than torch.library.triton_op: Inductor cannot trace the
    host-side TMA descriptors (tried: torch 2.11 fails with a KeyError on the descriptor), and the
    kernel has nothing to fuse with anyway (quantization before it is plain PyTorch and fuses).
    """
    global _OP
    if _OP is not None:
        return _OP
    _kernel()  # import Triton and the kernels now, not inside a traced region

    @torch.library.custom_op("wanmeter::lowbit_attention", mutates_args=())
    def op(q8: torch.Tensor, k8: torch.Tensor, vt8: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor,
           v_scale: torch.Tensor, s_q: int, s_kv: int, out_dtype: torch.dtype, block_m: int, block_n: int,
           num_warps: int, num_stages: int, qk_int8: bool, pv_in_dot: bool, magic_i2f: bool,
           exp16: bool, tma: bool, ws: bool) -> torch.Tensor:
        b, _, h, d = q8.shape
        out = torch.empty((b, s_q, h, d), device=q8.device, dtype=out_dtype)
        _launch(q8, k8, vt8, q_scale, k_scale, v_scale, out, s_q, s_kv, block_m, block_n, num_warps, num_stages,
                qk_int8, pv_in_dot, magic_i2f, exp16, tma, ws)
        return out

    @op.register_fake
    def _(q8, k8, vt8, q_scale, k_scale, v_scale, s_q, s_kv, out_dtype, *rest):
        b, _, h, d = q8.shape
        return q8.new_empty((b, s_q, h, d), dtype=out_dtype)

    _OP = op
    return _OP


def run_kernel(ops: dict, out_dtype: torch.dtype, cfg: KernelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """Launch the kernel on quantize_qkv's operands; returns [B, S_q, H, D] in out_dtype."""
    return _op()(ops["q8"], ops["k8"], ops["vt8"], ops["q_scale"], ops["k_scale"], ops["v_scale"],
                 ops["s_q"], ops["s_kv"], out_dtype, cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages,
                 cfg.qk == "int8", cfg.pv_acc == "dot", cfg.magic_i2f, cfg.exp16, cfg.tma, cfg.warp_specialize)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def lowbit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: KernelConfig = DEFAULT_CONFIG,
                     scale: float | None = None) -> torch.Tensor:
    """Attention of q [B, Sq, H, D] over k, v [B, Skv, H, D] with 8-bit tensor cores; returns q's dtype.

    No mask, no dropout, not causal (what Wan's self- and cross-attention need). Runs the Triton
    kernel on a supported CUDA GPU; elsewhere raises (callers pick the path with lowbit_supported).
    """
    if not lowbit_supported(q.device, q.shape[-1]):
        raise RuntimeError("lowbit_attention needs a CUDA GPU of sm89+ with Triton and a power-of-two head_dim")
    cfg = config_for(q.device, cfg)
    ops = quantize_qkv(q, k, v, cfg, scale)
    return run_kernel(ops, q.dtype, cfg)
