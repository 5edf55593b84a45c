"""Multi-clip S2V sampling: parity with the official speech2video loop (2 clips, 2 steps, CFG,
with and without pose) and an end-to-end tiny run (audio -> clips -> sampler -> frames)."""
from __future__ import annotations


import numpy as np
import pytest
from wm_testutil import s2v_support
import torch

from wanmeter.errors import WanMeterError
from wanmeter.s2v.audio import encode_audio, load_wav2vec2
from wanmeter.s2v.loader import load_s2v
from wanmeter.s2v.sampler import frames_for, sample_s2v
from wanmeter.tiny.s2v import ensure_tiny_s2v, tiny_s2v_state_dict

SR = 16000
H = W = 64


support = s2v_support


@pytest.fixture(scope="module")
def parts():
    files = ensure_tiny_s2v()
    return {
        "files": files,
        "model": load_s2v(files["s2v"], weight_dtype="fp32").model,
        "vae": support().FastVAE(),
        "w2v": load_wav2vec2(files["wav2vec2"]),
    }


def _speech(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (env * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.shape))).astype(np.float32)


def _contexts(text_dim: int, g: torch.Generator):
    pos = torch.zeros(1, 512, text_dim)
    neg = torch.zeros(1, 512, text_dim)
    pos[:, :6] = torch.randn(1, 6, text_dim, generator=g)
    neg[:, :4] = torch.randn(1, 4, text_dim, generator=g)
    return pos, neg


@pytest.mark.parametrize("with_pose", [False, True])
def test_two_clips_match_official(wan22_ref, parts, tmp_path, with_pose):
    from PIL import Image
    from transformers import Wav2Vec2FeatureExtractor

    sup = support()
    mods = sup.official_modules(wan22_ref)
    g = torch.Generator().manual_seed(11)
    wave = _speech(5.5)  # 165 30-fps frames -> 2 clips
    ref_u8 = (torch.rand(H, W, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(ref_u8).save(tmp_path / "ref.png")
    pose_u8 = (torch.rand(100, H, W, 3, generator=g) * 255).to(torch.uint8).numpy()
    pos, neg = _contexts(parts["model"].config.text_dim, g)

    # official pipeline, built around the same tiny weights / VAE / wav2vec2
    S2V = mods["speech2video"].WanS2V
    pipe = S2V.__new__(S2V)
    ae = mods["audio_encoder"].AudioEncoder.__new__(mods["audio_encoder"].AudioEncoder)
    ae.model, ae.video_rate = parts["w2v"], 30
    ae.processor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                                            return_attention_mask=True)
    mods["librosa"].load = lambda path, sr: (wave, sr)
    pipe.__dict__.update(
        device=torch.device("cpu"), param_dtype=torch.float32, motion_frames=73, drop_first_motion=True, fps=16,
        audio_sample_m=0, num_train_timesteps=1000, sample_neg_prompt="neg", t5_cpu=False, init_on_cpu=False,
        rank=0, sp_size=1, audio_encoder=ae, vae=sup.OfficialVAE(parts["vae"]),
        noise_model=sup.official_tiny_model(mods, tiny_s2v_state_dict()),
        text_encoder=sup._TextStub({"pos": pos[0, :6], "neg": neg[0, :4]}))
    pipe.read_last_n_frames = lambda video_path, n_frames, target_fps=16, reverse=False: pose_u8[:n_frames]
    want = pipe.generate("pos", str(tmp_path / "ref.png"), "speech.wav", False, None, None, None, num_repeat=None,
                         pose_video="pose.mp4" if with_pose else None, max_area=H * W, infer_frames=80, shift=3.0,
                         sample_solver="unipc", sampling_steps=2, guide_scale=4.5, n_prompt="neg", seed=42,
                         offload_model=False)
    want = (want.permute(1, 2, 3, 0) + 1) / 2  # [N, H, W, 3] 0..1

    cond = encode_audio(torch.from_numpy(wave)[None, None], SR, parts["w2v"])
    got = sample_s2v(parts["model"], pos, neg, cond, torch.from_numpy(ref_u8).float()[None] / 255, parts["vae"],
                     width=W, height=H, steps=2, cfg=4.5, shift=3.0, seed=42,
                     pose_video=torch.from_numpy(pose_u8).float() / 255 if with_pose else None)
    assert cond.num_clips == 2 and got.clips == 2
    assert got.frames.shape == want.shape == (frames_for(2), H, W, 3)
    err = (got.frames - want).abs().max().item()
    first = (got.frames[:77] - want[:77]).abs().max().item()
    print(f"S2V 2-clip x 2-step generation parity (pose={with_pose}): max abs err {err:.2e} "
          f"(clip 0: {first:.2e}), frames {tuple(want.shape)}, pixel std {want.std():.3f}")
    assert want.std() > 0.01
    assert err < 2e-4


def test_end_to_end_tiny(parts):
    """LoadAudio-like 44.1 kHz stereo -> encode -> 2 clips -> frames + synced audio."""
    g = torch.Generator().manual_seed(5)
    stereo = torch.from_numpy(np.stack([_speech(5.2, 44100), _speech(5.2, 44100, seed=1)]))[None]
    cond = encode_audio(stereo, 44100, parts["w2v"])
    pos, neg = _contexts(parts["model"].config.text_dim, g)
    seen = []
    res = sample_s2v(parts["model"], pos, neg, cond, torch.rand(1, 80, 48, 3, generator=g), parts["vae"],
                     width=W, height=H, steps=1, cfg=1.0, seed=1, callback=lambda i, n, x: seen.append((i, n)))
    assert res.frames.shape == (frames_for(2), H, W, 3) and torch.isfinite(res.frames).all()
    assert seen == [(1, 2), (2, 2)]
    assert res.audio["sample_rate"] == 44100
    assert res.audio["waveform"].shape == (1, 2, round(res.frames.shape[0] / 16 * 44100))


def test_interrupt_and_bad_inputs(parts):
    g = torch.Generator().manual_seed(6)
    cond = encode_audio(torch.from_numpy(_speech(1.0))[None, None], SR, parts["w2v"])
    pos, neg = _contexts(parts["model"].config.text_dim, g)
    ref = torch.rand(1, H, W, 3, generator=g)
    with pytest.raises(WanMeterError, match="reference image"):
        sample_s2v(parts["model"], pos, neg, cond, None, parts["vae"], width=W, height=H, steps=1)
    with pytest.raises(WanMeterError, match="multiples of 16"):
        sample_s2v(parts["model"], pos, neg, cond, ref, parts["vae"], width=70, height=H, steps=1)

    class Stop(Exception):
        pass

    def stop(i, n, x):
        raise Stop

    with pytest.raises(Stop):
        sample_s2v(parts["model"], pos, neg, cond, ref, parts["vae"], width=W, height=H, steps=2, callback=stop)
    bad = type(cond)(**{**cond.__dict__, "features": cond.features[:, :, :32]})
    with pytest.raises(WanMeterError, match="wav2vec2"):
        sample_s2v(parts["model"], pos, neg, bad, ref, parts["vae"], width=W, height=H, steps=1)
