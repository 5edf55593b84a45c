"""wanmeter.accel on CPU: fp8 math (vs bf16 and vs torch's own _scaled_mm), the module swap,
the attention policy, step caching through diffusers' hooks, LoRA merging."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wanmeter.accel import (
    Fp8Linear,
    apply_fast_paths,
    best_attention_backend,
    compile_blocks,
    denoise_context,
    enable_step_cache,
    fp8_target_names,
    quantize_rows,
    quantize_weight,
    reset_step_cache,
    swap_fp8_linears,
)
from wanmeter.errors import WanMeterError
from wanmeter.tiny.dit import tiny_reference_model

fp8 = pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().flatten().double(), b.detach().flatten().double(), dim=0))


def _inputs(model, seed: int = 0, frames: int = 2, h: int = 8, w: int = 8):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    x = torch.randn(1, c.in_channels, frames, h, w, generator=g)
    ctx = torch.randn(1, 16, c.text_dim, generator=g)
    return x, ctx


def _fwd(model, x, ctx, t: float = 500.0):
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=ctx, return_dict=False)[0]


# ------------------------------------------------------------------ fp8

@fp8
def test_quantize_rows_and_weight_roundtrip():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 96, generator=g) * torch.logspace(-2, 2, 37)[:, None]
    xq, s = quantize_rows(x)
    assert xq.dtype == torch.float8_e4m3fn and s.shape == (37, 1) and s.dtype == torch.float32
    rec = xq.float() * s
    # e4m3 keeps 3 mantissa bits: per-element error <= 2^-4 relative, per row vs its amax
    rel = (rec - x).abs() / x.abs().amax(dim=1, keepdim=True)
    assert float(rel.max()) <= 2 ** -4 + 1e-6
    assert torch.allclose(rec.abs().amax(dim=1), x.abs().amax(dim=1), rtol=1e-6)
    w = torch.randn(48, 96, generator=g)
    wq, ws = quantize_weight(w)
    assert wq.shape == w.shape and ws.shape == (48,)
    assert float(((wq.float() * ws[:, None] - w).abs() / w.abs().amax(1, keepdim=True)).max()) <= 2 ** -4 + 1e-6


@fp8
def test_fp8_linear_emulated_close_to_bf16():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 192).to(torch.bfloat16)
    x = torch.randn(3, 50, 256, dtype=torch.bfloat16)
    ref = lin(x).float()
    m = Fp8Linear.from_linear(lin, emulate=True)
    y = m(x)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    assert _cos(y.float(), ref) > 0.999
    assert float((y.float() - ref).norm() / ref.norm()) < 0.05
    assert m.weight.dtype == torch.float8_e4m3fn and m.weight.element_size() == 1


@fp8
def test_fp8_linear_scaled_mm_matches_emulation():
    """torch's own rowwise _scaled_mm (CPU kernel here) implements the same math as our emulation."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 96).to(torch.bfloat16)
    x = torch.randn(40, 128, dtype=torch.bfloat16)
    emu = Fp8Linear.from_linear(lin, emulate=True)(x).float()
    real = Fp8Linear.from_linear(lin)
    real.use_fast_accum = False
    try:
        y = real(x).float()
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"this torch has no CPU _scaled_mm: {e}")
    assert float((y - emu).abs().max() / emu.abs().max()) < 1e-2
    real.bias_in_kernel = False
    assert float((real(x).float() - emu).abs().max() / emu.abs().max()) < 1e-2


@fp8
def test_fp8_swap_covers_block_linears_only():
    model = tiny_reference_model("t2v_a14b", "high").to(torch.bfloat16)
    x, ctx = _inputs(model)
    x, ctx = x.bfloat16(), ctx.bfloat16()
    ref = _fwd(model, x, ctx).float()
    names = swap_fp8_linears(model, emulate=True)
    per_block = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"}
    want = {f"blocks.{i}.{n}" for i in range(len(model.blocks)) for n in per_block}
    assert set(names) == want
    fp8_mods = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert fp8_mods == want
    # embeddings, time projection and the head stay ordinary bf16 Linears
    others = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert "proj_out" in others and any(n.startswith("condition_embedder.") for n in others)
    assert fp8_target_names(model) == []  # nothing left to convert
    y = _fwd(model, x, ctx).float()
    assert _cos(y, ref) > 0.995


@fp8
def test_fp8_refused_without_fp8_hardware():
    model = tiny_reference_model("t2v_a14b", "high").to(torch.bfloat16)
    with pytest.raises(WanMeterError, match="Ada|Hopper"):
        swap_fp8_linears(model)
    with pytest.raises(WanMeterError, match="Ada|Hopper"):
        apply_fast_paths(model, fp8_compute=True, compile=False, cache=None)


@fp8
def test_apply_fast_paths_all_on_cpu():
    model = tiny_reference_model("t2v_a14b", "high").to(torch.bfloat16)
    x, ctx = _inputs(model)
    x, ctx = x.bfloat16(), ctx.bfloat16()
    ref = _fwd(model, x, ctx).float()
    rep = apply_fast_paths(model, fp8_compute=True, compile=False, cache={"kind": "first_block", "threshold": 0.1},
                           emulate_fp8=True)
    assert rep["fp8_layers"] == 20 and rep["cache"] is not None
    with denoise_context(model, "cond", step_index=0):
        y = _fwd(model, x, ctx).float()
    assert _cos(y, ref) > 0.995
    compile_blocks(model, backend="eager")
    with denoise_context(model, "cond", step_index=1):
        _fwd(model, x, ctx)
    with pytest.raises(WanMeterError, match="already compiled"):
        apply_fast_paths(model, fp8_compute=True, compile=True, cache=None)


# ------------------------------------------------------------------ attention policy

@pytest.mark.parametrize("name,cap,kw,want", [
    ("NVIDIA H100 80GB HBM3", (9, 0), {}, "sdpa"),  # PyTorch's own SDPA picks cuDNN there
    ("NVIDIA H200", (9, 0), {}, "sdpa"),
    ("NVIDIA B200", (10, 0), {}, "sdpa"),
    ("NVIDIA H100 80GB HBM3", (9, 0), {"cudnn_available": False}, "sdpa_flash"),
    ("NVIDIA GeForce RTX 4090", (8, 9), {}, "sdpa_flash"),
    ("NVIDIA A100-SXM4-80GB", (8, 0), {}, "sdpa_flash"),
    ("NVIDIA GeForce RTX 4090", (8, 9), {"want_sage": True, "sage_installed": True}, "sage"),
    ("NVIDIA GeForce RTX 4090", (8, 9), {"want_sage": True, "sage_installed": False}, "sdpa_flash"),
    ("Tesla T4", (7, 5), {}, "sdpa"),
    ("cpu", None, {}, "sdpa"),
])
def test_best_attention_backend(name, cap, kw, want):
    got = best_attention_backend(name, cap, **kw)
    assert got == want
    from wanmeter.runtime.attention import ATTENTION_CHOICES

    assert got in ATTENTION_CHOICES


# ------------------------------------------------------------------ step cache

def _sample(model, steps: int, cfg: float, cache: dict | None):
    """A short flow-matching Euler loop with diffusers' scheduler, CFG, cache contexts."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(3)
    c = model.config
    lat = torch.randn(1, c.in_channels, 2, 8, 8, generator=g)
    pos = torch.randn(1, 16, c.text_dim, generator=g)
    neg = torch.randn(1, 16, c.text_dim, generator=g) * 0.1
    if cache:
        enable_step_cache(model, **cache)
        reset_step_cache(model)
    calls = {"n": 0}
    h = model.blocks[-1].attn1.to_q.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        with torch.no_grad():
            for i, t in enumerate(sched.timesteps):
                with denoise_context(model, "cond", step_index=i):
                    p = model(hidden_states=lat, timestep=t[None], encoder_hidden_states=pos, return_dict=False)[0]
                with denoise_context(model, "uncond", step_index=i):
                    u = model(hidden_states=lat, timestep=t[None], encoder_hidden_states=neg, return_dict=False)[0]
                lat = sched.step(u + cfg * (p - u), t, lat, return_dict=False)[0]
    finally:
        h.remove()
    return lat, calls["n"]


@pytest.mark.parametrize("cache", [
    {"kind": "first_block", "threshold": 0.3},
    {"kind": "taylorseer", "threshold": 3},
])
def test_step_cache_skips_forwards_and_stays_close(cache):
    model = tiny_reference_model("t2v_a14b", "low")
    steps = 12
    ref, n_ref = _sample(model, steps, 4.0, None)
    assert n_ref == 2 * steps
    out, n = _sample(model, steps, 4.0, cache)
    assert n < n_ref, f"{cache['kind']} computed the last block's attention {n} times (no cache: {n_ref})"
    assert _cos(out, ref) > 0.98
    assert float((out - ref).norm() / ref.norm()) < 0.2


def test_step_cache_bad_settings():
    model = tiny_reference_model("t2v_a14b", "low")
    with pytest.raises(WanMeterError, match="first_block"):
        enable_step_cache(model, "teacache")
    with pytest.raises(WanMeterError, match="0.05"):
        enable_step_cache(model, "first_block", 2.0)
    with pytest.raises(WanMeterError, match="mag_ratios"):
        enable_step_cache(model, "mag", 0.06)
    enable_step_cache(model, "none")
    assert not model.is_cache_enabled
