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
        models = c.list_models("diffusion_models")
        return {
            "required": {
                "model": (models, {"tooltip": "Wan2.2 diffusion model from models/diffusion_models "
                                   "(.safetensors, ComfyUI fp8_scaled, or .gguf). For A14B pick the "
                                   "high-noise expert here."}),
                "weight_dtype": (c.WEIGHT_DTYPES, {"default": "bf16", "tooltip": "How weights are stored in "
                                 "memory. fp8 halves weight memory (dequantized per layer to the compute "
                                 "dtype); bf16 is the reference quality."}),
                "compute_dtype": (c.COMPUTE_DTYPES, {"default": "bf16", "tooltip": "Precision of the "
                                  "matmuls and attention. bf16 is what Wan2.2 was trained in."}),
                "offload": (c.OFFLOAD_MODES, {"default": "auto", "tooltip": "none: everything in VRAM. "
                            "model: each expert moves to the GPU only while it runs. blocks: stream "
                            "`blocks_to_stream` transformer blocks from CPU RAM each step. auto: the fastest "
                            "plan that fits the free VRAM and RAM (may also store weights in fp8); the "
                            "sampler re-plans for the actual video size."}),
                "blocks_to_stream": ("INT", {"default": 0, "min": 0, "max": 40, "step": 1,
                                     "tooltip": "With offload=blocks: how many of the DiT blocks live in "
                                     "CPU RAM and are copied in each step (more = less VRAM, slower). "
                                     "Ignored by other offload modes."}),
                "attention": (c.ATTENTION_MODES, {"default": "auto", "tooltip": "Attention kernel. auto: "
                              "the fastest available (cuDNN/flash SDPA on recent NVIDIA GPUs). sage and "
                              "flash need their packages installed. 8bit: WanMeter's own int8/fp8 attention "
                              "kernel (Triton) for Ada/Hopper GPUs, ~1.35x faster than cuDNN at 720p, output "
                              "cosine >= 0.999 vs bf16 attention; errors on other GPUs."}),
                "fp8_compute": ("BOOLEAN", {"default": False, "tooltip": "fp8 matmuls in the transformer "
                                "blocks on Hopper/Ada GPUs (H100, L40S, RTX 40xx): measured 1.05-1.12x faster "
                                "alone, small quality cost. Best with fp8 weights. Errors on GPUs without fp8; "
                                "not with offload=blocks."}),
                "compile": ("BOOLEAN", {"default": False, "tooltip": "Regional torch.compile of the "
                            "transformer blocks: measured 1.07-1.18x faster. The first run compiles for about "
                            "a minute; not with offload=blocks."}),
            },
            "optional": {
                "model_low_noise": ([c.NONE_CHOICE] + models, {"default": c.NONE_CHOICE,
                                    "tooltip": "A14B only: the low-noise expert file (e.g. "
                                    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors). Leave 'none' for "
                                    "TI2V-5B and S2V."}),
            },
            "hidden": {"prompt": "PROMPT"},
        }

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

    if info.variant == "s2v_14b":  # no diffusers S2V model: the S2V loader, whole model on the device
        from ..wanmeter.s2v.loader import load_s2v

        return load_s2v(info, weight_dtype=weight_dtype, compute_dtype=compute_dtype, device=device)
    auto = offload == "auto"
    plan_text = ""
    if device.type == "cpu":
        offload, blocks_to_stream = "none", 0  # ComfyUI --cpu: everything stays in RAM
    elif auto:
        offload, blocks_to_stream, weight_dtype, plan_text = auto_plan(info, weight_dtype, attention, device)
    load_device = device if offload == "none" else torch.device("cpu")
    experts = []
    kw = dict(weight_dtype=weight_dtype, compute_dtype=compute_dtype, device=load_device)
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
    bundle.wanmeter_auto_offload = auto and device.type != "cpu"
    bundle.wanmeter_weight_dtype = weight_dtype
    bundle.wanmeter_plan_text = plan_text
    bundle.wanmeter_source = BundleSpec(variant=info.variant, high_path=str(high_path),
                                        low_path=None if low_path is None else str(low_path),
                                        weight_dtype=weight_dtype, compute_dtype=compute_dtype, attention=attention,
                                        fp8_compute=fp8_compute, compile=compile)
    return bundle


def auto_plan(info, weight_dtype: str, attention: str, device) -> tuple[str, int, str, str]:
    """offload=auto at load time: wanmeter.memplan.plan_for at the variant's default size, with the
    free VRAM/RAM now (after ComfyUI unloaded its models) and the detected GPU.

    Returns (offload, blocks_to_stream, weight_dtype to load with, one-line description). A GPU
    missing from the table falls back to the estimate adapter's conservative rule."""
    from ..wanmeter.estimator.workload import Plan, Workload
    from ..wanmeter.memplan import apply_plan, free_memory, plan_for, source_of
    from . import estimate_adapter as ea

    f = _facts(info.variant)
    w, h = f["sizes"][0]
    vram, ram, gpu_key = free_memory(device)
    if vram is None or gpu_key is None:
        off, blocks = ea.auto_offload(info.variant, weight_dtype, width=w, height=h,
                                      frames=int(f["default_frames"]), steps=int(f["default_steps"]))
        return off, blocks, weight_dtype, f"offload auto: {off}" + (f", stream {blocks} blocks" if blocks else "")
    source = source_of(info)
    base = Plan(weight_dtype=weight_dtype if weight_dtype in ("bf16", "fp16", "fp32", "fp8_e4m3fn") else source)
    # The default size first; if nothing fits it, the smallest official size (the user may sample
    # smaller; the sampler re-plans for the real size). Still nothing: the planner's error.
    smallest = min(f["sizes"], key=lambda s: s[0] * s[1])
    for i, (w, h) in enumerate([(w, h), tuple(smallest)]):
        work = Workload(variant=info.variant, width=int(w), height=int(h), frames=int(f["default_frames"]),
                        steps=int(f["default_steps"]), cfg=tuple(float(x) for x in f["default_cfg"]))
        try:
            chosen = plan_for(work, vram, ram, gpu_key, source=source, base=base)
            break
        except WanMeterError:
            if i == 1:
                raise
    applied = apply_plan(chosen.plan)
    rt = applied.runtime_options(str(device))
    wd = applied.loader_kwargs().get("weight_dtype", weight_dtype)
    return rt.offload, int(rt.blocks_to_stream), wd, f"auto plan ({w}x{h}, {f['default_frames']} frames): {chosen.description}"


def _facts(variant: str) -> dict:
    from ..wanmeter.variants import variant as facts

    return facts(variant)


class WanMeterTextEncoderLoader:
    """Loads the umt5-xxl encoder (ComfyUI's text_encoders files; tokenizer embedded in the file)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "text_encoder": (c.list_models("text_encoders"), {"tooltip": "umt5-xxl encoder from "
                                 "models/text_encoders, e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors."}),
                "device": (c.TEXT_ENCODER_DEVICES, {"default": "gpu", "tooltip": "gpu: fast, needs ~6-11 GB "
                           "VRAM while encoding (freed before sampling). cpu: saves that VRAM, takes seconds "
                           "to minutes per prompt."}),
                "dtype": (c.TEXT_ENCODER_DTYPES, {"default": "bf16", "tooltip": "Compute precision; bf16 "
                          "matches the official code."}),
            },
            "hidden": {"prompt": "PROMPT"},
        }

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
        return {
            "required": {
                "vae": (c.list_models("vae"), {"tooltip": "wan_2.1_vae.safetensors for A14B and S2V, "
                        "wan2.2_vae.safetensors for TI2V-5B."}),
                "tiled": ("BOOLEAN", {"default": False, "tooltip": "Default for WanMeter VAE Decode set to "
                          "'auto': decode in spatial tiles (several times less VRAM, about 2x slower)."}),
                "dtype": (c.VAE_DTYPES, {"default": "bf16", "tooltip": "VAE precision. The official code "
                          "uses fp32 (twice the memory); bf16 halves it (quality not yet compared on real weights)."}),
            },
            "hidden": {"prompt": "PROMPT"},
        }

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
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanMeterModelLoader": "WanMeter Model Loader (Wan2.2)",
    "WanMeterTextEncoderLoader": "WanMeter Text Encoder Loader (umt5)",
    "WanMeterVAELoader": "WanMeter VAE Loader",
}
