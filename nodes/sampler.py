"""WanMeter Sampler: the denoising loop node (T2V, I2V, TI2V text or image mode).

It converts ComfyUI types (CONDITIONING, LATENT, IMAGE) to engine tensors, calls
wanmeter.sampler.sample with a callback that drives ComfyUI's progress bar and interruption,
and reports measured seconds per step and peak VRAM to the frontend (ui.wanmeter_stats).
"""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c
from .conditioning import from_conditioning, match_batch


class WanMeterSampler:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterSampler")

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("Raw latent video (ComfyUI convention: native VAEDecode works on it too).",)
    FUNCTION = "sample"
    CATEGORY = c.CATEGORY
    DESCRIPTION = ("Generate a Wan2.2 video latent. Shows measured seconds per step and peak VRAM after the "
                   "run, next to the estimate.")

    def sample(self, model, positive, negative, width: int, height: int, frames: int, steps: int,
               cfg_high: float, cfg_low: float, shift: float, seed: int, batch_size: int, scheduler: str,
               boundary: float, denoise: float, step_cache: str = "none", cache_threshold: float = 0.0,
               num_gpus: int = 1, latent: dict | None = None, start_image=None, vae=None,
               unique_id: str | None = None):
        import torch

        if frames < 1 or (frames - 1) % 4:
            lo = max(1, (frames - 1) // 4 * 4 + 1)
            raise WanMeterError(f"frames must be 4k+1 (1, 5, ..., 81, ..., 121); {frames} is not. Use {lo} or {lo + 4}.")
        if start_image is not None and vae is None:
            raise WanMeterError("start_image needs the vae input: connect WanMeter VAE Loader to the sampler's vae.")

        pos = match_batch(from_conditioning(positive, name="positive"), batch_size, name="positive")
        neg = match_batch(from_conditioning(negative, name="negative"), batch_size, name="negative")

        import comfy.utils

        pbar = comfy.utils.ProgressBar(steps, node_id=unique_id)

        def on_step(done: int, total: int, _latent) -> None:
            c.check_interrupt()  # raises InterruptProcessingException; the engine frees its memory
            pbar.update_absolute(done, total)

        fields = dict(width=width, height=height, frames=frames, steps=steps, cfg_high=cfg_high, cfg_low=cfg_low,
                      shift=shift, seed=seed, batch_size=batch_size, scheduler=scheduler,
                      boundary=boundary if boundary > 0 else None, denoise=denoise,
                      latent=(latent["samples"] if isinstance(latent, dict) else latent),
                      image=start_image, vae=vae, step_cache=step_cache, cache_threshold=cache_threshold,
                      num_gpus=int(num_gpus))
        try:
            out, stats = _run(model, pos, neg, fields, on_step)
        except BaseException:
            c.release_memory()
            raise
        c.release_memory()
        return {"ui": {"wanmeter_stats": [stats], "text": [stats_text(stats)]},
                "result": ({"samples": out.to(device="cpu", dtype=torch.float32)},)}


def _run(model, pos, neg, fields: dict[str, Any], callback):
    """Engine call: SampleRequest from the widgets (image -> image_latent), wanmeter.sampler.sample.

    Returns (raw latent, stats dict for the frontend)."""
    from ..wanmeter.sampler import SampleRequest, SampleStats, WanModelBundle, sample
    from .image_cond import encode_start_image

    if not isinstance(model, WanModelBundle):
        raise WanMeterError("model is not a WanMeter model. Connect WanMeter Model Loader (native MODEL is not supported).")
    experts = int(model.facts["experts"])
    width, height = int(fields["width"]), int(fields["height"])
    image_latent = None
    if fields["image"] is not None:
        if model.variant == "t2v_a14b":
            raise WanMeterError("T2V-A14B takes no start image: disconnect start_image, or load the I2V-A14B or "
                                "TI2V-5B model for image-to-video.")
        image_latent, width, height = encode_start_image(model.variant, fields["image"], fields["vae"],
                                                         width, height, int(fields["frames"]))
    elif model.variant == "i2v_a14b":
        raise WanMeterError("I2V-A14B needs a start image: connect a Load Image node to start_image and the VAE to vae.")
    _set_step_cache(model, fields)
    _plan_runtime(model, width, height, fields)
    cfg = (fields["cfg_high"], fields["cfg_low"]) if experts == 2 else fields["cfg_high"]
    req = SampleRequest(width=width, height=height, frames=int(fields["frames"]), steps=int(fields["steps"]),
                        cfg=cfg, shift=float(fields["shift"]), seed=int(fields["seed"]),
                        batch_size=int(fields["batch_size"]), denoise=float(fields["denoise"]),
                        init_latent=fields["latent"], image_latent=image_latent, scheduler=fields["scheduler"],
                        boundary=fields["boundary"] if experts == 2 else None)
    if int(fields.get("num_gpus", 1)) > 1:
        return _run_parallel(model, pos, neg, req, int(fields["num_gpus"]), callback)
    st = SampleStats()
    out = sample(model, pos, neg, req, callback=callback, stats=st)
    return out, _stats(st)


def step_cache_options(kind: str, threshold: float) -> dict | None:
    """RuntimeOptions.step_cache from the widgets (None = off; threshold 0 = the cache's default)."""
    from ..wanmeter.accel import CACHE_KINDS

    if kind in ("none", "", None):
        return None
    if kind not in CACHE_KINDS:
        raise WanMeterError(f"step_cache={kind!r}: use one of {', '.join(c.STEP_CACHES)}.")
    out: dict[str, Any] = {"kind": kind}
    if threshold and threshold > 0:
        out["threshold"] = int(round(threshold)) if kind == "taylorseer" else float(threshold)
    return out


def _set_step_cache(model, fields: dict[str, Any]) -> None:
    """Put the sampler's step cache choice into the bundle's runtime (re-placed only on change)."""
    want = step_cache_options(fields.get("step_cache", "none"), float(fields.get("cache_threshold", 0) or 0))
    rt = model.runtime
    if rt.step_cache != want:
        from dataclasses import replace

        model.set_runtime(replace(rt, step_cache=want))


def _run_parallel(model, pos, neg, req, num_gpus: int, callback):
    """num_gpus > 1: wanmeter.parallel.run_parallel, each worker rebuilding the model from its files."""
    import time
    from dataclasses import replace

    import torch

    from ..wanmeter.parallel import run_parallel
    from .parallel_bundle import BundleFactory, make_importable

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < num_gpus:
        raise WanMeterError(f"num_gpus={num_gpus} but ComfyUI sees {visible} CUDA GPU(s). Set num_gpus to "
                            f"{max(visible, 1)} or less (or check CUDA_VISIBLE_DEVICES).")
    spec = getattr(model, "wanmeter_source", None)
    if spec is None:
        raise WanMeterError("This model cannot be split over GPUs: it was not loaded from files by WanMeter Model "
                            "Loader. Load it with WanMeter Model Loader, or set num_gpus to 1.")
    spec = replace(spec, step_cache=model.runtime.step_cache)
    # Workers load their own copies: free this process's copy from the GPU first.
    for e in model.experts:
        if e is not None:
            e.to("cpu")
    model.set_runtime(model.runtime)
    c.release_memory()
    make_importable()
    t0 = time.perf_counter()
    out = run_parallel(BundleFactory(spec), pos, neg, req, num_gpus, callback=callback, variant=model.variant)
    total = time.perf_counter() - t0
    stats = {"seconds_per_step": round(total / max(req.steps, 1), 4), "first_step_seconds": None,
             "total_seconds": round(total, 3), "steps": int(req.steps), "swaps": 0, "peak_vram_gib": None,
             "peak_ram_gib": None, "device": f"{num_gpus} GPUs ({torch.cuda.get_device_name(0)})",
             "num_gpus": num_gpus}
    return out, stats


def _plan_runtime(model, width: int, height: int, fields: dict[str, Any]) -> None:
    """offload=auto: re-plan for this video on this GPU (the loader planned at the official size):
    wanmeter.memplan.sampler_plan, the same call every estimate makes after the loader's."""
    if not getattr(model, "wanmeter_auto_offload", False):
        return
    from dataclasses import replace

    from ..wanmeter.estimator import Workload
    from ..wanmeter.memplan import apply_plan, free_memory, sampler_plan
    from .loaders import base_plan, planner_gpu

    rt = model.runtime
    device = rt.torch_device()
    vram, ram, gpu_key = free_memory(device)
    if vram is None:
        return
    placed = getattr(model, "_placement", None)
    if device.type == "cuda" and placed is not None:   # our own resident weights count as free: re-placing moves them
        vram += sum(e["resident_bytes"] for e in placed.describe()["experts"] if e)
    experts = int(model.facts["experts"])
    cfg = (float(fields["cfg_high"]), float(fields["cfg_low"])) if experts == 2 else (float(fields["cfg_high"]),)
    w = Workload(variant=model.variant, width=width, height=height, frames=int(fields["frames"]),
                 steps=int(fields["steps"]), cfg=cfg, batch=int(fields["batch_size"]), shift=float(fields["shift"]) or None,
                 boundary=fields.get("boundary") or None)
    base = base_plan(getattr(model, "wanmeter_plan_weights", "bf16"), rt.attention, rt.fp8_compute, rt.compile)
    chosen = sampler_plan(w, vram, ram, planner_gpu(gpu_key), base=base)
    new = apply_plan(chosen.plan).runtime_options(rt.device)
    if (rt.offload, rt.blocks_to_stream) != (new.offload, new.blocks_to_stream):
        model.set_runtime(replace(rt, offload=new.offload, blocks_to_stream=new.blocks_to_stream))


def _stats(st) -> dict:
    """The engine's SampleStats as the frontend reads them (ui.wanmeter_stats)."""
    cuda = st.memory_kind.startswith("cuda")
    name = st.device
    if cuda:
        import torch

        name = torch.cuda.get_device_name(torch.device(st.device))
    return {
        "seconds_per_step": round(st.seconds_per_step, 4),
        "first_step_seconds": round(st.step_seconds[0], 4) if st.step_seconds else None,
        "total_seconds": round(st.total_seconds, 3),
        "steps": st.steps_done,
        "swaps": st.swaps,
        "peak_vram_gib": round(st.peak_memory_bytes / 1024**3, 3) if cuda else None,
        "peak_ram_gib": None if cuda else round(st.peak_memory_bytes / 1024**3, 3),
        "device": name,
    }


class StepMeter:
    """Seconds per step and peak memory for samplers whose engine keeps no SampleStats (S2V): the
    same dict as _stats, so the frontend shows measured next to estimated for every sampler."""

    def __init__(self, device) -> None:
        import time

        import torch

        self._clock = time.perf_counter
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = self.last = self._clock()
        self.step_seconds: list[float] = []

    def step(self) -> None:
        now = self._clock()
        self.step_seconds.append(now - self.last)
        self.last = now

    def stats(self) -> dict:
        import torch

        if self.cuda:
            peak, name = torch.cuda.max_memory_allocated(self.device), torch.cuda.get_device_name(self.device)
        else:
            import resource

            peak, name = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu"
        n = len(self.step_seconds)
        return {
            "seconds_per_step": round(sum(self.step_seconds) / n, 4) if n else 0.0,
            "first_step_seconds": round(self.step_seconds[0], 4) if n else None,
            "total_seconds": round(self._clock() - self.start, 3),
            "steps": n,
            "swaps": 0,
            "peak_vram_gib": round(peak / 1024**3, 3) if self.cuda else None,
            "peak_ram_gib": None if self.cuda else round(peak / 1024**3, 3),
            "device": name,
        }


def stats_text(s: dict) -> str:
    vram = "n/a (CPU)" if s["peak_vram_gib"] is None else f"{s['peak_vram_gib']:.2f} GiB"
    return (f"measured: {s['seconds_per_step']:.2f} s/step, {s['total_seconds']:.1f} s total "
            f"({s['steps']} steps), peak VRAM {vram} on {s['device']}")


NODE_CLASS_MAPPINGS = {"WanMeterSampler": WanMeterSampler}
NODE_DISPLAY_NAME_MAPPINGS = c.display_names("WanMeterSampler")
