"""SampleRequest (what to generate) and its validation against a bundle.

Validation happens before anything is allocated, and every message names the fix, because in
ComfyUI the message is all the user sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .. import schema
from ..errors import WanMeterError
from ..variants import vae_family, variant
from .bundle import WanModelBundle

SCHEDULERS = tuple(schema.widget("WanMeterSampler", "scheduler")["choices"])   # declared once, with the widget


@dataclass
class SampleRequest:
    """One sampling job.

    cfg: one value, or (cfg_high, cfg_low) for the A14B experts; None = variant default.
        A value of 1.0 skips the unconditional pass for that expert.
    denoise: 1.0 generates from pure noise. Below 1.0 it follows ComfyUI's KSampler: the
        schedule is built for int(steps / denoise) steps, the last `steps` of them are run, and
        `init_latent` (raw VAE space) is first noised to that schedule's starting sigma:
        x = sigma * noise + (1 - sigma) * init. This equals diffusers' video2video with
        num_inference_steps=int(steps/denoise) and strength=steps/int(steps/denoise).
    image_latent: raw VAE latent of the conditioning image. I2V-A14B: the encoding of the image
        followed by frames-1 mid-gray frames (as the official code and diffusers encode it;
        see wanmeter.pipeline.encode_image_condition), shape [1|B,16,T,h,w]. TI2V-5B: the
        encoding of the image alone, [1|B,48,1,h,w]; without it TI2V-5B runs text-to-video.
    boundary: MoE switch; the high-noise expert runs while t >= boundary*1000 (None = default).
    sigma_grid: "official" (Wan2.2's grid, default) or "diffusers" (diffusers' WanPipeline grid);
        see wanmeter.sampler.schedule.
    """

    width: int
    height: int
    frames: int
    steps: int | None = None
    cfg: float | Sequence[float] | None = None
    shift: float | None = None
    seed: int = 0
    batch_size: int = 1
    denoise: float = 1.0
    init_latent: torch.Tensor | None = None
    image_latent: torch.Tensor | None = None
    scheduler: str = "unipc"
    boundary: float | None = None
    sigma_grid: str = "official"


@dataclass
class Resolved:
    """A request with defaults filled in and shapes computed."""

    variant: str
    mode: str                       # "t2v", "i2v", "ti2v_text", "ti2v_image"
    steps: int
    total_steps: int                # schedule length (> steps when denoise < 1)
    cfg: tuple[float, ...]          # per expert
    shift: float
    boundary: float | None
    scheduler: str
    seed: int
    batch: int
    latent_shape: tuple[int, int, int, int, int]
    denoise: float


def _check_batch(name: str, t: torch.Tensor, batch: int) -> None:
    if t.shape[0] not in (1, batch):
        raise WanMeterError(f"{name} has batch {t.shape[0]} but batch_size is {batch}; give 1 or {batch}.")


def check_request(variant_name: str, req: SampleRequest) -> None:
    """The checks that need no model (size, frames, steps, scheduler...): run before loading anything."""
    _check_basic(variant(variant_name), vae_family(variant(variant_name)["vae"]), req)


def _check_basic(f: dict, fam: dict, req: SampleRequest) -> tuple[int, float]:
    label = f["label"]
    mult = int(f["size_multiple"])
    for name, v in (("width", req.width), ("height", req.height)):
        if int(v) <= 0 or int(v) % mult:
            lo = max(mult, int(v) // mult * mult)
            raise WanMeterError(f"{label} needs {name} a multiple of {mult}; {v} is not (try {lo} or {lo + mult}).")
    st = int(fam["stride_t"])
    if req.frames < 1 or (req.frames - 1) % st:
        n = max(0, (req.frames - 1) // st)
        raise WanMeterError(
            f"frames must be {st}n+1 (1, 5, 9, ..., 81, ..., 121); {req.frames} is not (try {n * st + 1} or {(n + 1) * st + 1})."
        )
    steps = int(req.steps if req.steps is not None else f["default_steps"])
    if steps < 1:
        raise WanMeterError(f"steps must be at least 1 (got {steps}); {label} defaults to {f['default_steps']}.")
    if req.scheduler not in SCHEDULERS:
        raise WanMeterError(f"Unknown scheduler {req.scheduler!r}; use one of {', '.join(SCHEDULERS)}.")
    if req.sigma_grid not in ("official", "diffusers"):
        raise WanMeterError(f"Unknown sigma_grid {req.sigma_grid!r}; use 'official' or 'diffusers'.")
    if req.batch_size < 1:
        raise WanMeterError(f"batch_size must be at least 1 (got {req.batch_size}).")
    shift = float(req.shift if req.shift is not None else f["default_shift"])
    if shift <= 0:
        raise WanMeterError(f"shift must be positive (got {shift}); {label} defaults to {f['default_shift']}.")
    return steps, shift


def resolve(bundle: WanModelBundle, req: SampleRequest, positive: torch.Tensor,
            negative: torch.Tensor | None) -> Resolved:
    """Validate `req` for `bundle` and fill in the variant defaults."""
    f, fam = bundle.facts, bundle.vae
    label = f["label"]
    steps, shift = _check_basic(f, fam, req)
    st = int(fam["stride_t"])

    n_exp = int(f["experts"])
    cfg_in = req.cfg if req.cfg is not None else f["default_cfg"]
    cfg = (float(cfg_in),) * n_exp if isinstance(cfg_in, (int, float)) else tuple(float(c) for c in cfg_in)
    if len(cfg) == 1:
        cfg = cfg * n_exp
    if len(cfg) != n_exp:
        raise WanMeterError(f"{label} takes {n_exp} cfg value(s) ({'cfg_high, cfg_low' if n_exp == 2 else 'cfg'}); got {len(cfg)}.")
    if any(c < 0 for c in cfg):
        raise WanMeterError(f"cfg must be >= 0 (got {cfg}); 1.0 disables guidance.")

    boundary = None
    if n_exp == 2:
        boundary = float(req.boundary if req.boundary is not None else f["boundary"])
        if not 0.0 <= boundary <= 1.0:
            raise WanMeterError(f"boundary must be within 0..1 (got {boundary}); {label} defaults to {f['boundary']}.")
    elif req.boundary is not None:
        raise WanMeterError(f"{label} has one expert: leave boundary empty.")

    denoise = float(req.denoise)
    if not 0.0 < denoise <= 1.0:
        raise WanMeterError(f"denoise must be in (0, 1] (got {denoise}); 1.0 starts from pure noise.")
    total = steps if denoise >= 1.0 else int(steps / denoise)

    batch = int(req.batch_size)
    ss = int(fam["stride_s"])
    shape = (batch, int(fam["z_dim"]), (req.frames - 1) // st + 1, req.height // ss, req.width // ss)

    if req.init_latent is not None:
        il = req.init_latent
        if il.ndim != 5 or tuple(il.shape[1:]) != shape[1:]:
            raise WanMeterError(
                f"init_latent has shape {tuple(il.shape)} but {req.width}x{req.height}x{req.frames} needs "
                f"[1|{batch}, {', '.join(map(str, shape[1:]))}]; encode the video at this size with the {f['vae']} VAE."
            )
        _check_batch("init_latent", il, batch)
    elif denoise < 1.0:
        raise WanMeterError("denoise < 1 needs init_latent (the raw latent to start from); give one or set denoise=1.")

    var = bundle.variant
    il = req.image_latent
    if var == "t2v_a14b":
        if il is not None:
            raise WanMeterError("T2V-A14B takes no image; use variant i2v_a14b (or ti2v_5b) for image-to-video.")
        mode = "t2v"
    elif var == "i2v_a14b":
        if il is None:
            raise WanMeterError(
                "I2V-A14B needs image_latent: encode the start image (followed by frames-1 gray frames) with the "
                "Wan2.1 VAE, e.g. wanmeter.pipeline.encode_image_condition."
            )
        if il.ndim != 5 or tuple(il.shape[1:]) != shape[1:]:
            raise WanMeterError(
                f"I2V-A14B image_latent has shape {tuple(il.shape)}; {req.width}x{req.height}x{req.frames} needs "
                f"[1|{batch}, {', '.join(map(str, shape[1:]))}] (the image followed by {req.frames - 1} gray frames, "
                "encoded together: wanmeter.pipeline.encode_image_condition does it)."
            )
        _check_batch("image_latent", il, batch)
        mode = "i2v"
    else:
        mode = "ti2v_text"
        if il is not None:
            ok = il.ndim == 5 and il.shape[1] == shape[1] and tuple(il.shape[3:]) == shape[3:] and il.shape[2] >= 1
            if not ok:
                raise WanMeterError(
                    f"TI2V-5B image_latent has shape {tuple(il.shape)}; it needs [1|{batch}, {shape[1]}, 1, {shape[3]}, {shape[4]}]: "
                    f"encode the start image at {req.width}x{req.height} with the Wan2.2 VAE."
                )
            _check_batch("image_latent", il, batch)
            mode = "ti2v_image"

    text_dim = int(bundle.any_expert.config.text_dim)
    for name, t in (("positive", positive), ("negative", negative)):
        if t is None:
            continue
        if t.ndim != 3 or t.shape[-1] != text_dim:
            raise WanMeterError(
                f"{name} text embedding has shape {tuple(t.shape)}; this DiT needs [B, 512, {text_dim}] from its "
                "umt5-xxl text encoder. Use the matching text encoder."
            )
        _check_batch(name, t, batch)
    if negative is None and any(c != 1.0 for c in cfg):
        raise WanMeterError("cfg != 1 needs a negative text embedding; encode a negative prompt (may be empty) or set cfg=1.")

    return Resolved(var, mode, steps, total, cfg, shift, boundary, req.scheduler, int(req.seed), batch, shape, denoise)
