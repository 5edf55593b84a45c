"""S2V audio: resampling, wav2vec2 loading, per-clip bucketing (vs the official helper), bad inputs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wanmeter.errors import WanMeterError
from wanmeter.s2v.audio import bucket_per_frame, encode_audio, load_wav2vec2, num_clips_for
from wanmeter.s2v.resample import resample
from wanmeter.tiny.s2v import ensure_tiny_s2v


@pytest.fixture(scope="module")
def w2v():
    return load_wav2vec2(ensure_tiny_s2v()["wav2vec2"])


def _sine(sr: int, seconds: float, hz: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return torch.sin(2 * torch.pi * hz * t)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000, 96000])
def test_resample_matches_analytic_sine_and_scipy(sr):
    x = _sine(sr, 0.5)
    y = resample(x, sr, 16000)
    assert y.shape[-1] == int(np.ceil(x.shape[-1] * 16000 / sr))
    want = _sine(16000, 0.5)[: y.shape[-1]]
    assert (y[200:-200] - want[200:-200]).abs().max() < 2e-3
    signal = pytest.importorskip("scipy.signal")
    g = np.gcd(sr, 16000)
    ref = signal.resample_poly(x.numpy(), 16000 // g, sr // g)[: y.shape[-1]]
    assert np.abs(y.numpy()[200:-200] - ref[200:-200]).max() < 5e-3


def test_clip_count_formula():
    assert [num_clips_for(n) for n in (0, 1, 149, 150, 299, 300)] == [1, 1, 1, 2, 2, 3]


def test_bucketing_matches_official(wan22_ref):
    name = "wanmeter_s2v_test_support"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_s2v_support.py"))
        sup = importlib.util.module_from_spec(spec)
        sys.modules[name] = sup
        spec.loader.exec_module(sup)
    mod = sys.modules[name].official_modules(wan22_ref)["audio_encoder"]
    enc = mod.AudioEncoder.__new__(mod.AudioEncoder)
    enc.video_rate = 30
    for n30 in (7, 149, 150, 233, 451):
        z = torch.randn(25, n30, 8)
        want, clips = enc.get_audio_embed_bucket_fps(z, fps=16, batch_frames=80, m=0)
        got = bucket_per_frame(z, num_clips_for(n30))
        assert clips == num_clips_for(n30)
        assert torch.equal(got, want.permute(1, 2, 0).unsqueeze(0))


def test_short_silent_and_multichannel_audio(w2v):
    silence = encode_audio(torch.zeros(1, 1, 8000), 16000, w2v)
    assert silence.num_clips == 1 and torch.isfinite(silence.features).all()
    short = encode_audio(torch.randn(1, 2, 4000) * 0.1, 8000, w2v)  # 0.5 s stereo at 8 kHz
    assert short.num_clips == 1 and short.features.shape[-1] == 80
    n30 = short.meta["n30"]
    last = int(np.ceil(n30 * 16 / 30))  # first video frame whose 30-fps index is past the end
    assert short.features[..., last + 1:].abs().sum() == 0 and short.features[..., :last].abs().sum() > 0
    tiny = encode_audio(torch.randn(1, 1, 50), 16000, w2v)  # shorter than one wav2vec2 frame
    assert tiny.num_clips == 1
    # six channels at 96 kHz == their mono mix at 16 kHz
    six = torch.randn(1, 6, 96000) * 0.1
    a = encode_audio(six, 96000, w2v)
    b = encode_audio(resample(six.mean(1, keepdim=True), 96000, 16000), 16000, w2v)
    assert a.waveform.shape == (1, 6, 96000) and a.sample_rate == 96000
    assert (a.features - b.features).abs().max() < 1e-4
    assert encode_audio(six, 96000, w2v, max_clips=1).num_clips == 1


def test_too_long_audio_is_refused_before_loading(tmp_path):
    long = torch.zeros(1, 1, 8000 * 601)
    with pytest.raises(WanMeterError, match="Cut it or raise max_seconds"):
        encode_audio(long, 8000, tmp_path / "not_loaded_yet.safetensors")
    with pytest.raises(WanMeterError, match="single audio file"):
        encode_audio(torch.zeros(2, 1, 100), 8000, tmp_path / "x.safetensors")
    with pytest.raises(WanMeterError, match="non-empty"):
        encode_audio(torch.zeros(1, 1, 0), 8000, tmp_path / "x.safetensors")


def test_wrong_audio_encoder_files(tmp_path):
    base = {"encoder.layer_norm.weight": torch.zeros(768), "feature_projection.projection.weight": torch.zeros(768, 512)}
    base.update({f"encoder.layers.{i}.layer_norm.weight": torch.zeros(768) for i in range(12)})
    save_file(base, str(tmp_path / "base.safetensors"))
    with pytest.raises(WanMeterError, match="wav2vec2_large_english"):
        load_wav2vec2(tmp_path / "base.safetensors")
    with pytest.raises(WanMeterError, match="not a wav2vec2"):
        load_wav2vec2(ensure_tiny_s2v()["s2v"])
    whisper = {"model.encoder.embed_positions.weight": torch.zeros(4, 4)}
    save_file(whisper, str(tmp_path / "whisper.safetensors"))
    with pytest.raises(WanMeterError, match="Whisper"):
        load_wav2vec2(tmp_path / "whisper.safetensors")
