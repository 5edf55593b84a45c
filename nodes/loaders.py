"""Loader nodes: Wan2.2 DiT (one or two experts), umt5 text encoder, Wan VAE.

Thin: resolve the file in ComfyUI's model folders, make room in VRAM, call wanmeter.loader /
wanmeter.runtime, wrap the result in one of our custom types.
"""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


class WanMeterModelLoader:
    """Loads a Wan2.2 DiT; A14B variants need both experts (high-noise + low-noise files)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterModelLoader")

    RETURN_TYPES = (c.WANMETER_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded Wan2.2 model (both experts for A14B) with its offload and attention plan.",)
    FUNCTION = "load"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Load a Wan2.2 diffusion model (T2V-A14B, I2V-A14B, TI2V-5B) with precision, offload and attention settings."

    def load(self, model: str, weight_dtype: str, compute_dtype: str, offload: str, blocks_to_stream: int,
             attention: str, fp8_compute: bool = False, compile: bool = False,
             model_low_noise: str = c.NONE_CHOICE, prompt=None):
        from ..wanmeter.loader import inspect_dit

        c.check_prompt_parts(prompt)  # the VAE / text encoder picked with it belong to this model (headers)
        high_path = c.resolve_model("diffusion_models", model, what="diffusion model")
        info = inspect_dit(high_path)
        low_path = None
        experts = _experts(info.variant)
        if experts == 2:
            if c.is_none(model_low_noise):
                raise WanMeterError(
                    f"{model} is a {info.variant} high/low-noise expert: A14B needs both. Set model_low_noise "
                    f"to the low-noise file (e.g. {_low_noise_name(model)}) in models/diffusion_models."
                )
            low_path = c.resolve_model("diffusion_models", model_low_noise, what="low-noise model")
            low_info = inspect_dit(low_path)
            if low_info.variant != info.variant:
                raise WanMeterError(
                    f"model is {info.variant} but model_low_noise is {low_info.variant}. Pick the two experts "
                    "of the same model (both t2v or both i2v)."
                )
        elif not c.is_none(model_low_noise):
            raise WanMeterError(
                f"{model} is {info.variant}, a single model: set model_low_noise to 'none'."
            )
        if blocks_to_stream and offload not in ("blocks", "auto"):
            blocks_to_stream = 0

        c.free_comfy_memory()
        device = c.comfy_device()
        try:
            bundle = _load_bundle(info, high_path, low_path, weight_dtype=weight_dtype,
                                  compute_dtype=compute_dtype, offload=offload,
                                  blocks_to_stream=int(blocks_to_stream), attention=attention, device=device,
                                  fp8_compute=bool(fp8_compute), compile=bool(compile))
        except BaseException:
            # Nothing half-loaded may stay in VRAM: drop every reference we made, then empty the cache.
            bundle = None
            c.release_memory()
            raise
        plan = getattr(bundle, "wanmeter_plan_text", "")
        return {"ui": {"text": [plan]}, "result": (bundle,)} if plan else (bundle,)


def _experts(variant: str) -> int:
    from ..wanmeter.variants import variant as facts

    return int(facts(variant)["experts"])


def _low_noise_name(high: str) -> str:
    base = high.rsplit("/", 1)[-1]
    return base.replace("high_noise", "low_noise") if "high_noise" in base else "wan2.2_..._low_noise_....safetensors"


def _load_bundle(info, high_path: str, low_path: str | None, *, weight_dtype: str, compute_dtype: str,
                 offload: str, blocks_to_stream: int, attention: str, device, fp8_compute: bool = False,
                 compile: bool = False):
    """Engine calls: load the expert(s) straight to where they will live, wrap them in a
    WanModelBundle whose RuntimeOptions carry offload/attention/compute dtype and the speed paths.

    The bundle also carries what it was loaded from (wanmeter_source, a parallel_bundle.BundleSpec)
    so the sampler can rebuild it in each multi-GPU worker."""
    import torch

    from ..wanmeter.loader import check_expert_pair, inspect_dit, load_dit
    from ..wanmeter.runtime import RuntimeOptions
    from ..wanmeter.sampler import WanModelBundle
    from .parallel_bundle import BundleSpec

    auto = offload == "auto"
    plan_text = ""
    if auto:
        offload, blocks_to_stream, weight_dtype, plan_text = auto_plan(info, weight_dtype, attention, fp8_compute,
                                                                       compile, device)
    elif device.type == "cpu":
        offload, blocks_to_stream = "none", 0  # ComfyUI --cpu: everything stays in RAM
    load_device = device if offload == "none" else torch.device("cpu")
    experts = []
    kw = dict(weight_dtype=weight_dtype, compute_dtype=compute_dtype, device=load_device)
    if _facts(info.variant).get("audio"):  # S2V: its own module (diffusers has none), placed like the others
        from ..wanmeter.s2v.loader import load_s2v

        experts.append(load_s2v(info, **kw))
    else:
        experts.append(load_dit(info, **kw))
    if low_path is not None:
        low = inspect_dit(low_path)
        check_expert_pair(info, low)
        experts.append(load_dit(low, **kw))
    runtime = RuntimeOptions(device=str(device), offload=offload, blocks_to_stream=int(blocks_to_stream),
                             attention=attention, compute_dtype=compute_dtype, fp8_compute=fp8_compute,
                             compile=compile)
    runtime.validate()
    bundle = WanModelBundle.from_loaded(info.variant, *experts, runtime=runtime)
    bundle.wanmeter_auto_offload = auto and bool(plan_text)
    bundle.wanmeter_weight_dtype = weight_dtype
    # what the planner calls these weights (a GGUF quant, or the storage dtype): the sampler re-plans with them
    from ..wanmeter.memplan import source_of

    bundle.wanmeter_plan_weights = source_of(info) if info.layout == "gguf" else weight_dtype
    bundle.wanmeter_plan_text = plan_text
    bundle.wanmeter_source = BundleSpec(variant=info.variant, high_path=str(high_path),
                                        low_path=None if low_path is None else str(low_path),
                                        weight_dtype=weight_dtype, compute_dtype=compute_dtype, attention=attention,
                                        fp8_compute=fp8_compute, compile=compile)
    return bundle


def planner_gpu(gpu_key: str | None):
    """The GPU the planner plans for: the detected table entry, else (a GPU missing from the table) an
    H100's speeds with this card's free memory: fit decides, speed only orders the fitting plans."""
    from ..wanmeter.estimator import get_gpu

    return get_gpu(gpu_key or "h100_sxm")


def base_plan(weight_dtype: str, attention: str, fp8_compute: bool, compile: bool):
    """The user's loader widgets as the planner's starting Plan (what it keeps)."""
    from ..wanmeter.estimator.workload import Plan

    return Plan(weight_dtype=weight_dtype, attention=attention, fp8_compute=bool(fp8_compute), compile=bool(compile))


def auto_plan(info, weight_dtype: str, attention: str, fp8_compute: bool, compile: bool,
              device) -> tuple[str, int, str, str]:
    """offload=auto at load time: wanmeter.memplan.loader_plan with the free VRAM/RAM now (after
    ComfyUI unloaded its models). Returns (offload, blocks_to_stream, weight_dtype to load with, a
    one-line description; "" when there is no GPU to plan for: everything stays where it is)."""
    from ..wanmeter.memplan import apply_plan, free_memory, loader_plan, source_of

    vram, ram, gpu_key = free_memory(device)
    if vram is None:
        return "none", 0, weight_dtype, ""
    source = source_of(info)
    wanted = source if weight_dtype == "file" else weight_dtype   # file: the file's own precision
    chosen = loader_plan(info.variant, vram, ram, planner_gpu(gpu_key), source=source,
                         base=base_plan(wanted, attention, fp8_compute, compile))
    applied = apply_plan(chosen.plan)
    rt = applied.runtime_options(str(device))
    wd = applied.loader_kwargs().get("weight_dtype", weight_dtype)   # a GGUF file keeps its quantization
    return rt.offload, int(rt.blocks_to_stream), wd, f"auto plan: {chosen.description}"


def _facts(variant: str) -> dict:
    from ..wanmeter.variants import variant as facts

    return facts(variant)


class WanMeterTextEncoderLoader:
    """Loads the umt5-xxl encoder (ComfyUI's text_encoders files; tokenizer embedded in the file)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterTextEncoderLoader")

    RETURN_TYPES = (c.WANMETER_TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Load the umt5-xxl text encoder used by every Wan2.2 variant."

    def load(self, text_encoder: str, device: str, dtype: str, prompt=None):
        import torch

        from ..wanmeter.loader.text_encoder import load_text_encoder

        path = c.resolve_model("text_encoders", text_encoder, what="text encoder")
        c.check_prompt_parts(prompt)
        dev = c.comfy_device() if device == "gpu" else torch.device("cpu")
        if dev.type != "cpu":
            c.free_comfy_memory()
        try:
            enc = load_text_encoder(path, device=dev, dtype=_dtype(dtype))
        except BaseException:
            c.release_memory()
            raise
        return (enc,)


class WanMeterVAELoader:
    """Loads a Wan VAE: wan_2.1_vae for A14B/S2V, wan2.2_vae for TI2V-5B (detected from the file)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterVAELoader")

    RETURN_TYPES = (c.WANMETER_VAE,)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Load a Wan2.1 or Wan2.2 VAE."

    def load(self, vae: str, tiled: bool, dtype: str, prompt=None):
        from ..wanmeter.loader.vae_loader import load_vae

        path = c.resolve_model("vae", vae, what="VAE")
        c.check_prompt_parts(prompt)  # a VAE of the wrong family is refused before any weight loads
        try:
            v = load_vae(path, dtype=_dtype(dtype), device=c.comfy_device())
        except BaseException:
            c.release_memory()
            raise
        try:
            v.tiled_default = bool(tiled)
        except AttributeError:
            pass
        return (v,)


NODE_CLASS_MAPPINGS = {
    "WanMeterModelLoader": WanMeterModelLoader,
    "WanMeterTextEncoderLoader": WanMeterTextEncoderLoader,
    "WanMeterVAELoader": WanMeterVAELoader,
}
NODE_DISPLAY_NAME_MAPPINGS = c.display_names("WanMeterModelLoader", "WanMeterTextEncoderLoader", "WanMeterVAELoader")
