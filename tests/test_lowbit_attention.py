"""The 8-bit attention path (wanmeter.accel.lowbit_attention / wan_attention) on CPU.

The Triton kernel itself needs a CUDA GPU; here its arithmetic is checked through the PyTorch
reference that shares its quantizer, against PyTorch's SDPA, and the diffusers processor that
calls it is checked inside a tiny Wan model against diffusers' stock processor. The last test
runs the kernel against the reference where a GPU with Triton is present (the device machine).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wanmeter.accel import lowbit_attention as lb
from wanmeter.accel import wan_attention as wa
from wanmeter.tiny.dit import tiny_reference_model

pytestmark = pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _qkv(s: int = 700, h: int = 3, d: int = 64, seed: int = 0, k_offset: float = 0.5, sharp: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    q = sharp * torch.randn(1, s, h, d, generator=g)
    k = torch.randn(1, s, h, d, generator=g) + k_offset * torch.randn(1, 1, h, d, generator=g)
    v = torch.randn(1, s, h, d, generator=g)
    return q, k, v


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def test_quantizer_layout_padding_and_scales():
    cfg = lb.KernelConfig(block_m=64, block_n=32)
    q, k, v = _qkv(s=100)  # not a multiple of either tile
    ops = lb.quantize_qkv(q, k, v, cfg)
    assert ops["q8"].shape == (1, 128, 3, 64) and ops["q8"].dtype == torch.int8
    assert ops["k8"].shape == (1, 128, 3, 64)
    assert ops["vt8"].shape == (1, 3, 64, 128) and ops["vt8"].dtype == torch.float8_e4m3fn
    assert ops["vt8"].stride()[-1] == 1, "V must be stored tokens-contiguous for the fp8 P.V operand"
    assert ops["q_scale"].shape == (1, 2, 3) and ops["k_scale"].shape == (1, 4, 3)
    assert ops["s_q"] == 100 and ops["s_kv"] == 100
    # padded rows are zero, real rows reconstruct within half an int8 step of their tile's scale
    assert not ops["q8"][:, 100:].any() and not ops["k8"][:, 100:].any() and not ops["vt8"][..., 100:].float().any()
    want = q * (1 / math.sqrt(64) * lb.LOG2E)
    rec = (ops["q8"].float().view(1, 2, 64, 3, 64) * ops["q_scale"][:, :, None, :, None]).reshape(1, 128, 3, 64)[:, :100]
    step = ops["q_scale"].amax()
    assert float((rec - want).abs().max()) <= 0.5 * float(step) + 1e-6
    # K is smoothed: the tile-wise reconstruction has (almost) zero mean over tokens
    krec = (ops["k8"].float().view(1, 4, 32, 3, 64) * ops["k_scale"][:, :, None, :, None]).reshape(1, 128, 3, 64)[:, :100]
    assert float(krec.mean(dim=1).abs().max()) < 0.05
    # V: per head and channel, fp8 keeps 3 mantissa bits
    vrec = ops["vt8"].float()[..., :100].permute(0, 3, 1, 2) * ops["v_scale"][:, None]
    assert float(((vrec - v).abs() / v.abs().amax(dim=1, keepdim=True)).max()) <= 2 ** -4 + 1e-6


@pytest.mark.parametrize("qk", ["int8", "fp8"])
def test_reference_matches_sdpa(qk):
    q, k, v = _qkv(s=900, sharp=2.0)
    ref = _sdpa(q, k, v)
    out = lb.lowbit_attention_reference(q, k, v, lb.KernelConfig(qk=qk, block_m=64, block_n=64))
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert _cos(out, ref) > (0.999 if qk == "int8" else 0.995)  # fp8 Q.K keeps 3 mantissa bits


def test_k_smoothing_removes_a_shared_key_offset():
    """Adding the same vector to every key changes no softmax row; the smoothed quantizer must not
    lose precision to it (without smoothing a +20 offset would dominate each K tile's scale)."""
    q, k, v = _qkv(s=512, k_offset=0.0)
    cfg = lb.KernelConfig(block_m=64, block_n=64)
    base = lb.lowbit_attention_reference(q, k, v, cfg)
    shifted = lb.lowbit_attention_reference(q, k + 20.0 * torch.randn(1, 1, 3, 64), v, cfg)
    assert _cos(shifted, base) > 0.99999
    assert _cos(shifted, _sdpa(q, k, v)) > 0.999


def test_cross_lengths_and_scale_argument():
    q, _, _ = _qkv(s=130, seed=1)
    _, k, v = _qkv(s=77, seed=2)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=0.2)
    out = lb.lowbit_attention_reference(q, k, v, lb.KernelConfig(block_m=64, block_n=32), scale=0.2)
    assert out.shape == q.shape and _cos(out, ref.transpose(1, 2)) > 0.999


def test_kernel_config_validation_and_cpu_refusal():
    with pytest.raises(ValueError, match="qk"):
        lb.KernelConfig(qk="int4")
    with pytest.raises(ValueError, match="pv_acc"):
        lb.KernelConfig(pv_acc="tensor")
    assert not lb.lowbit_supported("cpu")
    q, k, v = _qkv(s=64)
    with pytest.raises(RuntimeError, match="CUDA GPU of sm89"):
        lb.lowbit_attention(q, k, v)


def test_rotate_is_a_complex_rotation_of_channel_pairs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 5, 2, 8, generator=g)
    theta = torch.rand(1, 5, 1, 4, generator=g) * 6.0
    cos = torch.cos(theta).repeat_interleave(2, dim=-1)
    sin = torch.sin(theta).repeat_interleave(2, dim=-1)
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.exp(1j * theta)
    want = torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    assert torch.allclose(wa._rotate(x, cos, sin), want, atol=1e-6)


def _fwd(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    x = torch.randn(1, c.in_channels, 3, 8, 12, generator=g)
    ctx = torch.randn(1, 16, c.text_dim, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=ctx, return_dict=False)[0]


def test_processor_in_a_wan_model_matches_the_stock_processor(monkeypatch):
    """The processor (projections, RMS norm, rotary, output projection) around the kernel's math
    gives the stock diffusers output; cross-attention keeps the stock processor; removal restores it."""
    calls = []

    def fake_kernel(ops, out_dtype, cfg=lb.DEFAULT_CONFIG):
        calls.append(ops["s_q"])
        return lb.reference_from_operands(ops, out_dtype, cfg)

    monkeypatch.setattr(wa, "run_kernel", fake_kernel)
    monkeypatch.setattr(wa, "_call_compiled", lambda fn, *a: fn(*a))  # no torch.compile on CPU tests
    model = tiny_reference_model("t2v_a14b", "high")
    # sharper attention than the tiny fixture's 0.02-scale weights give, so the check has teeth
    with torch.no_grad():
        for b in model.blocks:
            b.attn1.to_q.weight.mul_(8.0)
            b.attn1.to_k.weight.mul_(8.0)
    stock = _fwd(model)
    n = wa.install_wan_attention(model, "8bit", cfg=lb.KernelConfig(block_m=64, block_n=64))
    assert n == len(model.blocks)
    assert all(isinstance(b.attn1.processor, wa.LowbitWanAttnProcessor) for b in model.blocks)
    assert not any(isinstance(b.attn2.processor, wa.LowbitWanAttnProcessor) for b in model.blocks)
    ours = _fwd(model)
    assert len(calls) == len(model.blocks) and calls[0] == 3 * 4 * 6  # self-attention only, all tokens
    assert _cos(ours, stock) > 0.999
    assert not torch.equal(ours, stock), "the 8-bit path must actually have run"
    assert wa.remove_wan_attention(model) == n
    assert torch.equal(_fwd(model), stock)


def test_processor_hands_context_parallel_to_the_stock_processor(monkeypatch):
    """Under context parallelism (Ulysses) the stock processor, which knows the all-to-all, must run."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    monkeypatch.setattr(wa, "run_kernel", lambda *a, **k: pytest.fail("the kernel must not run"))
    model = tiny_reference_model("ti2v_5b")
    stock = _fwd(model)
    wa.install_wan_attention(model, "8bit")
    seen = []

    class Spy:
        def __init__(self):
            self.real = WanAttnProcessor()

        def __call__(self, attn, hs, enc=None, mask=None, rope=None):
            seen.append(self._parallel_config)
            return self.real(attn, hs, enc, mask, rope)  # the real one, without the sentinel config

    sentinel = object()
    for b in model.blocks:
        b.attn1.processor._parallel_config = sentinel
        b.attn1.processor.stock = Spy()
    out = _fwd(model)
    assert len(seen) == len(model.blocks) and all(c is sentinel for c in seen)
    assert torch.equal(out, stock)


def test_fused_rope_processor_matches_stock_and_kinds_switch(monkeypatch):
    """The bf16 processor computes what diffusers' stock processor computes (fp32 model: to rounding);
    installing another kind replaces ours; apply_attention on CPU leaves diffusers' own processors."""
    from wanmeter.runtime.attention import apply_attention

    monkeypatch.setattr(wa, "_call_compiled", lambda fn, *a: fn(*a))  # the compiled version is the GPU's business
    model = tiny_reference_model("t2v_a14b", "low")
    stock = _fwd(model)
    assert wa.install_wan_attention(model, "fused_rope") == len(model.blocks)
    assert wa.installed_kind(model) == "fused_rope"
    torch.testing.assert_close(_fwd(model), stock, rtol=1e-5, atol=1e-5)
    wa.install_wan_attention(model, "8bit")  # switch kinds: the stock processor is kept underneath
    assert wa.installed_kind(model) == "8bit"
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    assert all(type(b.attn1.processor.stock) is WanAttnProcessor for b in model.blocks)
    apply_attention(model, "auto", torch.device("cpu"))
    assert wa.installed_kind(model) is None
    assert torch.equal(_fwd(model), stock)
    with pytest.raises(ValueError, match="kind"):
        wa.install_wan_attention(model, "4bit")


@pytest.mark.skipif(not (torch.cuda.is_available() and lb.lowbit_supported("cuda")), reason="needs a CUDA sm89+ GPU with Triton")
@pytest.mark.parametrize("qk", ["int8", "fp8"])
def test_kernel_matches_reference_on_gpu(qk):
    q, k, v = (t.cuda().to(torch.bfloat16) for t in _qkv(s=1000, h=4, d=128, sharp=2.0))
    cfg = lb.KernelConfig(qk=qk)
    ops = lb.quantize_qkv(q, k, v, cfg)
    out = lb.run_kernel(ops, torch.bfloat16, cfg)
    ref = lb.reference_from_operands(ops, torch.float32, cfg)
    # the kernel rounds P to fp8 relative to its running max, the reference relative to the row max
    assert _cos(out.float(), ref) > 0.999
    assert _cos(out.float(), _sdpa(q.float(), k.float(), v.float())) > (0.998 if qk == "int8" else 0.995)


def test_call_compiled_falls_back_to_eager_once_when_the_compiler_fails(monkeypatch, caplog):
    """Where torch.compile cannot build (no working Triton), the processors still run, eagerly."""
    calls = []

    def broken_compile(fn, **kw):
        def run(*a):
            calls.append("compiled")
            raise RuntimeError("no triton here")
        return run

    def f(x, y):
        return x + y

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(wa, "_COMPILED", {})
    assert wa._call_compiled(f, 1, 2) == 3
    assert wa._call_compiled(f, 2, 2) == 4
    assert calls == ["compiled"], "after one failure the eager function is used without retrying"
    assert "using eager ops" in caplog.text
