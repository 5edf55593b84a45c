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
        return {
            "required": {
                "model": (c.WANMETER_MODEL, {"tooltip": "From WanMeter Model Loader."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompt embedding: WanMeter Text Encode or native "
                             "CLIPTextEncode with a umt5 (type wan) encoder."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt embedding (used by CFG)."}),
                "width": ("INT", {"default": 1280, "min": 16, "max": 4096, "step": 16, "tooltip": "Video width "
                          "in pixels: a multiple of 16 (32 for TI2V-5B). With a start image (I2V) this is "
                          "the target area; the aspect follows the image."}),
                "height": ("INT", {"default": 720, "min": 16, "max": 4096, "step": 16, "tooltip": "Video height "
                           "in pixels: a multiple of 16 (32 for TI2V-5B)."}),
                "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4, "tooltip": "Number of frames: "
                           "4k+1 (81 = 5 s at 16 fps for A14B, 121 = 5 s at 24 fps for TI2V-5B). Time and "
                           "memory grow with frames."}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "tooltip": "Denoising steps. Official: 40 "
                          "(A14B), 50 (TI2V-5B). Time grows linearly with steps."}),
                "cfg_high": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                             "tooltip": "Classifier-free guidance scale. For A14B: used by the high-noise expert; "
                             "for TI2V-5B/S2V: the only scale. 1.0 skips the negative pass (half the time)."}),
                "cfg_low": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                            "tooltip": "A14B only: guidance scale of the low-noise expert. Ignored by TI2V-5B."}),
                "shift": ("FLOAT", {"default": 12.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                          "tooltip": "Flow-matching sigma shift. Official: 12 (T2V-A14B), 5 (I2V-A14B, TI2V-5B)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Noise seed."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": "Videos generated together "
                               "(activation memory grows with it)."}),
                "scheduler": (c.SCHEDULERS, {"default": "unipc", "tooltip": "unipc: the official flow-matching "
                              "UniPC solver. euler: first-order flow-matching Euler."}),
                "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005, "round": 0.001,
                             "tooltip": "A14B: timestep fraction at which sampling switches from the high-noise "
                             "to the low-noise expert. 0 = the variant default (0.875 T2V, 0.9 I2V)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "1.0: from "
                            "pure noise. Below 1 with a latent input: keep that much of the input video."}),
                "step_cache": (c.STEP_CACHES, {"default": "none", "tooltip": "Skip work on steps whose result "
                               "barely changes. first_block: First-Block Cache (skips the other blocks when the "
                               "first block's output moved less than cache_threshold). taylorseer: full forwards "
                               "every cache_threshold steps, predicted in between. Faster, slightly different "
                               "video."}),
                "cache_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                    "round": 0.001, "tooltip": "0 = the cache's default. first_block: relative "
                                    "change under which blocks are skipped (0.05-0.15; higher = faster, less "
                                    "faithful). taylorseer: steps between full forwards (2-6)."}),
                "num_gpus": ("INT", {"default": 1, "min": 1, "max": 8, "tooltip": "GPUs of this machine for "
                             "one video: 2 = CFG-parallel (measured 1.98x), more adds sequence parallelism "
                             "(3.78x on 4). Each GPU loads its own copy of the model from the files."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Optional raw latent to start from (with denoise < 1)."}),
                "start_image": ("IMAGE", {"tooltip": "First frame: I2V-A14B needs one; TI2V-5B uses it for "
                                "image-to-video. Needs the vae input too."}),
                "vae": (c.WANMETER_VAE, {"tooltip": "Encodes start_image (the model family's VAE)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

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
    """offload=auto: re-plan for this workload on this GPU (the loader planned for the official size)."""
    if not getattr(model, "wanmeter_auto_offload", False):
        return
    from . import estimate_adapter as ea

    offload, blocks = ea.auto_offload(model.variant, getattr(model, "wanmeter_weight_dtype", "bf16"),
                                      width=width, height=height, frames=int(fields["frames"]),
                                      steps=int(fields["steps"]), batch=int(fields["batch_size"]))
    rt = model.runtime
    if offload == "blocks" and (rt.fp8_compute or rt.compile):
        raise WanMeterError(f"offload=auto needs to stream {blocks} blocks for {width}x{height}x{fields['frames']} "
                            "on this GPU, and fp8_compute/compile do not work with streamed blocks: turn them "
                            "off in WanMeter Model Loader, or lower the size.")
    if (rt.offload, rt.blocks_to_stream) != (offload, blocks):
        from dataclasses import replace

        model.set_runtime(replace(rt, offload=offload, blocks_to_stream=blocks))


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
NODE_DISPLAY_NAME_MAPPINGS = {"WanMeterSampler": "WanMeter Sampler"}
