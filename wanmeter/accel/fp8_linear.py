"""fp8 (e4m3) compute for the DiT's block linears on Hopper / Ada GPUs.

Why: the transformer blocks' linears are ~30% of a Wan2.2 forward's FLOPs, and on sm89/sm90
`torch._scaled_mm` with fp8 inputs runs them ~1.65x faster than bf16 (performance.md). The
weights are stored in float8_e4m3fn with one fp32 scale per output channel (halving their
memory too); activations are quantized per token (one scale per row, from the row's amax)
right before the matmul, and `torch._scaled_mm` applies both scales in its epilogue:

    y[m, n] = scale_a[m] * scale_b[n] * sum_k xq[m, k] * wq[n, k]  (+ bias[n])

with xq [M, K] row-major fp8, wq.t() [K, N] column-major fp8, scale_a [M, 1] fp32,
scale_b [1, N] fp32, out bf16, bias bf16 (the rowwise CUTLASS kernel's contract in torch).

The per-token quantization is a reduction plus a cast over the whole activation; done eagerly
it costs as much as the fp8 gain (measured 0.79-1.19x of bf16), so `Fp8Linear.fused_quant`
compiles it with torch.compile (one fused Triton kernel: rowwise amax -> scale -> cast). Under
regional torch.compile of the blocks the quantization fuses with the preceding norm/modulation.

`emulate=True` (and any device without fp8 matmuls) runs the same math as a dequantized fp32
matmul: that is what the CPU tests use to check the quantization against bf16.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import WanMeterError

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
_EPS = 1e-12

# Linears of diffusers' WanTransformerBlock that take fp8 compute: self-attention q/k/v/o,
# cross-attention q/k/v/o (k/v run on the 512 text tokens: cheap, but quantized alike), FFN.
BLOCK_LINEAR_PATTERN = re.compile(
    r"^blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)"
    r"|ffn\.net\.0\.proj|ffn\.net\.2)$"
)


def fp8_matmul_supported(device: torch.device | str) -> bool:
    """True where `torch._scaled_mm` has fp8 tensor-core kernels: CUDA sm89 (Ada) and sm90+ (Hopper...)."""
    device = torch.device(device)
    if FP8 is None or device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) e4m3 quantization of a 2-D tensor: (xq fp8 [M,K], scale fp32 [M,1]).

    x ~= xq.float() * scale. The multiply runs in x's dtype (bf16 keeps 8 mantissa bits, e4m3
    keeps 3, so the extra rounding is negligible) to avoid an fp32 copy of a large activation.
    """
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(_EPS)
    scale = amax / FP8_MAX
    inv = (FP8_MAX / amax).to(x.dtype)
    xq = (x * inv).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return xq, scale


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel e4m3 quantization of a [N, K] weight: (wq fp8 [N,K], scale fp32 [N])."""
    w32 = w.detach().float()
    amax = w32.abs().amax(dim=1).clamp_min(_EPS)
    scale = amax / FP8_MAX
    wq = (w32 / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return wq, scale


class Fp8Linear(nn.Module):
    """A drop-in for nn.Linear whose matmul runs in fp8 with rowwise scales.

    Built from an existing Linear with `from_linear`; the original bf16 weight is dropped.
    The fp8 weight and its scales are buffers, so the runtime's precision logic (which looks at
    parameters) ignores them; still call `apply_fast_paths` *after* the runtime's placement, since a
    plain `model.to(dtype)` casts buffers too.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, out_dtype: torch.dtype,
                 device: torch.device | None = None, emulate: bool = False) -> None:
        super().__init__()
        if FP8 is None:
            raise WanMeterError("fp8 compute needs torch >= 2.1 (float8_e4m3fn); upgrade torch or turn fp8 compute off.")
        self.in_features, self.out_features = in_features, out_features
        self.out_dtype = out_dtype
        self.emulate = emulate
        self.bias_in_kernel = True   # pass bias to _scaled_mm (bf16 bias, rowwise contract)
        self.use_fast_accum = True   # Hopper fast accumulation, as torchao's fp8 inference does
        self.quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = quantize_rows
        # Buffers, not Parameters: the runtime picks the compute dtype from the parameters' dtype and
        # casts parameters with model.to(dtype); fp8 weights must be invisible to both.
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=out_dtype, device=device), requires_grad=False)
                     if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, out_dtype: torch.dtype | None = None, emulate: bool = False) -> "Fp8Linear":
        w = linear.weight
        out_dtype = out_dtype or (w.dtype if w.dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16)
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, out_dtype=out_dtype,
                device=torch.device("meta"), emulate=emulate)
        wq, ws = quantize_weight(w)
        m.weight = wq
        m.weight_scale = ws
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().to(out_dtype), requires_grad=False)
        return m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"out_dtype={self.out_dtype}, emulate={self.emulate}")

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.out_dtype:
            x2 = x2.to(self.out_dtype)
        xq, sa = self.quantize(x2)
        if self.emulate:
            y = (xq.float() * sa) @ self.dequantized_weight().t()
            if self.bias is not None:
                y = y + self.bias.float()
            y = y.to(self.out_dtype)
        else:
            kernel_bias = self.bias if (self.bias is not None and self.bias_in_kernel) else None
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=sa, scale_b=self.weight_scale.view(1, -1),
                                 bias=kernel_bias, out_dtype=self.out_dtype, use_fast_accum=self.use_fast_accum)
            if self.bias is not None and not self.bias_in_kernel:
                y = y + self.bias
        return y.reshape(*lead, self.out_features)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def fp8_target_names(model: nn.Module, pattern: re.Pattern = BLOCK_LINEAR_PATTERN) -> list[str]:
    """Names of the Linear layers `swap_fp8_linears` replaces (block attention + FFN linears only:
    embeddings, time projection and the output head stay in bf16 for accuracy)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.match(n)]


def probe_scaled_mm(device: torch.device) -> dict:
    """Check `torch._scaled_mm`'s rowwise contract on `device` on a small case against the dequantized
    matmul. Returns {"ok": bool, "bias_in_kernel": bool, "error": str|None} so a torch build that
    rejects the bias (or rowwise scales) degrades instead of failing mid-forward."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(64, 128, generator=g).to(device, torch.bfloat16)
    lin = nn.Linear(128, 96, bias=True).to(device, torch.bfloat16)
    ref = Fp8Linear.from_linear(lin, emulate=True)(x).float()
    out = {"ok": False, "bias_in_kernel": False, "error": None}
    for in_kernel in (True, False):
        m = Fp8Linear.from_linear(lin)
        m.bias_in_kernel = in_kernel
        try:
            y = m(x).float()
        except (RuntimeError, TypeError, NotImplementedError) as e:
            out["error"] = f"{type(e).__name__}: {e}"
            continue
        err = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        if err < 0.05:
            out.update(ok=True, bias_in_kernel=in_kernel, error=None)
            return out
        out["error"] = f"scaled_mm result differs from the dequantized matmul (relative error {err:.3g})"
    return out


def swap_fp8_linears(model: nn.Module, *, emulate: bool | None = None, fused_quant: bool = False,
                     names: Iterable[str] | None = None) -> list[str]:
    """Replace the block linears of a diffusers WanTransformer3DModel by Fp8Linear in place.

    emulate None: real fp8 matmuls where the weights' device supports them, else refuse with a
    fix (fp8 compute is pointless without fp8 tensor cores). fused_quant: compile the per-token
    quantization into one kernel (CUDA only). Returns the replaced module names.
    """
    targets = list(names) if names is not None else fp8_target_names(model)
    if not targets:
        raise WanMeterError("fp8 compute found no transformer-block linears to convert; is this a Wan2.2 DiT "
                            "(diffusers WanTransformer3DModel)?")
    device = model.get_submodule(targets[0]).weight.device
    if emulate is None:
        if not fp8_matmul_supported(device):
            raise WanMeterError(
                f"fp8 compute needs an NVIDIA GPU with fp8 tensor cores (Ada sm89 or Hopper sm90+: RTX 40xx, L4, L40S, "
                f"H100, H200); the model is on {device}. Turn fp8 compute off (fp8 weight storage still saves memory)."
            )
        emulate = False
    bias_in_kernel, quant = True, quantize_rows
    if not emulate:
        probe = probe_scaled_mm(device)
        if not probe["ok"]:
            raise WanMeterError(f"This torch build cannot run rowwise fp8 matmuls here ({probe['error']}); "
                                "turn fp8 compute off or update torch (>= 2.5).")
        bias_in_kernel = probe["bias_in_kernel"]
        if fused_quant and device.type == "cuda":
            quant = torch.compile(quantize_rows, dynamic=True, fullgraph=True)
    for name in targets:
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise WanMeterError(f"{name} is {type(lin).__name__}, not a Linear; cannot convert it to fp8.")
        new = Fp8Linear.from_linear(lin, emulate=emulate)
        new.bias_in_kernel = bias_in_kernel
        new.quantize = quant
        _set_submodule(model, name, new)
        del lin
    return targets
