"""Our sampler vs diffusers' Wan pipelines on the same tiny random weights (the core proof).

Same scheduler config, seed, steps, shift, cfg and boundary; diffusers returns normalized
latents (output_type="latent"), ours are raw, so ours are normalized before comparing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wanmeter.errors import WanMeterError
from wanmeter.sampler import SampleRequest, SampleStats, WanModelBundle, make_scheduler, sample
from wanmeter.sampler.schedule import plan
from wanmeter.sampler.synthetic import random_dit
from wanmeter.tiny.spec import TINY_DIT, TINY_VAE
from wanmeter.variants import vae_family

diffusers = pytest.importorskip("diffusers")
TOL = 1e-4
W = H = 32      # A14B: 4x4 latent, 2x2 tokens per frame
W5 = H5 = 64    # TI2V-5B (multiple of 32): 4x4 latent
FRAMES = 5
STEPS = 3

# Wan2.2 VAE constants are not needed to test the plumbing: any 48 deterministic values do.
WAN22_MEAN = [round(-0.5 + i / 47, 4) for i in range(48)]
WAN22_STD = [round(0.8 + 0.8 * i / 47, 4) for i in range(48)]


def tiny_vae(family: str):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(7)
    base, z = TINY_VAE[family]["base_dim"], TINY_VAE[family]["z_dim"]
    if family == "wan21":
        fam = vae_family("wan21")
        return AutoencoderKLWan(base_dim=base, z_dim=z, num_res_blocks=1, latents_mean=fam["latents_mean"],
                                latents_std=fam["latents_std"]).eval()
    return AutoencoderKLWan(base_dim=base, decoder_base_dim=base, z_dim=z, num_res_blocks=1, is_residual=True,
                            in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                            latents_mean=WAN22_MEAN, latents_std=WAN22_STD).eval()


def bundle_for(variant: str, experts, **kw) -> WanModelBundle:
    if variant == "ti2v_5b":
        kw.setdefault("latents_mean", WAN22_MEAN)
        kw.setdefault("latents_std", WAN22_STD)
    return WanModelBundle(variant, experts, **kw)


def embeds(batch: int = 1, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    d = TINY_DIT["text_dim"]
    # 64 text tokens instead of 512 keeps the CPU tests fast; the DiT accepts any length
    pos, neg = torch.randn(batch, 64, d, generator=g), torch.randn(batch, 64, d, generator=g)
    pos[:, 20:] = 0  # zero-padded like the real encoder output
    neg[:, 5:] = 0
    return pos, neg


def norm(raw: torch.Tensor, b: WanModelBundle) -> torch.Tensor:
    c = raw.shape[1]
    mean = torch.tensor(b.latents_mean).view(1, c, 1, 1, 1)
    std = torch.tensor(b.latents_std).view(1, c, 1, 1, 1)
    return (raw - mean) / std


def make_image(size: int = W) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def raw_image_latent(vae, image: Image.Image, frames: int | None, processor) -> torch.Tensor:
    """Raw VAE latent of the image (frames=None) or of [image, frames-1 zero frames], as diffusers builds it."""
    w, h = image.size
    img = processor.preprocess(image, height=h, width=w).to(torch.float32).unsqueeze(2)
    if frames is not None:
        img = torch.cat([img, img.new_zeros(1, 3, frames - 1, h, w)], dim=2)
    with torch.no_grad():
        return vae.encode(img).latent_dist.mode()


@pytest.fixture(scope="module")
def a14b_t2v():
    return random_dit("t2v_a14b", seed=11), random_dit("t2v_a14b", seed=12)


@pytest.fixture(scope="module")
def a14b_i2v():
    return random_dit("i2v_a14b", seed=21), random_dit("i2v_a14b", seed=22)


@pytest.fixture(scope="module")
def ti2v():
    return random_dit("ti2v_5b", seed=31)


@pytest.mark.parametrize("sched", ["unipc", "euler"])
def test_t2v_a14b_matches_wan_pipeline(a14b_t2v, sched):
    from diffusers import WanPipeline

    high, low = a14b_t2v
    pos, neg = embeds()
    shift, cfg = 12.0, (4.0, 3.0)
    b = bundle_for("t2v_a14b", (high, low))
    stats = SampleStats()
    ours = sample(b, pos, neg, SampleRequest(W, H, FRAMES, steps=STEPS, cfg=cfg, shift=shift, seed=42,
                                             scheduler=sched, sigma_grid="diffusers"), stats=stats)
    assert set(stats.expert_per_step) == {0, 1}, "the test must cross the MoE boundary"
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae("wan21"), scheduler=make_scheduler(sched, shift),
                       transformer=high, transformer_2=low, boundary_ratio=0.875)
    ref = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, height=H, width=W, num_frames=FRAMES,
               num_inference_steps=STEPS, guidance_scale=cfg[0], guidance_scale_2=cfg[1],
               generator=torch.Generator().manual_seed(42), output_type="latent").frames
    assert ours.shape == ref.shape
    assert (norm(ours, b) - ref).abs().max().item() < TOL


@pytest.mark.parametrize("sched", ["unipc", "euler"])
def test_i2v_a14b_matches_wan_i2v_pipeline(a14b_i2v, sched):
    from diffusers import WanImageToVideoPipeline

    high, low = a14b_i2v
    pos, neg = embeds()
    vae = tiny_vae("wan21")
    image = make_image()
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=make_scheduler(sched, 5.0),
                                   transformer=high, transformer_2=low, boundary_ratio=0.9)
    cond = raw_image_latent(vae, image, FRAMES, pipe.video_processor)
    b = bundle_for("i2v_a14b", (high, low))
    stats = SampleStats()
    ours = sample(b, pos, neg, SampleRequest(W, H, FRAMES, steps=STEPS, cfg=(3.5, 2.0), shift=5.0, seed=5,
                                             scheduler=sched, sigma_grid="diffusers", image_latent=cond), stats=stats)
    assert set(stats.expert_per_step) == {0, 1}
    ref = pipe(image=image, prompt_embeds=pos, negative_prompt_embeds=neg, height=H, width=W, num_frames=FRAMES,
               num_inference_steps=STEPS, guidance_scale=3.5, guidance_scale_2=2.0,
               generator=torch.Generator().manual_seed(5), output_type="latent").frames
    assert (norm(ours, b) - ref).abs().max().item() < TOL


@pytest.mark.parametrize("sched", ["unipc", "euler"])
def test_ti2v_5b_text_mode_matches_expand_timesteps(ti2v, sched):
    from diffusers import WanPipeline

    pos, neg = embeds(batch=1)
    b = bundle_for("ti2v_5b", (ti2v,))
    ours = sample(b, pos, neg, SampleRequest(W5, H5, FRAMES, steps=STEPS, cfg=5.0, shift=5.0, seed=9,
                                             scheduler=sched, sigma_grid="diffusers", batch_size=2))
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae("wan22"), scheduler=make_scheduler(sched, 5.0),
                       transformer=ti2v, expand_timesteps=True)
    ref = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, height=H5, width=W5, num_frames=FRAMES,
               num_inference_steps=STEPS, guidance_scale=5.0, num_videos_per_prompt=2,
               generator=torch.Generator().manual_seed(9), output_type="latent").frames
    assert ours.shape == ref.shape == (2, 48, 2, H5 // 16, W5 // 16)
    assert (norm(ours, b) - ref).abs().max().item() < TOL


@pytest.mark.parametrize("sched", ["unipc", "euler"])
def test_ti2v_5b_image_mode_matches_i2v_expand_timesteps(ti2v, sched):
    from diffusers import WanImageToVideoPipeline

    pos, neg = embeds()
    vae = tiny_vae("wan22")
    image = make_image(W5)
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=make_scheduler(sched, 5.0),
                                   transformer=ti2v, expand_timesteps=True)
    img_lat = raw_image_latent(vae, image, None, pipe.video_processor)
    b = bundle_for("ti2v_5b", (ti2v,))
    ours = sample(b, pos, neg, SampleRequest(W5, H5, FRAMES, steps=STEPS, cfg=5.0, shift=5.0, seed=4,
                                             scheduler=sched, sigma_grid="diffusers", image_latent=img_lat))
    ref = pipe(image=image, prompt_embeds=pos, negative_prompt_embeds=neg, height=H5, width=W5, num_frames=FRAMES,
               num_inference_steps=STEPS, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(4), output_type="latent").frames
    assert (norm(ours, b) - ref).abs().max().item() < TOL
    # the first latent frame is the image itself
    assert (ours[:, :, :1] - img_lat).abs().max().item() < 1e-5


@pytest.mark.parametrize("sched", ["unipc", "euler"])
def test_partial_denoise_matches_video2video(a14b_t2v, sched):
    """denoise=0.5, steps=2 == diffusers video2video with 4 inference steps at strength 0.5."""
    from diffusers import WanVideoToVideoPipeline

    model = a14b_t2v[1]
    pos, neg = embeds()
    vae = tiny_vae("wan21")
    pipe = WanVideoToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=make_scheduler(sched, 5.0),
                                   transformer=model)
    rng = np.random.default_rng(1)
    video = [Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)) for _ in range(FRAMES)]
    with torch.no_grad():
        pix = pipe.video_processor.preprocess_video(video, height=H, width=W).to(torch.float32)
        init = vae.encode(pix).latent_dist.mode()
    b = bundle_for("t2v_a14b", (model, model))  # one model for both slots == a single-expert pipeline
    ours = sample(b, pos, neg, SampleRequest(W, H, FRAMES, steps=2, denoise=0.5, cfg=4.0, shift=5.0, seed=8,
                                             scheduler=sched, sigma_grid="diffusers", init_latent=init))
    ref = pipe(video=video, prompt_embeds=pos, negative_prompt_embeds=neg, height=H, width=W,
               num_inference_steps=4, strength=0.5, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(8), output_type="latent").frames
    assert (norm(ours, b) - ref).abs().max().item() < TOL


@pytest.mark.parametrize("steps, shift", [(40, 12.0), (40, 5.0), (50, 5.0), (3, 5.0)])
def test_official_grid_equals_official_unipc_scheduler(wan22_ref, steps, shift):
    """sigma_grid="official" reproduces Wan2.2's FlowUniPCMultistepScheduler timesteps and sigmas."""
    import importlib.util

    path = wan22_ref / "wan" / "utils" / "fm_solvers_unipc.py"  # imported alone: wan/__init__ needs easydict
    spec = importlib.util.spec_from_file_location("wan22_fm_solvers_unipc", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    FlowUniPCMultistepScheduler = mod.FlowUniPCMultistepScheduler
    off = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    off.set_timesteps(steps, device="cpu", shift=shift)
    ours = plan("unipc", shift, steps, steps, torch.device("cpu"), "official")
    assert torch.equal(off.timesteps, ours.timesteps)
    assert (off.sigmas - ours.scheduler.sigmas).abs().max().item() < 1e-6
    if (steps, shift) == (40, 12.0):  # 26 of 40 steps on the high-noise expert (wan22.md)
        assert sum(t >= 875 for t in ours.timesteps_cpu) == 26
    # the diffusers grid is close but not identical (documented in schedule.py)
    d = plan("unipc", shift, steps, steps, torch.device("cpu"), "diffusers")
    assert (off.timesteps - d.timesteps).abs().max().item() <= 8


def test_interrupt_releases_everything_and_next_run_works(ti2v):
    import gc
    import weakref

    pos, neg = embeds()
    b = bundle_for("ti2v_5b", (ti2v,))
    req = SampleRequest(W5, H5, FRAMES, steps=STEPS, cfg=5.0, seed=1)
    seen = []

    class Stop(Exception):
        pass

    def cb(step, total, latent):
        seen.append(weakref.ref(latent))
        assert total == STEPS and latent.shape == (1, 48, 2, 4, 4)
        if step == 2:
            raise Stop

    stats = SampleStats()
    with pytest.raises(Stop):
        sample(b, pos, neg, req, cb, stats=stats)
    gc.collect()
    assert stats.interrupted and stats.steps_done == 2
    assert all(r() is None for r in seen), "the sampler kept a reference to a latent"
    full = sample(b, pos, neg, req)
    again = sample(b, pos, neg, req)
    assert torch.equal(full, again)


@pytest.mark.parametrize("kw, fix", [
    (dict(width=60), "multiple of 32"),
    (dict(frames=6), r"4n\+1"),
    (dict(steps=0), "at least 1"),
    (dict(denoise=0.5), "init_latent"),
    (dict(scheduler="ddim"), "unipc"),
    (dict(cfg=(1.0, 2.0)), "1 cfg"),
])
def test_validation_names_the_fix(ti2v, kw, fix):
    pos, neg = embeds()
    args = dict(width=W5, height=H5, frames=FRAMES, steps=2)
    args.update(kw)
    with pytest.raises(WanMeterError, match=fix):
        sample(bundle_for("ti2v_5b", (ti2v,)), pos, neg, SampleRequest(**args))


def test_bundle_validation(a14b_t2v, ti2v):
    with pytest.raises(WanMeterError, match="in_channels=48"):
        WanModelBundle("t2v_a14b", (ti2v, None))
    with pytest.raises(WanMeterError, match="high_noise, low_noise"):
        WanModelBundle("t2v_a14b", (a14b_t2v[0],))
    pos, neg = embeds()
    # an S2V bundle is placed like the others (offload, streaming, attention) but sampled by wanmeter.s2v
    with pytest.raises(WanMeterError, match="S2V Sampler"):
        sample(WanModelBundle("s2v_14b", (a14b_t2v[0],)), pos, neg, SampleRequest(W, H, FRAMES, steps=1))
    b = WanModelBundle("t2v_a14b", (None, a14b_t2v[1]))
    with pytest.raises(WanMeterError, match="high-noise expert"):
        sample(b, pos, neg, SampleRequest(W, H, FRAMES, steps=2))
    with pytest.raises(WanMeterError, match="I2V-A14B needs image_latent"):
        sample(WanModelBundle("i2v_a14b", (random_dit("i2v_a14b"), None)), pos, neg, SampleRequest(W, H, FRAMES, steps=1))
