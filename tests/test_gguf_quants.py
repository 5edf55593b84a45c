"""Our K-quant encoders write exactly the bytes that gguf's own dequantizer (and diffusers' torch port) read."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from wanmeter.loader.gguf_quantize import BLOCK_BYTES, mixed_type, quantize

# relative RMS error bounds of round-to-nearest encoding of N(0, 0.02) weights (bits per weight 4.5/5.5/6.6/8.5)
BOUNDS = {"Q4_K": 0.10, "Q5_K": 0.05, "Q6_K": 0.025, "Q8_0": 0.008, "Q4_0": 0.11}


def _data(rows=48, cols=512, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    x[0, :256] += 0.05            # an asymmetric block (exercises the mins of Q4_K/Q5_K)
    x[1, 256:] = 0.0              # an all-zero block (scales of 0 must not produce NaN)
    return x


@pytest.mark.parametrize("qtype", list(BOUNDS))
def test_round_trip_through_gguf_dequantize(qtype):
    x = _data()
    q = quantize(x, qtype)
    assert q.dtype == np.uint8
    bs, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    assert q.shape == (48, 512 // bs * ts)
    if qtype in BLOCK_BYTES:
        assert ts == BLOCK_BYTES[qtype]
    y = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[qtype])
    assert y.shape == x.shape and np.isfinite(y).all()
    rel = np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean())
    assert rel < BOUNDS[qtype], rel
    assert np.all(y[1, 256:] == 0)
    # a wrong bit layout scrambles values: every block must be reproduced, not just the average
    per_row = np.sqrt(((y - x) ** 2).mean(axis=1) / np.maximum((x ** 2).mean(axis=1), 1e-12))
    assert per_row[2:].max() < 2 * BOUNDS[qtype]


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K", "Q8_0"])
def test_diffusers_torch_dequant_agrees_with_gguf(qtype):
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    q = quantize(_data(seed=1), qtype)
    qt = gguf.GGMLQuantizationType[qtype]
    ref = gguf.quants.dequantize(q, qt)
    ours = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(q), quant_type=qt)).float().numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=2e-3)   # diffusers computes in fp16


def test_k_quants_need_whole_blocks_and_mixes():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.zeros((2, 100), np.float32), "Q4_K")
    assert mixed_type("Q4_K_M", "blocks.3.ffn.2.weight") == "Q6_K"
    assert mixed_type("Q4_K_M", "blocks.3.ffn.0.weight") == "Q4_K"
    assert mixed_type("Q8_0", "blocks.3.ffn.2.weight") == "Q8_0"
