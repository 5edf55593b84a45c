"""End-to-end chain on the tiny model files (real loaders), against diffusers' pipelines, plus
the video writer and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wanmeter.cli import main as cli_main
from wanmeter.errors import WanMeterError
from wanmeter.pipeline import WanPipeline, encode_image_condition, generate_from_files
from wanmeter.sampler import SampleRequest, WanModelBundle, make_scheduler
from wanmeter.tiny import ensure_tiny_models
from wanmeter.video import write_video

av = pytest.importorskip("av")
S = 32
FILES = {"t2v_a14b": ["dit_t2v_high", "dit_t2v_low"], "i2v_a14b": ["dit_i2v_high", "dit_i2v_low"], "ti2v_5b": ["dit_ti2v"]}


@pytest.fixture(scope="module")
def tiny():
    names = sorted({n for v in FILES.values() for n in v} | {"umt5_fp16", "vae_wan21", "vae_wan22"})
    return ensure_tiny_models(names=names)


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(2).integers(0, 255, (S, S, 3), dtype=np.uint8))


def _loaded(tiny, name):
    from wanmeter.loader import load_dit
    from wanmeter.loader.text_encoder import load_text_encoder
    from wanmeter.loader.vae_loader import load_vae

    vae = load_vae(tiny["vae_wan22" if name == "ti2v_5b" else "vae_wan21"])
    dits = [load_dit(tiny[n], weight_dtype="fp32") for n in FILES[name]]
    te = load_text_encoder(tiny["umt5_fp16"], dtype=torch.float32)
    return WanPipeline(WanModelBundle.from_loaded(name, *dits, vae=vae), te, vae)


@pytest.mark.parametrize("name", ["t2v_a14b", "i2v_a14b", "ti2v_5b"])
def test_chain_matches_diffusers_pipeline_frames(tiny, name):
    """Text -> sample -> decode with our loaders equals diffusers' pipeline on the same modules."""
    from diffusers import WanImageToVideoPipeline, WanPipeline as DPipe

    pipe = _loaded(tiny, name)
    b = pipe.bundle
    image = _image() if name != "t2v_a14b" else None
    req = SampleRequest(S, S, 5, steps=2, cfg=4.0 if name == "ti2v_5b" else (4.0, 3.0), shift=5.0, seed=6,
                        sigma_grid="diffusers")
    img_t = torch.from_numpy(np.asarray(image).astype("float32") / 255.0) if image is not None else None
    ours = pipe("a white cat", req, negative_prompt="blurry", image=img_t)
    assert ours.frames.shape == (1, 5, S, S, 3) and ours.fps == b.facts["fps"]
    assert [s.name for s in ours.stages][-2:] == ["sample", "decode"]

    pos, neg = pipe.encode_text("a white cat", "blurry")
    kw = dict(tokenizer=None, text_encoder=None, vae=pipe.vae.model, scheduler=make_scheduler("unipc", 5.0),
              transformer=b.experts[0])
    call = dict(prompt_embeds=pos, negative_prompt_embeds=neg, height=S, width=S, num_frames=5, num_inference_steps=2,
                guidance_scale=4.0, generator=torch.Generator().manual_seed(6), output_type="np")
    if name == "ti2v_5b":
        ref = WanImageToVideoPipeline(**kw, expand_timesteps=True)(image=image, **call).frames
    else:
        kw.update(transformer_2=b.experts[1], boundary_ratio=b.facts["boundary"])
        call.update(guidance_scale_2=3.0)
        ref = (DPipe(**kw)(**call) if image is None else WanImageToVideoPipeline(**kw)(image=image, **call)).frames
    assert np.abs(ours.frames.numpy() - ref).max() < 1e-4


def test_image_condition_shapes_and_resize(tiny):
    from wanmeter.loader.vae_loader import load_vae

    v21, v22 = load_vae(tiny["vae_wan21"]), load_vae(tiny["vae_wan22"])
    img = torch.rand(48, 40, 3)  # other size and aspect: resized to cover, center-cropped
    assert encode_image_condition(v21, img, "i2v_a14b", 32, 32, 9).shape == (1, 16, 3, 4, 4)
    assert encode_image_condition(v22, img, "ti2v_5b", 32, 64, 9).shape == (1, 48, 1, 4, 2)
    with pytest.raises(WanMeterError, match="takes no start image"):
        encode_image_condition(v21, img, "t2v_a14b", 32, 32, 9)


def test_generate_from_files_with_model_offload(tiny):
    from wanmeter.runtime import RuntimeOptions

    res = generate_from_files(dit=[tiny["dit_t2v_high"], tiny["dit_t2v_low"]], text_encoder=tiny["umt5_fp16"],
                              vae=tiny["vae_wan21"], prompt="a robot", req=SampleRequest(S, S, 5, steps=2, batch_size=2),
                              runtime=RuntimeOptions(device="cpu", offload="model"), weight_dtype="fp32")
    assert res.frames.shape == (2, 5, S, S, 3)
    assert torch.isfinite(res.frames).all() and res.peak_bytes > 0
    assert {"load text", "text", "load vae", "load dit", "sample", "decode"} == {s.name for s in res.stages}
    with pytest.raises(WanMeterError, match="two DiT files"):
        generate_from_files(dit=[tiny["dit_t2v_high"]], text_encoder=tiny["umt5_fp16"], vae=tiny["vae_wan21"],
                            prompt="x", req=SampleRequest(S, S, 5, steps=1), weight_dtype="fp32")


def _probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return v.codec_context.name, v.codec_context.pix_fmt, frames, [s.type for s in c.streams]


def test_video_writer_mp4_audio_and_odd_sizes(tmp_path):
    frames = torch.zeros(9, 33, 35, 3)
    frames[:, :, :, 0] = torch.linspace(0, 1, 9)[:, None, None]  # red ramps up over time
    wav = torch.sin(torch.linspace(0, 2000, 16000))[None, None]  # ComfyUI AUDIO [B, C, S]
    p = write_video(frames, tmp_path / "v.mp4", fps=16, audio=wav, sample_rate=16000)
    codec, pix, decoded, kinds = _probe(p)
    assert (codec, pix) == ("h264", "yuv420p") and sorted(kinds) == ["audio", "video"]
    assert len(decoded) == 9 and decoded[0].shape == (34, 36, 3)
    assert decoded[0][..., 0].mean() < 20 and decoded[-1][..., 0].mean() > 235
    w = write_video(frames, tmp_path / "v.mp4", fps=16, prefer="webp")
    assert w.suffix == ".webp" and Image.open(w).n_frames == 9
    with pytest.raises(WanMeterError, match="sample_rate"):
        write_video(frames, tmp_path / "x.mp4", audio=wav)


def test_video_writer_falls_back_to_webp_without_pyav(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_av(name, *a, **k):
        if name == "av":
            raise ImportError("no av")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_av)
    frames = np.stack([np.full((8, 8, 3), 60 * i, np.uint8) for i in range(3)])  # distinct frames
    p = write_video(frames, tmp_path / "f.mp4", fps=8)
    assert p.suffix == ".webp" and Image.open(p).n_frames == 3


@pytest.mark.parametrize("variant", ["t2v_a14b"])
def test_demo_command_writes_a_video(tmp_path, capsys, tiny, variant):
    rc = cli_main(["demo", "--variant", variant, "--out", str(tmp_path), "--width", "32", "--height", "32",
                   "--frames", "5", "--steps", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "sample" in out and "decode" in out and "total" in out
    path = tmp_path / f"wanmeter_demo_{variant}.mp4"
    _, _, decoded, _ = _probe(path)
    assert len(decoded) == 5 and decoded[0].shape == (32, 32, 3)


def test_cli_errors_name_the_fix(tmp_path, capsys, tiny):
    assert cli_main(["demo", "--width", "40", "--out", str(tmp_path)]) == 2
    assert "multiple of 16" in capsys.readouterr().err
