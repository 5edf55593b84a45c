"""The denoising loop: seeded noise, CFG, the two-expert switch, callbacks, cleanup.

All tensors the run allocates live in one dict that is cleared on every exit, so an
interrupted run (the callback raising) leaves nothing behind even while the caller still holds
the exception and its traceback frames.
"""
from __future__ import annotations

from ..errors import WanMeterError

import time
from typing import Callable

import torch

from ..accel.step_cache import denoise_context, reset_step_cache
from . import conditioning
from .bundle import WanModelBundle
from .request import SampleRequest, resolve
from .schedule import plan
from .stats import SampleStats

Callback = Callable[[int, int, torch.Tensor], None]


def make_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise from a CPU generator: the same on every device, and what diffusers draws
    for `generator=torch.Generator("cpu").manual_seed(seed)` (one draw for the whole batch)."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def _batch(t: torch.Tensor, b: int) -> torch.Tensor:
    return t if t.shape[0] == b else t.expand(b, *t.shape[1:])


def sample(bundle: WanModelBundle, positive: torch.Tensor, negative: torch.Tensor | None,
           req: SampleRequest, callback: Callback | None = None, *, stats: SampleStats | None = None) -> torch.Tensor:
    """Denoise and return the raw (un-normalized) latent [B, C, T, H/s, W/s] on the CPU, float32.

    callback(step, total, latent) runs after each step with step = steps completed (1..total)
    and the current latent in raw VAE space; it may raise to interrupt the run. `stats`, when
    given, is filled with seconds per step and peak memory (also for interrupted runs).
    """
    if bundle.facts.get("audio"):
        raise WanMeterError(f"{bundle.facts['label']} has its own sampler: use WanMeter S2V Sampler (wanmeter.s2v).")
    r = resolve(bundle, req, positive, negative)
    placement = bundle.placement
    device, dtype = placement.device, placement.compute_dtype
    stats = stats if stats is not None else SampleStats()
    stats.begin(device)
    stats.steps_total = r.steps
    swaps0, swap_s0 = placement.swaps, placement.swap_seconds
    t_start = time.perf_counter()
    st: dict = {}
    try:
        with torch.no_grad():
            _run(st, bundle, r, req, positive, negative, callback, stats, device, dtype)
            return st.pop("out")
    except BaseException:
        stats.interrupted = True
        placement.recover()
        raise
    finally:
        for v in st.values():
            if hasattr(v, "clear") and not isinstance(v, torch.Tensor):
                v.clear()
        st.clear()
        stats.swaps = placement.swaps - swaps0
        stats.swap_seconds = placement.swap_seconds - swap_s0
        stats.total_seconds = time.perf_counter() - t_start
        stats.sample_memory(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _run(st: dict, bundle: WanModelBundle, r, req: SampleRequest, positive, negative, callback,
         stats: SampleStats, device: torch.device, dtype: torch.dtype) -> None:
    placement = bundle.placement
    shape = r.latent_shape
    b, c = shape[0], shape[1]
    st["mean"] = torch.tensor(bundle.latents_mean, dtype=torch.float32, device=device).view(1, c, 1, 1, 1)
    st["std"] = torch.tensor(bundle.latents_std, dtype=torch.float32, device=device).view(1, c, 1, 1, 1)

    def normalize(raw: torch.Tensor) -> torch.Tensor:
        return (raw.to(device, torch.float32) - st["mean"]) / st["std"]

    st["sched"] = sch = plan(r.scheduler, r.shift, r.steps, r.total_steps, device, req.sigma_grid)
    st["latents"] = make_noise(shape, r.seed).to(device)
    if r.denoise < 1.0:
        sigma = sch.start_sigma
        st["latents"] = sigma * st["latents"] + (1.0 - sigma) * _batch(normalize(req.init_latent), b)

    image_norm = _batch(normalize(req.image_latent), b) if req.image_latent is not None else None
    patch = tuple(int(p) for p in bundle.any_expert.config.patch_size)
    st["cond"] = cond = conditioning.build(r.mode, shape, image_norm, patch, device)
    del image_norm
    st["pos"] = _batch(positive, b).to(device, dtype)
    st["neg"] = _batch(negative, b).to(device, dtype) if negative is not None else None

    boundary_t = r.boundary * 1000.0 if r.boundary is not None else None
    scheduler = sch.scheduler
    for e in bundle.experts:
        if e is not None:
            reset_step_cache(e)  # step caches (wanmeter.accel) must not carry state across videos
    for i, t_host in enumerate(sch.timesteps_cpu):
        t0 = time.perf_counter()
        expert = 0 if boundary_t is None or t_host >= boundary_t else 1
        model = placement.activate(expert)
        guidance = r.cfg[expert]
        t = sch.timesteps[i]
        st["x_in"] = cond.model_input(st["latents"], dtype)
        st["ts"] = cond.timestep(t, b)
        ctx = dict(step_index=i, num_inference_steps=r.steps, timestep=t)
        with denoise_context(model, "cond", **ctx):
            st["pred"] = model(hidden_states=st["x_in"], timestep=st["ts"], encoder_hidden_states=st["pos"],
                               return_dict=False)[0].float()
        if guidance != 1.0:
            with denoise_context(model, "uncond", **ctx):
                st["uncond"] = model(hidden_states=st["x_in"], timestep=st["ts"], encoder_hidden_states=st["neg"],
                                     return_dict=False)[0].float()
            st["pred"] = st["uncond"] + guidance * (st["pred"] - st["uncond"])
            st["uncond"] = None
        st["x_in"] = None
        st["latents"] = scheduler.step(st["pred"], t, st["latents"], return_dict=False)[0]
        st["pred"] = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats.step_seconds.append(time.perf_counter() - t0)
        stats.expert_per_step.append(expert)
        stats.steps_done = i + 1
        stats.sample_memory(device)
        if callback is not None:
            callback(i + 1, r.steps, cond.finalize(st["latents"]) * st["std"] + st["mean"])

    st["out"] = (cond.finalize(st["latents"]) * st["std"] + st["mean"]).cpu()
