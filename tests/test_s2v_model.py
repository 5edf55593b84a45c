"""S2V transformer: key layout, strict loading (plain / fp8_scaled), forward parity with the official code."""
from __future__ import annotations


import pytest
from wm_testutil import s2v_support
import torch
from safetensors.torch import load_file, save_file

from wanmeter.errors import WanMeterError
from wanmeter.loader import dit_keys
from wanmeter.s2v.config import S2VConfig, official_inject_layers
from wanmeter.s2v.keys import map_keys, official_to_ours
from wanmeter.s2v.loader import build_empty_s2v, load_s2v
from wanmeter.tiny.s2v import ensure_tiny_s2v, tiny_s2v_state_dict


support = s2v_support


@pytest.fixture(scope="module")
def tiny():
    return ensure_tiny_s2v()


def test_full_size_model_matches_official_layout():
    """All 1260 official S2V-14B keys map onto our full-size model with identical shapes."""
    layout = dit_keys.official_layout("s2v_14b")
    assert len(layout) == 1260
    cfg = S2VConfig.from_shapes(layout)
    assert (cfg.dim, cfg.num_layers, cfg.audio_dim, cfg.num_audio_layers, cfg.num_audio_tokens) == (5120, 40, 1024, 25, 4)
    assert cfg.inject_layers == (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    params = {n: tuple(p.shape) for n, p in build_empty_s2v(cfg).named_parameters()}
    ours, unknown = map_keys(layout)
    assert not unknown
    assert set(ours) == set(params)
    assert all(params[n] == tuple(layout[o]) for n, o in ours.items())


def test_base_renames_agree_with_diffusers_converter():
    """Our explicit map equals diffusers' convert_wan_transformer_to_diffusers on the base keys."""
    base = [k for k in dit_keys.official_key_names("s2v_14b", 2)
            if not k.startswith(("audio_injector", "casual_audio_encoder", "cond_encoder", "frame_packer", "trainable"))]
    theirs = dit_keys.official_to_diffusers(base)  # {diffusers: official}
    assert {official_to_ours(o): o for o in base} == theirs


def test_inject_layers_follow_official_rule():
    assert official_inject_layers(2) == (0,)
    assert official_inject_layers(40) == (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    # the official substring match: blocks 1, 10, 11 and 12 all match id 1
    assert official_inject_layers(13, (1, 12)) == (1, 1, 1, 1, 12)


def test_tiny_loads_strictly_and_fp8_scaled_is_close(tiny):
    m = load_s2v(tiny["s2v"], weight_dtype="fp32").model
    m8 = load_s2v(tiny["s2v_fp8"], weight_dtype="fp32").model
    sd = tiny_s2v_state_dict()
    ours, _ = map_keys(sd)
    for n, p in m.named_parameters():
        assert torch.equal(p, sd[ours[n]]), n
    w, w8 = m.blocks[0].attn1.to_q.weight, m8.blocks[0].attn1.to_q.weight
    assert (w - w8).abs().max() < 0.08 * w.abs().max() and not torch.equal(w, w8)
    assert torch.equal(m.casual_audio_encoder.weights, m8.casual_audio_encoder.weights)


def test_fp8_storage_runs(tiny):
    ld = load_s2v(tiny["s2v"], weight_dtype="fp8_e4m3fn", compute_dtype="fp32")
    assert ld.model.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    x = _inputs(torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ld.model(x["lat"], x["t"], x["ctx"], x["ref"], x["mot"], x["audio"])
    assert torch.isfinite(out).all()


def test_missing_and_foreign_keys_are_refused(tiny, tmp_path):
    sd = load_file(str(tiny["s2v"]))
    bad = dict(sd)
    bad.pop("frame_packer.proj_2x.weight")
    save_file(bad, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WanMeterError, match="missing"):
        load_s2v(tmp_path / "missing.safetensors")
    extra = dict(sd)
    extra["audio_injector.injector_pre_norm_vec.0.weight"] = torch.ones(3)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(WanMeterError, match="unexpected"):
        load_s2v(tmp_path / "extra.safetensors")


def _inputs(g: torch.Generator, h: int = 8, w: int = 8, f: int = 20, text_len: int = 7):
    from wanmeter.tiny.s2v import tiny_s2v_config

    c = tiny_s2v_config()
    ctx = torch.zeros(1, 512, c.text_dim)
    ctx[:, :text_len] = torch.randn(1, text_len, c.text_dim, generator=g)
    return {
        "lat": torch.randn(1, 16, f, h, w, generator=g),
        "t": torch.tensor([937.0]),
        "ctx": ctx,
        "text_len": text_len,
        "ref": torch.randn(1, 16, 1, h, w, generator=g),
        "mot": torch.randn(1, 16, 19, h, w, generator=g),
        "pose": torch.randn(1, 16, f, h, w, generator=g),
        "audio": torch.randn(1, c.num_audio_layers, c.audio_dim, 4 * f, generator=g),
    }


@pytest.mark.parametrize("case", ["motion", "drop_motion", "pose", "wide"])
def test_forward_matches_official(wan22_ref, tiny, case):
    sup = support()
    mods = sup.official_modules(wan22_ref)
    ref_model = sup.official_tiny_model(mods, tiny_s2v_state_dict())
    ours = load_s2v(tiny["s2v"], weight_dtype="fp32").model
    hw = (16, 24) if case == "wide" else (8, 8)
    x = _inputs(torch.Generator().manual_seed(3), *hw)
    pose = x["pose"] if case == "pose" else torch.zeros_like(x["pose"])
    drop = case == "drop_motion"
    with torch.no_grad():
        want = ref_model([x["lat"][0]], t=x["t"], context=[x["ctx"][0, :x["text_len"]]], seq_len=None,
                         ref_latents=x["ref"], motion_latents=x["mot"], cond_states=pose, audio_input=x["audio"],
                         motion_frames=[73, 19], drop_motion_frames=drop)[0][None]
        got = ours(x["lat"], x["t"], x["ctx"], x["ref"], x["mot"], x["audio"],
                   cond_latents=x["pose"] if case == "pose" else None, drop_motion=drop)
    err = (got - want).abs().max().item()
    print(f"S2V forward parity [{case}]: max abs err {err:.2e} (output std {want.std():.3f})")
    assert want.std() > 0.1
    assert err < 1e-4 * max(1.0, want.abs().max().item())
