"""Load an S2V-14B checkpoint (official names, ComfyUI repackaged, fp8_scaled) into WanS2VTransformer.

Same discipline as the DiT loader (wanmeter.loader.load_dit): headers first (inspect_dit), the
module built on the meta device, every tensor read one at a time (fp8_scaled dequantized by the
shared iterator), renamed with the explicit S2V key map, cast and placed; the load is strict:
all official keys (1260 for the real model) must map to a parameter and every parameter must be
filled. Returns the loader's LoadedDiT so the model-loader node treats S2V like the others.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import WanMeterError
from .config import S2VConfig
from .keys import map_keys
from .model import WanS2VTransformer

# Same float32 islands diffusers keeps for WanTransformer3DModel (_keep_in_fp32_modules).
KEEP_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
_AUX = (".scale_weight", ".scale_input", ".scaled_fp8")


def build_empty_s2v(config: S2VConfig) -> WanS2VTransformer:
    """WanS2VTransformer with parameters on the meta device (no memory, no init)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return WanS2VTransformer(config)


def _final_dtype(name: str, compute: torch.dtype) -> torch.dtype:
    if compute != torch.float32 and any(m in name.split(".") for m in KEEP_FP32):
        return torch.float32
    return compute


def load_s2v(path: Any, *, weight_dtype: str | torch.dtype = "bf16", compute_dtype: str | torch.dtype | None = None,
             device: str | torch.device = "cpu"):
    """Load an S2V-14B file/folder (or a DiTInfo from inspect_dit) -> wanmeter.loader.LoadedDiT.

    weight_dtype: bf16 | fp16 | fp32 | fp8_e4m3fn | fp8_e5m2 (fp8 = storage only: the block
    linears stay fp8 and are upcast per layer by diffusers' layerwise-casting hook).
    """
    from ..loader.dit_inspect import DiTInfo, inspect_dit
    from ..loader.dit_loader import _FP8, LoadedDiT, _cast, _set_tensor, iter_official_tensors, parse_dtype

    info = path if isinstance(path, DiTInfo) else inspect_dit(path)
    if info.variant != "s2v_14b":
        raise WanMeterError(f"{info.path.name} is Wan2.2 {info.variant}, not S2V-14B. Load it with the regular "
                            "model loader (load_dit), or pick wan2.2_s2v_14B_*.safetensors.")
    if info.keys_format != "official":
        raise WanMeterError(f"{info.path.name} uses diffusers key names; no diffusers S2V format exists. "
                            "Use the official or ComfyUI S2V release (wan2.2_s2v_14B_*.safetensors).")
    storage = parse_dtype(weight_dtype)
    compute = parse_dtype(compute_dtype, what="compute_dtype") if compute_dtype is not None else (
        torch.bfloat16 if storage in _FP8 else storage)
    if compute in _FP8:
        raise WanMeterError("compute_dtype cannot be fp8 (fp8 is a storage format here). Use bf16 or fp16.")

    official = [k for k in info.tensors if not (k == "scaled_fp8" or k.endswith(_AUX))]
    config = S2VConfig.from_shapes({k: info.tensors[k].shape for k in official})
    model = build_empty_s2v(config)
    params = dict(model.named_parameters())
    ours, unknown = map_keys(official)
    missing = sorted(set(params) - set(ours))
    unexpected = unknown + sorted(ours[n] for n in set(ours) - set(params))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise WanMeterError(f"{info.path.name} does not match the Wan2.2 S2V-14B transformer: {'; '.join(parts)}. "
                            "The file is incomplete or modified: download wan2.2_s2v_14B_*.safetensors again.")
    to_ours = {o: n for n, o in ours.items()}
    dev = torch.device(device)
    for key, t in iter_official_tensors(info, device="cpu"):
        name = to_ours[key]
        meta = params[name]
        if tuple(t.shape) != tuple(meta.shape):
            raise WanMeterError(f"{info.path.name}: tensor {key} has shape {list(t.shape)}, expected {list(meta.shape)}. "
                                "The file is corrupt or mixed: download it again.")
        want = _final_dtype(name, compute)
        _set_tensor(model, name, (_cast(t, want) if t.dtype != want else t).to(dev))
        del t
    if storage != compute:
        _apply_fp8_storage(model, storage, compute)
    model.eval()
    model.requires_grad_(False)
    return LoadedDiT(model=model, info=info, weight_dtype=storage, compute_dtype=compute)


def _apply_fp8_storage(model: WanS2VTransformer, storage: torch.dtype, compute: torch.dtype) -> None:
    """Store the block / injector linears in fp8 and upcast per layer (diffusers layerwise casting)."""
    from diffusers.hooks import apply_layerwise_casting

    from ..loader.dit_loader import _cast

    for mod in list(model.blocks) + list(model.audio_injector.injector):
        for sub in mod.modules():
            if isinstance(sub, torch.nn.Linear):
                sub.weight.data = _cast(sub.weight.data, storage)
        apply_layerwise_casting(mod, storage_dtype=storage, compute_dtype=compute,
                                skip_modules_pattern=("norm", "scale_shift_table"))


def s2v_config_of(model: WanS2VTransformer) -> S2VConfig:
    return model.config


def load_s2v_state_dict(sd: dict[str, torch.Tensor], *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> WanS2VTransformer:
    """Build a WanS2VTransformer from an in-memory official state dict (tests, tools). Strict."""
    from ..loader.fp8_scaled import dequantize_scaled_fp8, is_scaled_fp8

    if is_scaled_fp8(sd.keys()):
        sd = dequantize_scaled_fp8(sd, dtype=torch.float32)
    config = S2VConfig.from_shapes({k: v.shape for k, v in sd.items()})
    ours, unknown = map_keys(sd)
    if unknown:
        raise WanMeterError(f"unexpected S2V tensors: {unknown[:3]}")
    model = WanS2VTransformer(config)
    model.load_state_dict({n: sd[o] for n, o in ours.items()}, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
