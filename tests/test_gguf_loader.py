"""GGUF DiTs (city96 layout) load through diffusers' GGUF support, stay quantized, and match the float model."""
from __future__ import annotations

import pytest
import torch

from wanmeter.errors import WanMeterError
from wanmeter.loader import inspect_dit, load_dit
from wanmeter.loader.gguf_loader import LoadedGGUFDiT, gguf_file_type
from wanmeter.tiny import ensure_tiny_models
from wanmeter.tiny.dit import tiny_official_state_dict, tiny_reference_model
from wanmeter.tiny.gguf_dit import FILE_TYPES, gguf_fixture_name, write_gguf_dit

# relative L2 error of one forward vs the float32 model the file was quantized from
TOL = {"Q8_0": 0.02, "Q6_K": 0.05, "Q5_K_M": 0.09, "Q4_K_M": 0.18}


@pytest.fixture(scope="module")
def files():
    names = {ft: gguf_fixture_name("ti2v_5b", ft) for ft in FILE_TYPES}
    paths = ensure_tiny_models(names=list(names.values()) + [gguf_fixture_name("t2v_a14b", "Q4_K_M", "high")])
    out = {ft: paths[n] for ft, n in names.items()}
    out["t2v_high_Q4_K_M"] = paths[gguf_fixture_name("t2v_a14b", "Q4_K_M", "high")]
    return out


def _inputs(cin):
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, cin, 3, 8, 8, generator=g), timestep=torch.tensor([700.0]),
                encoder_hidden_states=torch.randn(1, 16, 64, generator=g), return_dict=False)


def _rel(model, ref, cin):
    with torch.no_grad():
        a = ref(**_inputs(cin))[0]
        b = model(**_inputs(cin))[0].float()
    return ((a - b).norm() / a.norm()).item()


def test_each_quant_type_loads_quantized_and_matches_float(files):
    ref = tiny_reference_model("ti2v_5b")
    bf16_bytes = sum(p.numel() * 2 for p in ref.parameters())
    errors = {}
    for ft in FILE_TYPES:
        info = inspect_dit(files[ft])
        assert info.layout == "gguf" and info.variant == "ti2v_5b"
        loaded = load_dit(files[ft], compute_dtype="fp32")
        assert isinstance(loaded, LoadedGGUFDiT) and loaded.file_type == ft == gguf_file_type(info.dtypes)
        m = loaded.model
        # every block linear stays GGUF blocks in memory (uint8), dequantized only inside forward
        from diffusers.quantizers.gguf.utils import GGUFLinear

        for blk in m.blocks:
            for lin in (blk.attn1.to_q, blk.attn1.to_v, blk.attn2.to_k, blk.ffn.net[0].proj, blk.ffn.net[2]):
                assert isinstance(lin, GGUFLinear) and lin.weight.dtype == torch.uint8
        held = sum(p.numel() * p.element_size() for p in m.parameters())
        assert loaded.quantized_bytes > 0.6 * info.weight_bytes     # the bulk of the file stays quantized
        assert held < 0.8 * bf16_bytes if ft != "Q8_0" else held < bf16_bytes
        # diffusers keeps these in fp32: they were dequantized (time embedder) or reshaped (orig_shape)
        assert m.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
        assert m.patch_embedding.weight.shape == ref.patch_embedding.weight.shape
        assert m.scale_shift_table.shape == ref.scale_shift_table.shape
        errors[ft] = _rel(m, ref, 48)
        assert errors[ft] < TOL[ft], (ft, errors[ft])
    # more bits, less error: a loader that dropped the quantization or mixed up tensors would not order like this
    assert errors["Q8_0"] < errors["Q6_K"] < errors["Q5_K_M"] < errors["Q4_K_M"]


def test_orig_shape_tensors_are_restored_exactly_enough(files):
    ref = tiny_reference_model("t2v_a14b", "high")
    loaded = load_dit(files["t2v_high_Q4_K_M"], compute_dtype="fp32")
    pe, want = loaded.model.patch_embedding.weight, ref.patch_embedding.weight
    assert pe.shape == want.shape == (256, 16, 1, 2, 2)
    assert ((pe - want).norm() / want.norm()).item() < 0.12    # Q4_K of the 5-D conv, reshaped back
    assert _rel(loaded.model, ref, 16) < TOL["Q4_K_M"]


def test_bf16_compute_and_blocks_placement(files):
    from wanmeter.runtime import Placement, RuntimeOptions

    loaded = load_dit(files["Q8_0"])                      # default: bf16 compute
    assert loaded.compute_dtype == torch.bfloat16
    p = Placement([loaded.model], RuntimeOptions(device="cpu", offload="blocks", blocks_to_stream=1))
    assert p.compute_dtype == torch.bfloat16
    m = p.activate(0)
    inp = _inputs(48)
    inp["hidden_states"] = inp["hidden_states"].bfloat16()
    inp["encoder_hidden_states"] = inp["encoder_hidden_states"].bfloat16()
    with torch.no_grad():
        out = m(**inp)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    with pytest.raises(WanMeterError, match="GGUF model computes in bfloat16"):
        Placement([loaded.model], RuntimeOptions(device="cpu", compute_dtype="fp16"))


def test_unsupported_quant_type_names_the_fix(tmp_path, monkeypatch):
    from wanmeter.loader import gguf_quantize

    monkeypatch.setitem(gguf_quantize.MIXES, "TQ1_0", ("TQ1_0", "TQ1_0"))
    bad = tmp_path / "wan_tq1.gguf"
    write_gguf_dit(bad, tiny_official_state_dict("ti2v_5b"), "TQ1_0")
    with pytest.raises(WanMeterError, match="Q4_K_M, Q5_K_M, Q6_K or Q8_0"):
        load_dit(bad)


def test_missing_tensor_is_reported(tmp_path):
    sd = tiny_official_state_dict("ti2v_5b")
    del sd["blocks.1.ffn.2.weight"]
    bad = tmp_path / "wan_missing.gguf"
    write_gguf_dit(bad, sd, "Q8_0")
    with pytest.raises(WanMeterError, match="missing.*download it again"):
        load_dit(bad)
