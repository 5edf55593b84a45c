"""umt5 text encoder: parity with the official Wan T5 encoder and with transformers run directly,
tokenizer behaviour, fp8_scaled files, trimming/zero padding, and the errors for wrong files."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from wanmeter.errors import WanMeterError
from wanmeter.loader.text_encoder import TEXT_LEN, clean_prompt, inspect_text_encoder, load_text_encoder
from wanmeter.tiny import ensure_tiny_models
from wanmeter.tiny.spec import TINY_UMT5
from wanmeter.tiny.text_encoder import corpus, tiny_umt5_state_dict, train_spiece_model

PROMPTS = [
    "A red fox runs across a snowy forest, cinematic lighting.",
    "  two children   play\n\tin a rainy market &amp; laugh ",
    "An astronaut rides through the desert under bright stars, wide angle view, golden hour light. " * 3,
]


@pytest.fixture(scope="module")
def files():
    return ensure_tiny_models(names=["umt5_fp16", "umt5_fp8_scaled", "vae_wan21"])


@pytest.fixture(scope="module")
def te32(files):
    return load_text_encoder(files["umt5_fp16"], dtype=torch.float32)


# ---------------------------------------------------------------- official reference (Wan2.2 t5.py)

def _official_t5(ref_root):
    """Import wan/modules/t5.py alone (its package pulls in flash-attn/ftfy; its class defaults call CUDA)."""
    pkg = types.ModuleType("_wanref_t5pkg")
    pkg.__path__ = [str(ref_root / "wan" / "modules")]
    tok = types.ModuleType("_wanref_t5pkg.tokenizers")
    tok.HuggingfaceTokenizer = None
    saved = {k: sys.modules.get(k) for k in ("_wanref_t5pkg", "_wanref_t5pkg.tokenizers")}
    sys.modules["_wanref_t5pkg"], sys.modules["_wanref_t5pkg.tokenizers"] = pkg, tok
    real = torch.cuda.current_device
    torch.cuda.current_device = lambda: "cpu"
    try:
        spec = importlib.util.spec_from_file_location("_wanref_t5pkg.t5", ref_root / "wan" / "modules" / "t5.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        torch.cuda.current_device = real
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def _to_official_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF/ComfyUI umt5 names -> the official T5Encoder's (token_embedding, blocks.N.attn/ffn/norm*)."""
    out = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    for i in range(TINY_UMT5["num_layers"]):
        b, o = f"encoder.block.{i}.layer.", f"blocks.{i}."
        out[o + "norm1.weight"] = sd[b + "0.layer_norm.weight"]
        for n in "qkvo":
            out[o + f"attn.{n}.weight"] = sd[b + f"0.SelfAttention.{n}.weight"]
        out[o + "pos_embedding.embedding.weight"] = sd[b + "0.SelfAttention.relative_attention_bias.weight"]
        out[o + "norm2.weight"] = sd[b + "1.layer_norm.weight"]
        out[o + "ffn.gate.0.weight"] = sd[b + "1.DenseReluDense.wi_0.weight"]
        out[o + "ffn.fc1.weight"] = sd[b + "1.DenseReluDense.wi_1.weight"]
        out[o + "ffn.fc2.weight"] = sd[b + "1.DenseReluDense.wo.weight"]
    return out


def test_matches_official_umt5_encoder(wan22_ref, files, te32):
    t5 = _official_t5(wan22_ref)
    c = TINY_UMT5
    sd = {k: v.to(torch.float16).float() for k, v in tiny_umt5_state_dict().items() if k != "spiece_model"}
    ref = t5.T5Encoder(vocab=sd["shared.weight"].shape[0], dim=c["d_model"], dim_attn=c["num_heads"] * c["d_kv"],
                       dim_ffn=c["d_ff"], num_heads=c["num_heads"], num_layers=c["num_layers"],
                       num_buckets=c["relative_attention_num_buckets"], shared_pos=False, dropout=0.0)
    ref.load_state_dict(_to_official_names(sd), strict=True)
    ref.eval()
    # the official T5EncoderModel.__call__: ids/mask padded to 512, run, cut each row to its length
    ids, mask = te32.tokenizer(PROMPTS)
    with torch.no_grad():
        full = ref(ids, mask)
    ours = te32.encode(PROMPTS)
    for i, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(ours[i, :n], full[i, :n], atol=2e-5, rtol=1e-5)
        assert torch.count_nonzero(ours[i, n:]) == 0


# ---------------------------------------------------------------- transformers run directly

def test_equals_transformers_on_full_512_ids(te32):
    """Running only up to the longest prompt (our shortcut) == the 512-token run diffusers does."""
    ids, mask = te32.tokenizer(PROMPTS)
    with torch.no_grad():
        full = te32.model(input_ids=ids, attention_mask=mask).last_hidden_state
    ours = te32.encode(PROMPTS)
    assert ours.shape == (len(PROMPTS), TEXT_LEN, TINY_UMT5["d_model"])
    for i, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(ours[i, :n], full[i, :n], atol=1e-5, rtol=1e-5)


def test_trim_and_zero_padding_and_batch_independence(te32):
    ids, mask = te32.tokenizer(PROMPTS)
    lens = mask.sum(1).tolist()
    out = te32.encode(PROMPTS)
    for i, n in enumerate(lens):
        assert torch.count_nonzero(out[i, n:]) == 0          # exactly zero past the prompt
        assert bool((out[i, :n].abs().sum(-1) > 0).all())    # every real token (EOS included) carries a vector
    alone = te32.encode([PROMPTS[0]])
    torch.testing.assert_close(alone[0], out[0], atol=1e-5, rtol=1e-5)


def test_config_built_from_shapes(files, te32):
    cfg = te32.model.config
    c = TINY_UMT5
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.num_layers) == (
        c["d_model"], c["d_ff"], c["num_heads"], c["d_kv"], c["num_layers"])
    assert cfg.vocab_size == tiny_umt5_state_dict()["shared.weight"].shape[0]
    assert te32.model.encoder.embed_tokens is te32.model.shared


def test_real_umt5_xxl_header_gives_the_real_config(tmp_path):
    """A header-only file with the real umt5-xxl layout -> the config of google/umt5-xxl."""
    from wanmeter.tiny.fake_headers import write_header_only

    layout = {"shared.weight": ("F16", (256384, 4096)), "encoder.final_layer_norm.weight": ("F16", (4096,)),
              "spiece_model": ("U8", (4548313,))}
    for i in range(24):
        b = f"encoder.block.{i}.layer."
        layout[b + "0.layer_norm.weight"] = ("F16", (4096,))
        for n in "qkvo":
            layout[b + f"0.SelfAttention.{n}.weight"] = ("F16", (4096, 4096))
        layout[b + "0.SelfAttention.relative_attention_bias.weight"] = ("F16", (32, 64))
        layout[b + "1.layer_norm.weight"] = ("F16", (4096,))
        layout[b + "1.DenseReluDense.wi_0.weight"] = ("F16", (10240, 4096))
        layout[b + "1.DenseReluDense.wi_1.weight"] = ("F16", (10240, 4096))
        layout[b + "1.DenseReluDense.wo.weight"] = ("F16", (4096, 10240))
    p = write_header_only(tmp_path / "umt5_xxl_fp16.safetensors", layout)
    _, cfg = inspect_text_encoder(p)
    assert (cfg["vocab_size"], cfg["d_model"], cfg["d_ff"], cfg["num_heads"], cfg["d_kv"], cfg["num_layers"]) == (
        256384, 4096, 10240, 64, 64, 24)


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_eos_and_padding(te32):
    tok = te32.tokenizer
    ids, mask = tok(PROMPTS)
    assert ids.shape == mask.shape == (len(PROMPTS), TEXT_LEN)
    for i, p in enumerate(PROMPTS):
        n = int(mask[i].sum())
        assert ids[i, n - 1] == tok.eos_id == 1 and bool((ids[i, n:] == 0).all())
        assert tok.decode(ids[i].tolist()) == clean_prompt(p)
    # cleaning: HTML entities unescaped, whitespace collapsed
    assert clean_prompt(PROMPTS[1]) == "two children play in a rainy market & laugh"


def test_tokenizer_truncates_to_512_with_eos_last(te32):
    ids, mask = te32.tokenizer(["a red fox " * 400])
    assert int(mask.sum()) == TEXT_LEN and ids[0, -1] == 1
    out = te32.encode(["a red fox " * 400])
    assert torch.count_nonzero(out[0, -1]) > 0


def test_tiny_spiece_model_is_deterministic_and_real():
    import sentencepiece

    a, b = train_spiece_model(), train_spiece_model()
    assert a == b
    sp = sentencepiece.SentencePieceProcessor(model_proto=a)
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
    assert 200 <= sp.get_piece_size() <= 400
    line = corpus()[0]
    assert sp.decode(sp.encode(line)) == line


# ---------------------------------------------------------------- fp8_scaled

def test_fp8_scaled_close_to_fp16(files, te32):
    te8 = load_text_encoder(files["umt5_fp8_scaled"], dtype=torch.float32)
    a, b = te32.encode(PROMPTS), te8.encode(PROMPTS)
    _, mask = te32.tokenizer(PROMPTS)
    for i, n in enumerate(mask.sum(1).tolist()):
        cos = torch.nn.functional.cosine_similarity(a[i, :n].flatten(), b[i, :n].flatten(), dim=0)
        assert cos > 0.98
        assert torch.count_nonzero(b[i, n:]) == 0
    assert not torch.equal(a, b)  # it really went through fp8


def test_bf16_default_dtype(files):
    te = load_text_encoder(files["umt5_fp16"])
    out = te.encode(["a cat"])
    assert out.dtype == torch.bfloat16 and out.shape == (1, TEXT_LEN, TINY_UMT5["d_model"])


# ---------------------------------------------------------------- errors

def _write(tmp_path, name, tensors):
    from safetensors.torch import save_file

    p = tmp_path / name
    save_file(tensors, str(p))
    return p


def test_error_clip_l(tmp_path):
    p = _write(tmp_path, "clip_l.safetensors", {"text_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(4, 2)})
    with pytest.raises(WanMeterError, match=r"CLIP.*umt5_xxl_fp16\.safetensors.*umt5_xxl_fp8_e4m3fn_scaled.*models/text_encoders"):
        load_text_encoder(p)


def test_error_t5_v11_without_per_layer_bias(tmp_path):
    sd = {k: v for k, v in tiny_umt5_state_dict().items()
          if not (".relative_attention_bias" in k and not k.startswith("encoder.block.0."))}
    p = _write(tmp_path, "t5xxl_fp16.safetensors", sd)
    with pytest.raises(WanMeterError, match=r"T5-XXL v1\.1.*umt5_xxl_fp16\.safetensors"):
        load_text_encoder(p)


def test_error_dit_and_vae_files(tmp_path, files):
    p = _write(tmp_path, "wan2.2_ti2v_5B_fp16.safetensors",
               {"blocks.0.self_attn.q.weight": torch.zeros(2, 2), "patch_embedding.weight": torch.zeros(2, 2)})
    with pytest.raises(WanMeterError, match=r"diffusion model.*umt5_xxl_fp16\.safetensors"):
        load_text_encoder(p)
    with pytest.raises(WanMeterError, match=r"VAE.*models/text_encoders"):
        load_text_encoder(files["vae_wan21"])


def test_error_missing_tokenizer(tmp_path):
    sd = {k: v for k, v in tiny_umt5_state_dict().items() if k != "spiece_model"}
    p = _write(tmp_path, "umt5_no_tok.safetensors", sd)
    with pytest.raises(WanMeterError, match="spiece_model"):
        load_text_encoder(p)
