"""DiT inspection and loading against diffusers (and the official code when WANMETER_WAN22_REF is set)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wanmeter.errors import WanMeterError
from wanmeter.loader import check_expert_pair, inspect_dit, load_dit, load_expert_pair
from wanmeter.loader.dit_keys import official_layout, official_to_diffusers
from wanmeter.tiny import ensure_tiny_models
from wanmeter.tiny.dit import fixture_name, tiny_dit_config, tiny_official_state_dict, tiny_reference_model
from wanmeter.tiny.fake_headers import write_fake_release, write_header_only

ROOT = Path(__file__).resolve().parents[1]
DIT_FIXTURES = [("t2v_a14b", "high"), ("t2v_a14b", "low"), ("i2v_a14b", "high"), ("i2v_a14b", "low"), ("ti2v_5b", None)]


@pytest.fixture(scope="module")
def tiny():
    names = [fixture_name(v, e, s) for v, e in DIT_FIXTURES for s in (False, True)]
    return ensure_tiny_models(names=names)


def _inputs(variant: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cin = tiny_dit_config(variant)["in_channels"]
    x = torch.randn(1, cin, 3, 4, 6, generator=g)
    ctx = torch.randn(1, 7, 64, generator=g)
    t = torch.tensor([700.0])
    return x, t, ctx


def _forward(model, variant, seed=0, dtype=torch.float32):
    x, t, ctx = _inputs(variant, seed)
    with torch.no_grad():
        return model(hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=ctx.to(dtype), return_dict=False)[0].float()


# --- (a) + (c): tiny files load strictly and reproduce the model they were written from -------

@pytest.mark.parametrize("variant,expert", DIT_FIXTURES)
def test_tiny_file_loads_and_matches_reference_exactly(tiny, variant, expert):
    loaded = load_dit(tiny[fixture_name(variant, expert)], weight_dtype="fp32")
    assert loaded.info.variant == variant and loaded.info.tiny and loaded.info.expert_hint == expert
    assert loaded.weight_dtype == loaded.compute_dtype == torch.float32
    ref = tiny_reference_model(variant, expert)
    assert torch.equal(_forward(loaded.model, variant), _forward(ref, variant))


@pytest.mark.parametrize("variant,expert", [("t2v_a14b", "low"), ("i2v_a14b", "high"), ("ti2v_5b", None)])
def test_fp8_scaled_dequantizes_within_fp8_tolerance(tiny, variant, expert):
    loaded = load_dit(tiny[fixture_name(variant, expert, True)], weight_dtype="fp32")
    info = loaded.info
    assert info.scaled_fp8 and info.dtype == "F8_E4M3" and info.variant == variant
    ref = dict(tiny_reference_model(variant, expert).named_parameters())
    for name, p in loaded.model.named_parameters():
        r = ref[name].detach()
        if p.ndim == 2 and name.startswith("blocks."):
            # e4m3: 3 mantissa bits -> relative error <= 2^-4, plus the subnormal step of the scale
            step = r.abs().max() / 448 * 2 ** -9
            assert ((p - r).abs() <= r.abs() * 2 ** -4 + step).all(), name
            assert not torch.equal(p, r)
        else:
            assert torch.equal(p, r), name  # not quantized: bit-exact
    out, want = _forward(loaded.model, variant), _forward(tiny_reference_model(variant, expert), variant)
    assert torch.allclose(out, want, atol=0.05 * want.abs().max())


def test_fp8_storage_matches_diffusers_layerwise_casting(tiny, tmp_path):
    """Our fp8-storage model has the same per-parameter dtypes as diffusers' own
    from_pretrained(torch_dtype=bf16) + enable_layerwise_casting, and the same output."""
    ref = tiny_reference_model("t2v_a14b", "high")
    ref.save_pretrained(tmp_path / "d")
    from diffusers import WanTransformer3DModel

    want = WanTransformer3DModel.from_pretrained(tmp_path / "d", torch_dtype=torch.bfloat16)
    ours_bf16 = load_dit(tiny["dit_t2v_high"], weight_dtype="bf16").model
    assert {n: p.dtype for n, p in ours_bf16.named_parameters()} == {n: p.dtype for n, p in want.named_parameters()}
    want.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    loaded = load_dit(tiny["dit_t2v_high"], weight_dtype="fp8_e4m3fn")
    assert loaded.compute_dtype == torch.bfloat16
    dt = {n: p.dtype for n, p in loaded.model.named_parameters()}
    assert dt == {n: p.dtype for n, p in want.named_parameters()}
    assert Counter(dt.values())[torch.float8_e4m3fn] > 0
    for n, p in loaded.model.named_parameters():
        assert torch.equal(p, dict(want.named_parameters())[n]), n
    x, t, ctx = _inputs("t2v_a14b")
    with torch.no_grad():
        a = loaded.model(hidden_states=x.bfloat16(), timestep=t, encoder_hidden_states=ctx.bfloat16(), return_dict=False)[0]
        b = want(hidden_states=x.bfloat16(), timestep=t, encoder_hidden_states=ctx.bfloat16(), return_dict=False)[0]
    assert torch.equal(a, b)


def test_fp8_e5m2_and_fp16_options(tiny):
    m = load_dit(tiny["dit_ti2v_fp8_scaled"], weight_dtype="fp8_e5m2", compute_dtype="fp16")
    assert m.weight_dtype == torch.float8_e5m2 and m.compute_dtype == torch.float16
    assert torch.float8_e5m2 in {p.dtype for p in m.model.parameters()}
    out = _forward(m.model, "ti2v_5b", dtype=torch.float16)
    assert torch.isfinite(out).all() and out.abs().max() > 0
    with pytest.raises(WanMeterError, match="Use one of"):
        load_dit(tiny["dit_ti2v"], weight_dtype="int4")
    with pytest.raises(WanMeterError, match="bf16 or fp16"):
        load_dit(tiny["dit_ti2v"], weight_dtype="bf16", compute_dtype="fp8_e4m3fn")


# --- (b): config from shapes, on the real layouts (header-only files: no data) -----------------

@pytest.mark.parametrize("variant", ["t2v_a14b", "i2v_a14b", "ti2v_5b", "s2v_14b"])
def test_real_size_config_from_shapes(tmp_path, variant):
    from wanmeter.variants import variant as facts

    f = facts(variant)
    path = write_fake_release(variant, tmp_path / "m.safetensors", fp8_scaled=(variant == "t2v_a14b"),
                              prefix="model.diffusion_model." if variant == "i2v_a14b" else "")
    info = inspect_dit(path)
    assert info.variant == variant and not info.tiny
    cfg = info.config
    assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["ffn_dim"], cfg["num_layers"]) == (
        f["num_heads"], 128, f["ffn_dim"], f["num_layers"])
    assert (cfg["in_channels"], cfg["out_channels"], cfg["text_dim"], cfg["freq_dim"]) == (f["in_channels"], f["out_channels"], 4096, 256)
    assert cfg["cross_attn_norm"] is True and cfg["qk_norm"] == "rms_norm_across_heads"
    assert info.file_bytes == path.stat().st_size
    if variant == "s2v_14b":
        return
    # the config builds a diffusers model whose parameters are exactly the converted official ones
    from wanmeter.loader import build_empty_transformer

    model = build_empty_transformer(cfg)
    conv = official_to_diffusers(official_layout(variant))
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == {d: official_layout(variant)[o] for d, o in conv.items()}
    assert info.param_count == sum(p.numel() for p in model.parameters())
    if variant == "t2v_a14b":
        assert info.scaled_fp8 and info.dtype == "F8_E4M3"
        assert 13.5e9 < info.file_bytes < 15.5e9   # ComfyUI's fp8_scaled expert: ~14.3 GB
    if variant == "i2v_a14b":
        assert info.key_prefix == "model.diffusion_model." and info.dtype == "BF16"


# --- (d): bad input gets a WanMeterError that names the fix --------------------------------------

def _sd_file(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    return path


def test_truncated_file(tiny, tmp_path):
    data = tiny["dit_t2v_high"].read_bytes()
    p = tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WanMeterError, match="truncated.*Download it again"):
        inspect_dit(p)


def test_non_safetensors_bytes(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 200)  # a zip/pickle checkpoint renamed
    with pytest.raises(WanMeterError, match="not a valid safetensors"):
        inspect_dit(p)
    p2 = tmp_path / "model.ckpt"
    p2.write_bytes(b"\x80\x02" + b"\x00" * 100)
    with pytest.raises(WanMeterError, match="pickle.*safetensors"):
        inspect_dit(p2)


def test_sdxl_keys(tmp_path):
    p = _sd_file(tmp_path / "sdxl.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": (1, 4),
        "first_stage_model.decoder.conv_in.weight": (4, 4, 3, 3)})
    with pytest.raises(WanMeterError, match="SDXL.*wan2.2_t2v_high_noise_14B"):
        inspect_dit(p)


def test_flux_keys(tmp_path):
    p = _sd_file(tmp_path / "flux1-dev.safetensors", {
        "double_blocks.0.img_attn.qkv.weight": (6, 2), "single_blocks.0.linear1.weight": (4, 2), "img_in.weight": (2, 4)})
    with pytest.raises(WanMeterError, match="Flux.*Wan2.2 diffusion model"):
        inspect_dit(p)


def test_wan21_clip_i2v(tmp_path):
    sd = tiny_official_state_dict("i2v_a14b", "high")
    sd = {k: v for k, v in sd.items()}
    sd["img_emb.proj.0.weight"] = torch.zeros(1280)
    sd["blocks.0.cross_attn.k_img.weight"] = torch.zeros(256, 256)
    p = tmp_path / "wan2.1_i2v_720p_14B_fp16.safetensors"
    save_file(sd, str(p))
    with pytest.raises(WanMeterError, match="Wan2.1 I2V.*CLIP.*wan2.2_i2v_high_noise_14B"):
        inspect_dit(p)


def test_wan21_1_3b_dims(tmp_path):
    layout = {k: ("BF16", tuple({5120: 1536, 13824: 8960, 30720: 9216}.get(s, s) for s in shape))
              for k, shape in official_layout("t2v_a14b").items() if not (k.startswith("blocks.") and int(k.split(".")[1]) >= 30)}
    p = write_header_only(tmp_path / "wan2.1_t2v_1.3B_fp16.safetensors", layout)
    with pytest.raises(WanMeterError, match="Wan2.1 1.3B.*wan2.2_ti2v_5B"):
        inspect_dit(p)


def test_wrong_real_dims(tmp_path):
    layout = {k: ("BF16", shape) for k, shape in official_layout("t2v_a14b").items()
              if not (k.startswith("blocks.") and int(k.split(".")[1]) >= 20)}
    p = write_header_only(tmp_path / "pruned.safetensors", layout)
    with pytest.raises(WanMeterError, match="num_layers.*official Wan2.2 T2V-A14B"):
        inspect_dit(p)


def test_vae_and_text_encoder_files(tmp_path):
    vae = _sd_file(tmp_path / "wan_2.1_vae.safetensors", {
        "encoder.conv1.weight": (96, 3, 3, 3, 3), "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1)})
    with pytest.raises(WanMeterError, match="VAE.*load_vae"):
        inspect_dit(vae)
    te = _sd_file(tmp_path / "umt5_xxl_fp16.safetensors", {
        "encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8), "shared.weight": (10, 8), "spiece_model": (16,)})
    with pytest.raises(WanMeterError, match="text encoder loader"):
        inspect_dit(te)
    lora = _sd_file(tmp_path / "lora.safetensors", {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": (4, 8)})
    with pytest.raises(WanMeterError, match="LoRA"):
        load_dit(lora)


def test_gguf_is_inspected_and_loads(tmp_path):
    paths = ensure_tiny_models(names=["dit_t2v_high_q8_0", "dit_ti2v_q4_0"])
    for name, variant, qtype in (("dit_t2v_high_q8_0", "t2v_a14b", "Q8_0"), ("dit_ti2v_q4_0", "ti2v_5b", "Q4_0")):
        info = inspect_dit(paths[name])
        assert (info.variant, info.layout, info.dtype) == (variant, "gguf", qtype)
        assert info.config == tiny_dit_config(variant)
        assert info.tensors["patch_embedding.weight"].shape == (256, tiny_dit_config(variant)["in_channels"], 1, 2, 2)
        assert info.param_count == sum(p.numel() for p in tiny_reference_model(variant, None if variant == "ti2v_5b" else "high").parameters())
    loaded = load_dit(paths["dit_t2v_high_q8_0"])  # GGUF loading: tests/test_gguf_loader.py
    assert loaded.model.blocks[0].attn1.to_q.weight.dtype == torch.uint8
    bad = tmp_path / "wan2.2_t2v_high_noise_14B_Q4_K_M.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(WanMeterError, match="not a readable GGUF file.*download it again"):
        inspect_dit(bad)
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(paths["dit_ti2v_q4_0"].read_bytes())
    assert inspect_dit(renamed).layout == "gguf"


def test_missing_and_unexpected_tensors(tmp_path):
    sd = tiny_official_state_dict("t2v_a14b", "high")
    sd.pop("blocks.1.ffn.2.bias")
    save_file(sd, str(tmp_path / "a.safetensors"))
    with pytest.raises(WanMeterError, match=r"1 missing \(e.g. blocks.1.ffn.net.2.bias\).*download"):
        load_dit(tmp_path / "a.safetensors")
    sd = tiny_official_state_dict("t2v_a14b", "high")
    sd["blocks.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "b.safetensors"))
    with pytest.raises(WanMeterError, match=r"unexpected \(e.g. blocks.0.self_attn.extra.weight\)"):
        load_dit(tmp_path / "b.safetensors")


def test_s2v_is_sent_to_the_s2v_loader(tmp_path):
    p = write_fake_release("s2v_14b", tmp_path / "wan2.2_s2v_14B_bf16.safetensors")
    with pytest.raises(WanMeterError, match="S2V loader"):
        load_dit(p)


def test_expert_pair_checks(tiny, tmp_path):
    with pytest.raises(WanMeterError, match="do not match.*same release"):
        check_expert_pair(inspect_dit(tiny["dit_t2v_high"]), inspect_dit(tiny["dit_i2v_low"]))
    with pytest.raises(WanMeterError, match="single expert"):
        check_expert_pair(inspect_dit(tiny["dit_ti2v"]), inspect_dit(tiny["dit_ti2v_fp8_scaled"]))
    with pytest.warns(UserWarning, match="swapped"):
        check_expert_pair(inspect_dit(tiny["dit_t2v_low"]), inspect_dit(tiny["dit_t2v_high"]))


# --- (e): official and diffusers folder layouts -------------------------------------------------

def _official_folder(dest: Path, variant: str, expert: str | None) -> Path:
    """An official-release-like folder: config.json + 2 shards + index, official keys."""
    dest.mkdir(parents=True)
    sd = tiny_official_state_dict(variant, expert)
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(dest / name))
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (dest / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    c = tiny_dit_config(variant)
    (dest / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": variant[:3], "dim": 256, "ffn_dim": c["ffn_dim"],
        "in_dim": c["in_channels"], "out_dim": c["out_channels"], "num_layers": c["num_layers"], "num_heads": 2}))
    return dest


def test_official_folder_layout(tmp_path):
    top = tmp_path / "Wan2.2-T2V-A14B"
    _official_folder(top / "high_noise_model", "t2v_a14b", "high")
    _official_folder(top / "low_noise_model", "t2v_a14b", "low")
    info = inspect_dit(top / "high_noise_model")
    assert info.layout == "official_folder" and info.variant == "t2v_a14b" and len(info.files) == 2
    with pytest.raises(WanMeterError, match="two experts.*load_expert_pair"):
        inspect_dit(top)
    hi, lo = load_expert_pair(top, weight_dtype="fp32")
    assert torch.equal(_forward(hi.model, "t2v_a14b"), _forward(tiny_reference_model("t2v_a14b", "high"), "t2v_a14b"))
    assert torch.equal(_forward(lo.model, "t2v_a14b"), _forward(tiny_reference_model("t2v_a14b", "low"), "t2v_a14b"))
    # a missing shard is reported, not half-loaded
    (top / "high_noise_model" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WanMeterError, match="incomplete.*missing shards"):
        inspect_dit(top / "high_noise_model")


def test_official_folder_config_mismatch(tmp_path):
    d = _official_folder(tmp_path / "Wan2.2-TI2V-5B", "ti2v_5b", None)
    cfg = json.loads((d / "config.json").read_text())
    cfg["in_dim"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WanMeterError, match="config.json says in_dim=16.*download it again"):
        inspect_dit(d)


def test_diffusers_folder_layout(tmp_path):
    ref = tiny_reference_model("i2v_a14b", "low")
    ref.save_pretrained(tmp_path / "pipe" / "transformer_2", max_shard_size="2MB")
    tiny_reference_model("i2v_a14b", "high").save_pretrained(tmp_path / "pipe" / "transformer")
    info = inspect_dit(tmp_path / "pipe" / "transformer_2")
    assert info.layout == "diffusers_folder" and info.keys_format == "diffusers" and len(info.files) > 1
    assert info.variant == "i2v_a14b" and info.config == tiny_dit_config("i2v_a14b")
    hi, lo = load_expert_pair(tmp_path / "pipe", weight_dtype="fp32")
    assert torch.equal(_forward(lo.model, "i2v_a14b"), _forward(ref, "i2v_a14b"))
    assert torch.equal(_forward(hi.model, "i2v_a14b"), _forward(tiny_reference_model("i2v_a14b", "high"), "i2v_a14b"))


# --- the key conversion checked against the official model (needs WANMETER_WAN22_REF) ------------

def _official_model_module(ref: Path):
    spec = importlib.util.spec_from_file_location("_wanmeter_dump_keys", ROOT / "tools" / "dump_official_keys.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)  # type: ignore[union-attr]
    tool.prepare_imports(ref)
    return importlib.import_module("wan.modules.model")


def _sdpa(q, k, v, *args, **kwargs):
    # full-length batches only: no padding masks needed
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("variant,expert", [("i2v_a14b", "high"), ("ti2v_5b", None)])
def test_loaded_model_matches_official_wanmodel(wan22_ref, monkeypatch, tiny, variant, expert):
    mm = _official_model_module(wan22_ref)
    monkeypatch.setattr(mm, "flash_attention", _sdpa)
    c = tiny_dit_config(variant)
    off = mm.WanModel(model_type=variant[:4].rstrip("_"), in_dim=c["in_channels"], out_dim=c["out_channels"], dim=256,
                      ffn_dim=c["ffn_dim"], text_dim=64, num_heads=2, num_layers=c["num_layers"]).eval()
    off.load_state_dict({k: v.float() for k, v in load_file(str(tiny[fixture_name(variant, expert)])).items()}, strict=True)
    ours = load_dit(tiny[fixture_name(variant, expert)], weight_dtype="fp32").model
    x, t, ctx = _inputs(variant)
    seq = 3 * 2 * 3
    ctx512 = torch.cat([ctx, torch.zeros(1, 512 - ctx.shape[1], 64)], dim=1)  # the official model pads to 512
    with torch.no_grad():
        if variant == "i2v_a14b":
            want = off([x[0, :16]], t, [ctx[0]], seq, y=[x[0, 16:]])[0]
        else:
            want = off([x[0]], t, [ctx[0]], seq)[0]
        got = ours(hidden_states=x, timestep=t, encoder_hidden_states=ctx512, return_dict=False)[0][0]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())
