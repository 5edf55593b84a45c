"""The FLOP model equals torch's FlopCounterMode on diffusers' WanTransformer3DModel, and the
parameter counts equal diffusers' (the estimator itself never imports torch)."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from wanmeter.estimator.flops import DiTShape, block_params, dit_params, forward_flops, video_tokens
from wanmeter.estimator.workload import Workload
from wanmeter.variants import variant

CASES = [  # dim, ffn, layers, in, out, text tokens, latent F, H, W, per-token timestep, batch
    (256, 512, 2, 16, 16, 16, 3, 8, 8, False, 1),
    (256, 384, 1, 48, 48, 7, 2, 4, 6, True, 2),
    (384, 512, 2, 36, 16, 9, 5, 4, 4, False, 2),
    (128, 256, 1, 16, 16, 33, 1, 10, 2, False, 1),
]


def _model(d, f, layers, ic, oc):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=d // 128, attention_head_dim=128,
                                 in_channels=ic, out_channels=oc, text_dim=64, freq_dim=256, ffn_dim=f,
                                 num_layers=layers, rope_max_seq_len=1024).eval()


@pytest.mark.parametrize("case", CASES)
def test_forward_flops_equal_flop_counter(case):
    d, f, layers, ic, oc, t, lf, h, w, ptt, b = case
    m = _model(d, f, layers, ic, oc)
    n = lf * (h // 2) * (w // 2)
    x = torch.randn(b, ic, lf, h, w)
    ctx = torch.randn(b, t, 64)
    ts = torch.full((b, n), 500.0) if ptt else torch.full((b,), 500.0)
    # The math SDPA backend decomposes into bmm, which FlopCounterMode counts on CPU.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m(x, ts, ctx)
    ours = forward_flops(DiTShape(d, f, layers, ic, oc, text_dim=64), n, batch=b, text_tokens=t, per_token_timestep=ptt)
    assert fc.get_total_flops() == ours.total
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    assert counts["aten.bmm"] == ours.attention


def test_attention_flops_match_fused_kernel_formula():
    """Fused SDPA kernels (flash/cuDNN) are counted by sdpa_flop_count: same number as ours."""
    shape = DiTShape(5120, 13824, 1, 16, 16)
    n, t = 75600, 512
    q = (1, 40, n, 128)
    self_attn = sdpa_flop_count(q, q, q)
    cross = sdpa_flop_count(q, (1, 40, t, 128), (1, 40, t, 128))
    assert forward_flops(shape, n).attention == self_attn + cross


@pytest.mark.parametrize("name", ["t2v_a14b", "i2v_a14b", "ti2v_5b"])
def test_param_counts_equal_diffusers(name):
    from diffusers import WanTransformer3DModel

    v = variant(name)
    with torch.device("meta"):
        m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=v["num_heads"], attention_head_dim=128,
                                  in_channels=v["in_channels"], out_channels=v["out_channels"], text_dim=4096,
                                  freq_dim=256, ffn_dim=v["ffn_dim"], num_layers=v["num_layers"],
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads")
    shape = DiTShape.of_variant(name)
    assert dit_params(shape) == sum(p.numel() for p in m.parameters())
    assert block_params(shape) == sum(p.numel() for p in m.blocks[0].parameters())


def test_reference_token_counts_and_flops():
    """Numbers quoted in wan22.md / performance.md."""
    assert video_tokens("t2v_a14b", 1280, 720, 81) == 75600
    assert video_tokens("t2v_a14b", 832, 480, 81) == 32760
    assert video_tokens("ti2v_5b", 1280, 704, 121) == 27280
    f = forward_flops(DiTShape.of_variant("t2v_a14b"), 75600)
    assert f.total == pytest.approx(6.52e15, rel=0.005)
    assert f.attention / f.total == pytest.approx(0.72, abs=0.01)
    assert forward_flops(DiTShape.of_variant("t2v_a14b"), 32760).total == pytest.approx(1.68e15, rel=0.005)


def test_expert_step_split_matches_reference():
    assert Workload(variant="t2v_a14b", steps=40).expert_steps() == (26, 14)
    assert Workload(variant="i2v_a14b", steps=40).expert_steps() == (15, 25)
    assert Workload(variant="ti2v_5b").expert_steps() == (50,)
