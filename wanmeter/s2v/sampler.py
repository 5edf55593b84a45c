"""Multi-clip S2V generation, following the official wan/speech2video.py loop clip by clip.

Per clip r: noise from seed + r; the reference image's latent; the motion history (the last 73
generated pixel frames, mid-grey = zeros in [-1, 1] before the first clip) re-encoded to 19
latent frames; the clip's audio features; optional pose latents; flow-UniPC with CFG whose
uncond pass uses the negative prompt and zeroed audio (ref / motion / pose unchanged). The clip
is decoded together with its motion latents (or the reference latent for a first clip without
motion) and the last `clip_frames` frames are kept; the first clip drops its first 3 frames when
drop_first_motion is on (official). Only one clip's tensors live on the device at a time.

Latents handed to the transformer are in the official normalised space (vae.normalize).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WanMeterError
from .audio import S2VAudioCond
from .config import MOTION_FRAMES

FIRST_CLIP_DROPPED = 3  # frames the official pipeline cuts from the first clip (drop_first_motion)


@dataclass
class S2VResult:
    frames: torch.Tensor          # [N, H, W, 3] float32 0..1 on the CPU
    audio: dict[str, Any]         # ComfyUI AUDIO: {"waveform": [1, C, n], "sample_rate": int}, in sync with frames
    clips: int
    fps: int


def resize_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, H, W, C] 0..1 -> [N, height, width, C]: scale the shorter side to min(height, width),
    then centre-crop (the official Resize(min(H, W)) + CenterCrop((H, W)))."""
    n, h, w, c = images.shape
    if (h, w) == (height, width):
        return images
    s = min(height, width) / min(h, w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="bilinear", antialias=True,
                      align_corners=False).clamp(0, 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, :, top:top + height, left:left + width].permute(0, 2, 3, 1)


def _check(model, audio: S2VAudioCond, ref_image, width: int, height: int, steps: int, vae=None) -> None:
    if ref_image is None:
        raise WanMeterError("S2V needs a reference image (the person to animate): connect a LoadImage node to ref_image.")
    if not isinstance(audio, S2VAudioCond):
        raise WanMeterError("the audio input is not S2V audio conditioning: connect the WanMeter S2V Audio node.")
    family = getattr(vae, "family", None)
    if vae is None or (family is not None and family != "wan21") or getattr(vae, "z_dim", 16) != 16:
        raise WanMeterError(f"S2V-14B decodes with the Wan2.1 VAE (16 latent channels), but the VAE given is "
                            f"{family or 'missing'}: load wan_2.1_vae.safetensors (wan2.2_vae is for TI2V-5B only).")
    cfg = model.config
    if (audio.num_layers, audio.hidden) != (cfg.num_audio_layers, cfg.audio_dim):
        raise WanMeterError(
            f"the audio was encoded by a wav2vec2 giving {audio.num_layers} states of size {audio.hidden}, but this S2V "
            f"model expects {cfg.num_audio_layers} of size {cfg.audio_dim}. Use wav2vec2_large_english_fp16.safetensors.")
    if width % 16 or height % 16 or width < 64 or height < 64:
        raise WanMeterError(f"{width}x{height}: S2V width and height must be multiples of 16 and at least 64 "
                            "(official sizes: 832x480, 480x832, 1024x704, 704x1024).")
    if steps < 1:
        raise WanMeterError("steps must be at least 1 (official: 40).")


def _encode(vae, images: torch.Tensor) -> torch.Tensor:
    return vae.normalize(vae.encode(images))


def _pose_latents(vae, pose: torch.Tensor, clips: int, clip_frames: int, height: int, width: int) -> list[torch.Tensor]:
    """Per-clip pose latents: the first clips*clip_frames frames (black-padded), each chunk encoded
    with its first frame repeated in front and that extra latent frame dropped (official)."""
    pose = resize_crop(pose[: clips * clip_frames].float(), height, width)
    need = clips * clip_frames - pose.shape[0]
    if need > 0:
        pose = torch.cat([pose, pose.new_zeros(need, height, width, pose.shape[-1])])
    out = []
    for r in range(clips):
        chunk = pose[r * clip_frames:(r + 1) * clip_frames]
        lat = _encode(vae, torch.cat([chunk[:1], chunk]))[:, :, 1:]
        out.append(lat.cpu())
    return out


def _sync_audio(audio: S2VAudioCond, n_frames: int, skip_frames: int) -> dict[str, Any]:
    """The input audio cut to the generated frames: output frame i shows audio time (i+skip)/fps."""
    sr = audio.sample_rate
    start = int(round(skip_frames / audio.fps * sr))
    n = int(round(n_frames / audio.fps * sr))
    wave = audio.waveform[..., start:start + n]
    if wave.shape[-1] < n:
        wave = F.pad(wave, (0, n - wave.shape[-1]))
    return {"waveform": wave.contiguous(), "sample_rate": sr}


def official_sigmas(steps: int) -> np.ndarray:
    """Unshifted sigmas of the official flow solvers: linspace(0.999, 0, steps + 1)[:-1].

    diffusers' UniPC (0.42) starts its default flow schedule at 1.0 instead of 0.999; passing
    these sigmas makes it reproduce the official FlowUniPCMultistepScheduler exactly.
    """
    return np.linspace(1.0 - 1.0 / 1000, 0.0, steps + 1)[:-1].copy()


def _scheduler(name: str, shift: float, steps: int, device: torch.device):
    from ..sampler.schedule import make_scheduler

    sch = make_scheduler(name, shift)
    if name == "unipc":
        sch.set_timesteps(sigmas=official_sigmas(steps), device=device)
    else:
        sch.set_timesteps(steps, device=device)
    return sch


@torch.no_grad()
def sample_s2v(
    model,
    positive: torch.Tensor,
    negative: torch.Tensor,
    audio: S2VAudioCond,
    ref_image: torch.Tensor,
    vae,
    *,
    width: int,
    height: int,
    steps: int = 40,
    cfg: float = 4.5,
    shift: float = 3.0,
    seed: int = 0,
    clips: int = 0,
    pose_video: torch.Tensor | None = None,
    drop_first_motion: bool = True,
    scheduler: str = "unipc",
    device: str | torch.device | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> S2VResult:
    """Generate the video for `audio` (all its clips, or the first `clips`); returns frames + synced audio.

    model: a WanModelBundle of S2V-14B (placed by its runtime options: offload, streamed blocks,
    attention), or a bare WanS2VTransformer / LoadedDiT on its device. positive/negative: [1, 512, text_dim].
    ref_image: IMAGE [1, H, W, 3] or [H, W, 3] in 0..1. vae: wanmeter WanVAE (Wan2.1).
    pose_video: IMAGE [N, H, W, 3] or None. callback(step, total, latent) may raise to interrupt.
    """
    experts = getattr(model, "experts", None)
    core = experts[0] if experts else getattr(model, "model", model)
    _check(core, audio, ref_image, width, height, steps, vae)  # before anything moves to the GPU
    placement = getattr(model, "placement", None)
    if placement is not None:   # a WanModelBundle: its placement brings the model to the device
        model = placement.activate(0)
        dev, dtype = placement.device, placement.compute_dtype
    else:
        model = core
        dev = torch.device(device) if device is not None else model.device
        dtype = model.dtype
    n_clips = audio.num_clips if clips <= 0 else min(int(clips), audio.num_clips)
    cf = audio.clip_frames
    lat_motion = (MOTION_FRAMES + 3) // 4
    lat_frames = (cf + 3 + MOTION_FRAMES) // 4 - lat_motion
    h, w = height // 8, width // 8
    total = n_clips * steps

    ref = ref_image if ref_image.ndim == 4 else ref_image[None]
    ref = resize_crop(ref[:1, ..., :3].float(), height, width)
    pos = positive.to(dev, dtype)
    neg = negative.to(dev, dtype)
    ref_lat = _encode(vae, ref).to(dev, dtype)
    history = torch.full((MOTION_FRAMES, height, width, 3), 0.5)  # zeros in [-1, 1]
    # clip 0 ignores the (all-grey) history when drop_first_motion is on: skip that VAE pass
    motion_lat = None if drop_first_motion else _encode(vae, history).to(dev, dtype)
    poses = _pose_latents(vae, pose_video[..., :3], n_clips, cf, height, width) if pose_video is not None else None

    out: list[torch.Tensor] = []
    lat = None
    try:
        for r in range(n_clips):
            g = torch.Generator(device=dev).manual_seed(int(seed) + r)
            lat = torch.randn(16, lat_frames, h, w, generator=g, dtype=dtype, device=dev)[None]
            sch = _scheduler(scheduler, shift, steps, dev)
            a_c = audio.clip(r).to(dev)
            a_u = torch.zeros_like(a_c)
            pose_r = poses[r].to(dev, dtype) if poses is not None else None
            drop = drop_first_motion and r == 0
            for i, t in enumerate(sch.timesteps):
                tt = t.reshape(1)
                v = model(lat, tt, pos, ref_lat, motion_lat, a_c, pose_r, drop_motion=drop)
                if cfg > 1.0:
                    vu = model(lat, tt, neg, ref_lat, motion_lat, a_u, pose_r, drop_motion=drop)
                    v = vu + cfg * (v - vu)
                lat = sch.step(v.float(), t, lat.float(), return_dict=False)[0].to(dtype)
                if callback is not None:
                    callback(r * steps + i + 1, total, lat)
            dec = torch.cat([ref_lat if drop else motion_lat, lat], dim=2)
            images = vae.decode(vae.denormalize(dec.float()))[-cf:]
            if drop:
                images = images[FIRST_CLIP_DROPPED:]
            k = min(MOTION_FRAMES, images.shape[0])
            history = torch.cat([history[k:], images[-k:].cpu()])
            out.append(images.cpu())
            if r + 1 < n_clips:
                motion_lat = _encode(vae, history).to(dev, dtype)
            del v, sch
    except BaseException:
        if placement is not None:
            placement.recover()   # streamed blocks back to CPU memory after an interruption
        raise
    finally:
        del lat
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    frames = torch.cat(out)
    skip = FIRST_CLIP_DROPPED if drop_first_motion else 0
    return S2VResult(frames=frames, audio=_sync_audio(audio, frames.shape[0], skip), clips=n_clips, fps=audio.fps)


def frames_for(clips: int, clip_frames: int = 80, drop_first_motion: bool = True) -> int:
    """Number of output frames for `clips` clips."""
    return clips * clip_frames - (FIRST_CLIP_DROPPED if drop_first_motion and clips > 0 else 0)


def seconds_for(clips: int, clip_frames: int = 80, fps: int = 16, drop_first_motion: bool = True) -> float:
    return frames_for(clips, clip_frames, drop_first_motion) / float(fps)


__all__ = ["S2VResult", "sample_s2v", "resize_crop", "frames_for", "seconds_for"]
