"""diffusers attention processors for Wan's self-attention: fused rotary (bf16) and our 8-bit kernel.

Why a processor and not a diffusers attention backend: diffusers' dispatcher only accepts the
members of its own `AttentionBackendName` enum, so a kernel of ours cannot be registered there.
WanAttention lets each module carry its own processor, so we swap the processor of every block's
self-attention (attn1). Cross-attention (512 text tokens, ~1% of the FLOPs), the I2V image
branch, masks and context-parallel (Ulysses) runs go to diffusers' stock WanAttnProcessor with
the backend the model was given, so nothing else changes.

The self-attention path keeps the stock order of operations: q/k/v projections, RMS norm across
heads, rotary embedding (in fp32, as diffusers does), attention, output projection. Two kinds:
  * "fused_rope" (bf16): the rotary step of q and k compiled into one kernel. diffusers applies it
    as a dozen separate fp32 elementwise kernels with strided writes: measured on an H100 at
    1280x720x81, ~20 ms of a 321 ms block, while ComfyUI's native model spends less there, which
    is most of why diffusers' model trails ComfyUI's in eager mode. Attention itself still goes
    through diffusers' dispatcher with the model's backend, so the numbers are the stock ones up
    to fp32 rounding order.
  * "8bit": the rotated q and k stay in fp32 and go straight into the 8-bit quantizer (no bf16
    round trip), then our Triton kernel.
"""
from __future__ import annotations

import torch

import logging

from .lowbit_attention import DEFAULT_CONFIG, KernelConfig, quantize_qkv, run_kernel

log = logging.getLogger(__name__)
_COMPILED: dict = {}
PROCESSOR_KINDS = ("fused_rope", "8bit")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved (even, odd) channel pairs; returns fp32.

    cos/sin are diffusers' WanRotaryPosEmbed outputs ([1, S, 1, D], each frequency repeated for
    its pair): pair i turns by the angle whose cosine is cos[2i] and sine sin[2i + 1].
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    c, s = cos[..., 0::2].float(), sin[..., 1::2].float()
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)


def _rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k in fp32 and return them in their own dtype (diffusers' numerics)."""
    return _rotate(q, cos, sin).to(q.dtype), _rotate(k, cos, sin).to(k.dtype)


def _rope_quantize(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   cfg: KernelConfig) -> dict:
    """Rotate q and k (fp32, no bf16 round trip) and quantize q, k, v into the kernel's operands."""
    return quantize_qkv(_rotate(q, cos, sin), _rotate(k, cos, sin), v, cfg)


def _call_compiled(fn, *args):
    """fn(*args) as one fused kernel: compiled once per function in eager runs (recompiled per shape
    by torch.compile itself); traced as is when the whole block is being compiled (it then fuses
    with the block's norm ops). Where torch.compile cannot run (no working Triton), the eager ops
    are used from then on, with one warning: slower, same result."""
    if torch.compiler.is_compiling():
        return fn(*args)
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = _COMPILED[fn] = torch.compile(fn, dynamic=False)
    if compiled is fn:
        return fn(*args)
    try:
        return compiled(*args)
    except Exception as e:  # noqa: BLE001 - the compiler, not the math, failed: fall back once
        log.warning("torch.compile unavailable for %s (%s: %s); using eager ops", fn.__name__, type(e).__name__, e)
        _COMPILED[fn] = fn
        return fn(*args)


class _WanSelfAttnProcessor:
    """Shared frame: plain self-attention goes to `_attend`; anything else to diffusers' stock processor."""

    _attention_backend = None
    _parallel_config = None
    kind = ""

    def __init__(self):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        self.stock = WanAttnProcessor()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        if (encoder_hidden_states is not None or attention_mask is not None or self._parallel_config is not None
                or getattr(attn, "add_k_proj", None) is not None or rotary_emb is None):
            self.stock._attention_backend = self._attention_backend
            self.stock._parallel_config = self._parallel_config
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q = attn.norm_q(q).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(k).unflatten(2, (attn.heads, -1))
        v = v.unflatten(2, (attn.heads, -1))
        out = self._attend(q, k, v, rotary_emb, hidden_states.dtype).flatten(2, 3)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    def _attend(self, q, k, v, rotary_emb, dtype):  # pragma: no cover - abstract
        raise NotImplementedError


class FusedRopeWanAttnProcessor(_WanSelfAttnProcessor):
    """bf16 self-attention: compiled rotary, then diffusers' dispatcher with the model's backend."""

    kind = "fused_rope"

    def _attend(self, q, k, v, rotary_emb, dtype):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        q, k = _call_compiled(_rope_qk, q, k, *rotary_emb)
        out = dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend)
        return out.type_as(q)


class LowbitWanAttnProcessor(_WanSelfAttnProcessor):
    """Self-attention through the 8-bit kernel (int8 Q.K, fp8 P.V)."""

    kind = "8bit"

    def __init__(self, cfg: KernelConfig = DEFAULT_CONFIG):
        super().__init__()
        self.cfg = cfg

    def _attend(self, q, k, v, rotary_emb, dtype):
        ops = _call_compiled(_rope_quantize, q, k, v, *rotary_emb, self.cfg)
        return run_kernel(ops, dtype, self.cfg)


def install_wan_attention(model: torch.nn.Module, kind: str, device: torch.device | str | None = None,
                          cfg: KernelConfig = DEFAULT_CONFIG) -> int:
    """Give every block's self-attention our processor of `kind`; returns how many were swapped.

    Replaces a processor of ours already there (switching kinds). For "8bit" on a supported GPU
    the kernel is imported and registered here, not on the first forward, so torch.compile never
    traces that. The model's attention backend (set before) stays in force for the rest.
    """
    if kind not in PROCESSOR_KINDS:
        raise ValueError(f"processor kind must be one of {PROCESSOR_KINDS}, not {kind!r}")
    if kind == "8bit":
        from .lowbit_attention import _op, config_for, lowbit_supported

        if device is not None and lowbit_supported(device):
            cfg = config_for(device, cfg)
            _op()
    n = 0
    for block in getattr(model, "blocks", []):
        attn1 = getattr(block, "attn1", None)
        if attn1 is None or not hasattr(attn1, "set_processor"):
            continue
        old = attn1.processor
        if isinstance(old, _WanSelfAttnProcessor):
            old.stock._attention_backend, old.stock._parallel_config = old._attention_backend, old._parallel_config
            old = old.stock
        proc = LowbitWanAttnProcessor(cfg) if kind == "8bit" else FusedRopeWanAttnProcessor()
        proc.stock = old
        proc._attention_backend = getattr(old, "_attention_backend", None)
        proc._parallel_config = getattr(old, "_parallel_config", None)
        attn1.set_processor(proc)
        n += 1
    return n


def installed_kind(model: torch.nn.Module) -> str | None:
    """The kind of our processor on the model's self-attention, or None for diffusers' own."""
    for block in getattr(model, "blocks", []):
        proc = getattr(getattr(block, "attn1", None), "processor", None)
        if isinstance(proc, _WanSelfAttnProcessor):
            return proc.kind
    return None


def remove_wan_attention(model: torch.nn.Module) -> int:
    """Put the stock processor back on every self-attention that has one of ours; returns the count."""
    n = 0
    for block in getattr(model, "blocks", []):
        attn1 = getattr(block, "attn1", None)
        proc = getattr(attn1, "processor", None)
        if isinstance(proc, _WanSelfAttnProcessor):
            proc.stock._attention_backend = proc._attention_backend
            proc.stock._parallel_config = proc._parallel_config
            attn1.set_processor(proc.stock)
            n += 1
    return n

