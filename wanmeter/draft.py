"""Draft then final: judge a cheap 480p draft, then refine the one you keep at 720p.

Why: a 720p A14B video costs several times a 480p one, and most prompts need a few tries. The
draft is generated at a small size; the kept draft is upscaled, VAE-encoded and partially
re-noised (ComfyUI KSampler `denoise` semantics, see wanmeter.sampler.SampleRequest), and only
the last part of the schedule runs at the final size. With A14B's boundary (0.875) and a low
denoise, that tail only ever reaches the low-noise expert, so the high-noise expert need not even
be loaded for the refinement.

Public API:
    upscale_frames(frames, width, height, method="bicubic", crop="center") -> IMAGE
    refine_request(draft, vae, width=1280, height=720, denoise=0.3, steps=40, ...) -> SampleRequest
    refine_steps(steps, denoise) -> int
    refine_expert_steps(variant, steps, denoise, shift=None, boundary=None) -> (high, low)
    draft_final_cost(workload_final, draft_size, draft_steps, refine_denoise, steps, gpu) -> DraftFinalCost
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .errors import WanMeterError
from .estimator import Estimate, GpuSpec, Plan, Workload, estimate, get_gpu
from .sampler import SampleRequest
from .variants import variant

UPSCALE_METHODS = ("bicubic", "bilinear", "area", "nearest-exact")
CROPS = ("center", "disabled")


def upscale_frames(frames: torch.Tensor, width: int, height: int, method: str = "bicubic",
                   crop: str = "center") -> torch.Tensor:
    """IMAGE [F,H,W,C] in 0..1 -> [F,height,width,C].

    crop="center" first cuts the frames to the target aspect ratio (832x480 is not exactly 16:9),
    as ComfyUI's ImageScale does, so nothing is stretched; "disabled" stretches.
    """
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise WanMeterError(f"Expected draft frames shaped [frames, height, width, 3]; got {list(frames.shape)}.")
    if method not in UPSCALE_METHODS:
        raise WanMeterError(f"Unknown upscale method {method!r}; use one of {', '.join(UPSCALE_METHODS)}.")
    if crop not in CROPS:
        raise WanMeterError(f"Unknown crop {crop!r}; use 'center' or 'disabled'.")
    x = frames[..., :3].float().permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if crop == "center":
        if w * height > h * width:  # too wide: cut the sides
            nw = max(1, round(h * width / height))
            left = (w - nw) // 2
            x = x[..., left:left + nw]
        elif w * height < h * width:  # too tall: cut top and bottom
            nh = max(1, round(w * height / width))
            top = (h - nh) // 2
            x = x[..., top:top + nh, :]
    if tuple(x.shape[-2:]) != (height, width):
        kw = {} if method in ("area", "nearest-exact") else {"align_corners": False}
        x = F.interpolate(x, size=(height, width), mode=method, **kw)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def refine_steps(steps: int, denoise: float) -> int:
    """Steps a refinement runs: the tail of a `steps`-step schedule that `denoise` covers."""
    if not 0.0 < denoise <= 1.0:
        raise WanMeterError(f"refine denoise must be in (0, 1] (got {denoise}); 0.3 is a good start.")
    return max(1, round(int(steps) * float(denoise)))


def refine_request(draft: torch.Tensor, vae: Any, *, width: int = 1280, height: int = 720, denoise: float = 0.3,
                   steps: int = 40, cfg: float | Sequence[float] | None = None, shift: float | None = None,
                   seed: int = 0, scheduler: str = "unipc", boundary: float | None = None,
                   sigma_grid: str = "official", method: str = "bicubic", crop: str = "center") -> SampleRequest:
    """The SampleRequest of the final pass over a kept draft.

    draft: the draft's frames (IMAGE [F,H,W,C] in 0..1) or its raw latent [1,z,T,h,w] (decoded
    with `vae` first). The frames are upscaled to width x height and encoded with `vae` (a
    wanmeter WanVAE) into init_latent. `steps` is the length of the full schedule; the request
    runs refine_steps(steps, denoise) of them (ComfyUI semantics: the schedule is rebuilt for
    int(run / denoise) steps and its last `run` steps are executed).
    """
    if draft.ndim == 5:
        if draft.shape[0] != 1:
            raise WanMeterError(f"Refine one draft at a time: the draft latent has batch {draft.shape[0]}.")
        draft = vae.decode(draft)
    if draft.ndim != 4:
        raise WanMeterError(f"Expected draft frames [frames, H, W, 3] or a raw latent [1, z, T, h, w]; "
                            f"got {list(draft.shape)}.")
    frames = int(draft.shape[0])
    big = upscale_frames(draft, width, height, method, crop)
    init = vae.encode(big)
    return SampleRequest(width, height, frames, steps=refine_steps(steps, denoise), cfg=cfg, shift=shift, seed=seed,
                         denoise=float(denoise), init_latent=init, scheduler=scheduler, boundary=boundary,
                         sigma_grid=sigma_grid)


def refine_expert_steps(variant_name: str, steps: int, denoise: float, shift: float | None = None,
                        boundary: float | None = None) -> tuple[int, ...]:
    """(high, low) steps of a refinement (one entry for one-expert variants), on the estimator's
    sigma grid: the run covers indices total-run .. total-1 of an int(run/denoise)-step schedule."""
    f = variant(variant_name)
    run = refine_steps(steps, denoise)
    if int(f["experts"]) == 1:
        return (run,)
    total = run if denoise >= 1.0 else int(run / denoise)
    s = float(shift if shift is not None else f["default_shift"])
    b = float(boundary if boundary else f["boundary"])
    high = sum(1 for i in range(total - run, total)
               if s * (1 - i / total) / (1 + (s - 1) * (1 - i / total)) >= b)
    return (high, run - high)


@dataclass
class DraftFinalCost:
    """Seconds and $ (on-demand; None without a price) of draft + refinement vs a direct final run.

    draft_s: text encode + denoise + decode of the draft. refine_s: VAE encode of the upscaled
    draft (counted as long as a decode at the final size: the estimator has no encode term and
    encode is not slower) + partial denoise + decode. ratio = combined_s / full_s.
    """

    draft: Estimate
    refine: Estimate
    full: Estimate
    draft_s: float
    refine_s: float
    combined_s: float
    full_s: float
    ratio: float
    draft_cost: float | None
    combined_cost: float | None
    full_cost: float | None
    refine_expert_steps: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        r = lambda x, n=2: None if x is None else round(float(x), n)  # noqa: E731
        return {"draft_s": r(self.draft_s, 1), "refine_s": r(self.refine_s, 1), "combined_s": r(self.combined_s, 1),
                "full_s": r(self.full_s, 1), "ratio": r(self.ratio, 3), "draft_cost": r(self.draft_cost, 4),
                "combined_cost": r(self.combined_cost, 4), "full_cost": r(self.full_cost, 4),
                "refine_expert_steps": list(self.refine_expert_steps),
                "draft_denoise_s": r(self.draft.denoise_s, 1), "refine_denoise_s": r(self.refine.denoise_s, 1),
                "full_denoise_s": r(self.full.denoise_s, 1), "gpu": self.full.gpu.key}


def draft_final_cost(workload_final: Workload, draft_size: tuple[int, int] = (832, 480), draft_steps: int | None = None,
                     refine_denoise: float = 0.3, steps: int | None = None, gpu: GpuSpec | str = "h200",
                     plan: Plan | None = None) -> DraftFinalCost:
    """Estimate draft (draft_size, draft_steps) + refinement (refine_denoise of a `steps`-step
    schedule at the final size) against generating `workload_final` directly with `steps` steps."""
    g = gpu if isinstance(gpu, GpuSpec) else get_gpu(gpu)
    plan = plan or Plan()
    steps = int(steps if steps is not None else workload_final.steps)
    full_w = workload_final.with_(steps=steps)
    dw, dh = (int(x) for x in draft_size)
    draft_w = workload_final.with_(width=dw, height=dh, steps=int(draft_steps or steps))
    split = refine_expert_steps(full_w.variant, steps, refine_denoise, full_w.shift, full_w.boundary)
    ref_w = full_w.with_(steps=sum(split), high_noise_steps=split[0] if len(split) == 2 else None)
    d, rf, fu = (estimate(w, plan, g) for w in (draft_w, ref_w, full_w))
    draft_s = d.per_video_s
    refine_s = rf.decode_s + rf.transfers_s + rf.denoise_s + rf.decode_s  # encode counted as a decode
    full_s = fu.per_video_s
    combined = draft_s + refine_s
    price = fu.prices.on_demand
    cost = (lambda s: None if price is None else s / 3600.0 * price * plan.num_gpus)
    return DraftFinalCost(d, rf, fu, draft_s, refine_s, combined, full_s, combined / full_s if full_s else 0.0,
                          cost(draft_s), cost(combined), cost(full_s), split)
