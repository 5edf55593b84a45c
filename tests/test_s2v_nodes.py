"""S2V nodes through ComfyUI stubs: contract, the tiny chain LoadAudio -> S2V Audio -> Model Loader
-> S2V Sampler -> IMAGE + AUDIO, progress, interruption, and refusals before loading."""
from __future__ import annotations

import shutil
import sys

import pytest
from wm_testutil import load_module, s2v_support
import torch

from wanmeter.errors import WanMeterError
from wanmeter.tiny import ensure_tiny_models
from wanmeter.tiny.s2v import ensure_tiny_s2v


stubs = load_module("wanmeter_comfy_stubs", "comfy_stubs.py")


@pytest.fixture()
def pack(tmp_path, monkeypatch):
    d = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "audio_encoders"):
        (d / sub).mkdir(parents=True)
    files = ensure_tiny_s2v()
    shutil.copy(files["s2v"], d / "diffusion_models" / "wan2.2_s2v_14B_tiny.safetensors")
    shutil.copy(files["wav2vec2"], d / "audio_encoders" / "wav2vec2_tiny.safetensors")
    tiny = ensure_tiny_models(names=["umt5_fp16", "vae_wan21"])
    shutil.copy(tiny["umt5_fp16"], d / "text_encoders" / "umt5_tiny.safetensors")
    shutil.copy(tiny["vae_wan21"], d / "vae" / "wan_2.1_vae_tiny.safetensors")
    for name, mod in stubs.make_stubs(d).items():
        monkeypatch.setitem(sys.modules, name, mod)
    mod = stubs.import_pack()
    yield mod
    for k in [k for k in sys.modules if k == stubs.PACK or k.startswith(stubs.PACK + ".")]:
        del sys.modules[k]


def test_contract(pack):
    m = pack.NODE_CLASS_MAPPINGS
    for name in ("WanMeterS2VAudio", "WanMeterS2VSampler"):
        cls = m[name]
        assert cls.CATEGORY == "WanMeter" and name in pack.NODE_DISPLAY_NAME_MAPPINGS
        assert callable(getattr(cls, cls.FUNCTION))
    assert m["WanMeterS2VSampler"].RETURN_TYPES == ("IMAGE", "AUDIO")
    assert m["WanMeterS2VAudio"].RETURN_TYPES == m["WanMeterS2VSampler"].INPUT_TYPES()["required"]["s2v_audio"][:1]


def test_workflow_chain_with_real_tiny_text_encoder_and_vae(pack):
    """The S2V workflow's own chain on the tiny models, with nothing stood in: S2V Audio, Model Loader,
    Text Encoder Loader + Text Encode, VAE Loader, S2V Sampler -> frames + audio for CreateVideo."""
    m = pack.NODE_CLASS_MAPPINGS
    audio = {"waveform": torch.randn(1, 1, 16000) * 0.1, "sample_rate": 16000}
    (cond,) = m["WanMeterS2VAudio"]().encode(audio, "wav2vec2_tiny.safetensors", 1.0, "cpu", 0)
    (model,) = m["WanMeterModelLoader"]().load("wan2.2_s2v_14B_tiny.safetensors", "fp32", "bf16", "none", 0, "auto")
    (te,) = m["WanMeterTextEncoderLoader"]().load("umt5_tiny.safetensors", "cpu", "fp32")
    pos, neg = m["WanMeterTextEncode"]().encode(te, "a person talks", "")
    (vae,) = m["WanMeterVAELoader"]().load("wan_2.1_vae_tiny.safetensors", False, "fp32")
    ref = torch.rand(1, 48, 48, 3, generator=torch.Generator().manual_seed(1))
    out = m["WanMeterS2VSampler"]().sample(model, pos, neg, cond, ref, vae, 64, 64, 1, 4.5, 3.0, 0, True)
    frames, out_audio = out["result"]
    assert frames.shape == (77, 64, 64, 3) and torch.isfinite(frames).all()
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert out_audio["sample_rate"] == 16000 and out_audio["waveform"].shape[-1] == round(77 / 16 * 16000)


def test_tiny_chain_progress_and_interrupt(pack):
    m = pack.NODE_CLASS_MAPPINGS
    audio = {"waveform": torch.randn(1, 2, 22050) * 0.1, "sample_rate": 22050}
    (cond,) = m["WanMeterS2VAudio"]().encode(audio, "wav2vec2_tiny.safetensors", 1.0, "cpu", 0)
    assert cond.num_clips == 1
    (model,) = m["WanMeterModelLoader"]().load("wan2.2_s2v_14B_tiny.safetensors", "fp32", "bf16", "none", 0, "auto")
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 512, 64, generator=g), {}]]
    neg = [[torch.zeros(1, 512, 64), {}]]
    vae = s2v_support().FastVAE()
    node = m["WanMeterS2VSampler"]()
    out = node.sample(model, pos, neg, cond, torch.rand(1, 64, 64, 3, generator=g), vae, 64, 64, 2,
                      1.0, 3.0, 7, True, unique_id="5")
    frames, out_audio = out["result"]
    stats = out["ui"]["wanmeter_stats"][0]  # measured next to estimated, as for the main sampler
    assert stats["steps"] == 2 and stats["seconds_per_step"] > 0 and stats["peak_ram_gib"] > 0
    assert frames.shape == (77, 64, 64, 3) and torch.isfinite(frames).all()
    assert out_audio["sample_rate"] == 22050 and out_audio["waveform"].shape == (1, 2, round(77 / 16 * 22050))
    bar = sys.modules["comfy.utils"].ProgressBar.instances[-1]
    assert bar.node_id == "5" and bar.updates[-1] == (2, 2)
    sys.modules["comfy.model_management"].interrupt = True
    with pytest.raises(stubs.InterruptProcessingException):
        node.sample(model, pos, neg, cond, torch.rand(1, 64, 64, 3), vae, 64, 64, 2, 1.0, 3.0, 7, True)


def test_refusals(pack):
    m = pack.NODE_CLASS_MAPPINGS
    long = {"waveform": torch.zeros(1, 1, 8000 * 700), "sample_rate": 8000}
    with pytest.raises(Exception, match="Cut it or raise max_seconds"):
        m["WanMeterS2VAudio"]().encode(long, "missing.safetensors", 1.0, "cpu", 0)
    with pytest.raises(Exception, match="LoadAudio"):
        m["WanMeterS2VAudio"]().encode(torch.zeros(3), "wav2vec2_tiny.safetensors", 1.0, "cpu", 0)
    with pytest.raises(Exception, match="S2V-14B"):
        m["WanMeterS2VSampler"]().sample(torch.nn.Linear(2, 2), [], [], None, None, None, 64, 64, 1, 1.0, 3.0, 0, True)
    assert issubclass(WanMeterError, Exception)
