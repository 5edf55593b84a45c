"""Wan LoRAs (ComfyUI / kijai / lightx2v / musubi / diffusers formats) on a diffusers Wan DiT.

Why through diffusers: `WanLoraLoaderMixin.lora_state_dict` already renames every common Wan
LoRA layout to diffusers module names and folds each `alpha` into the A/B matrices (alpha/rank
scaling). We only add the two ways of using the result:

- `merge_lora`: W += strength * B @ A (and bias += strength * diff_b) once, in place. Zero
  run-time cost, so it is the fast path (e.g. lightx2v's 4-step distillation LoRA), and it
  works with any later fp8 / compile fast path. Merge before `apply_fast_paths` and before
  fp8 weight storage.
- `attach_lora`: keeps the base weights and runs the LoRA beside them through diffusers'
  `load_lora_adapter` (PEFT). Needed only to switch LoRAs or strengths without reloading;
  requires the `peft` package (pure Python).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import WanMeterError

_OFFICIAL_ROOTS = ("blocks.", "head.", "text_embedding.", "time_embedding.", "time_projection.", "img_emb.")


def read_lora(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA file (.safetensors) or state dict -> tensors, keys as in the file."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.exists():
        raise WanMeterError(f"LoRA file {path} does not exist; put it in ComfyUI/models/loras and pick it again.")
    if path.suffix != ".safetensors":
        raise WanMeterError(f"{path.name}: only .safetensors LoRAs are supported; convert it to safetensors.")
    from safetensors.torch import load_file

    from ..loader.safetensors_io import read_header

    read_header(path)  # a damaged / foreign file -> one fix-naming error, not safetensors' raw one
    return load_file(str(path))


def lora_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported Wan LoRA layout -> diffusers names without the "transformer." prefix
    (e.g. "blocks.0.attn1.to_q.lora_A.weight"), alpha already folded into A/B."""
    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

    # copies: diffusers' converter scales some A/B tensors in place (it would alter the caller's dict)
    sd = {k: v.clone() for k, v in state.items()}
    if not sd:
        raise WanMeterError("The LoRA is empty; pick a Wan2.1/2.2 LoRA file.")
    # official key names without ComfyUI's "diffusion_model." prefix (some kijai exports)
    if all(k.startswith(_OFFICIAL_ROOTS) for k in sd) and any(".lora_" in k or k.endswith(".alpha") for k in sd):
        if any(".self_attn." in k or ".cross_attn." in k or ".ffn." in k for k in sd):
            sd = {f"diffusion_model.{k}": v for k, v in sd.items()}
    try:
        out = WanLoraLoaderMixin.lora_state_dict(sd)
    except (ValueError, KeyError) as e:
        raise WanMeterError(f"This LoRA's keys are not a Wan LoRA layout diffusers knows ({e}); "
                            "use a Wan2.1/2.2 LoRA (ComfyUI, kijai, lightx2v, musubi or diffusers format).") from e
    conv = {k.removeprefix("transformer."): v for k, v in out.items()}
    if not any(".lora_A." in k for k in conv):
        raise WanMeterError("No LoRA matrices (lora_A/lora_down) found; this file is not a LoRA for the Wan DiT.")
    return conv


def _pairs(conv: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    mods: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in conv.items():
        for part in ("lora_A.weight", "lora_B.weight", "lora_B.bias"):
            if k.endswith("." + part):
                mods.setdefault(k[: -len(part) - 1], {})[part] = v
                break
    return mods


def merge_lora(model: nn.Module, lora: str | Path | Mapping[str, torch.Tensor], strength: float = 1.0) -> list[str]:
    """Merge a LoRA into a diffusers WanTransformer3DModel's weights in place; returns the module names changed.

    The model must hold float weights (bf16/fp16/fp32): merge before fp8 compute or fp8 storage.
    """
    state = read_lora(lora)
    conv = lora_to_diffusers(state)
    changed = []
    missing = []
    with torch.no_grad():
        for name, parts in _pairs(conv).items():
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                missing.append(name)
                continue
            w = getattr(mod, "weight", None)
            if w is None or w.dtype not in (torch.bfloat16, torch.float16, torch.float32):
                raise WanMeterError(
                    f"Cannot merge the LoRA into {name} ({type(mod).__name__}, weights {None if w is None else w.dtype}): "
                    "merge LoRAs into a bf16/fp16 model before enabling fp8 compute or fp8 weight storage."
                )
            a, b = parts.get("lora_A.weight"), parts.get("lora_B.weight")
            if a is not None and b is not None:
                if (b.shape[0], a.shape[1]) != tuple(w.shape):
                    raise WanMeterError(
                        f"LoRA for {name} is {b.shape[0]}x{a.shape[1]} but the layer is {tuple(w.shape)[0]}x{tuple(w.shape)[1]}: "
                        "this LoRA was trained for another Wan model size (5B vs 14B); pick a matching LoRA."
                    )
                delta = (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)) * float(strength)
                w.copy_((w.float() + delta).to(w.dtype))
            bias = parts.get("lora_B.bias")
            if bias is not None and getattr(mod, "bias", None) is not None:
                mod.bias.copy_((mod.bias.float() + float(strength) * bias.to(mod.bias.device, torch.float32)).to(mod.bias.dtype))
            changed.append(name)
    if missing and not changed:
        raise WanMeterError(
            f"None of this LoRA's {len(missing)} layers exist in the model (first: {missing[0]}); it is for another "
            "model family. Pick a Wan2.1/2.2 LoRA."
        )
    return changed


def attach_lora(model: nn.Module, lora: str | Path | Mapping[str, torch.Tensor], *, name: str = "lora",
                strength: float = 1.0) -> None:
    """Apply a LoRA at run time (unmerged) through diffusers' PEFT integration."""
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise WanMeterError("Run-time (unmerged) LoRAs need the peft package: pip install peft; "
                            "or merge the LoRA into the weights instead.") from e
    conv = lora_to_diffusers(read_lora(lora))
    model.load_lora_adapter(conv, adapter_name=name, prefix=None)
    model.set_adapters([name], weights=[float(strength)])
