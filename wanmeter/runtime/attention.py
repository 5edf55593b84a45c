"""Attention backend selection through diffusers' attention dispatcher.

We only translate our user-facing names into diffusers' `AttentionBackendName` values, check
that the kernel can run here, and call `model.set_attention_backend`. "auto" prefers cuDNN
SDPA on Hopper and newer (565-618 TF/s measured on an H200 vs 353-366 for flash SDPA, see
shared/reference/performance.md) and flash SDPA on Ampere/Ada, following the shared policy in
wanmeter.accel.attention_policy.
"""
from __future__ import annotations

import importlib.util

import torch

from ..attention_kernels import kernel, kernels
from ..errors import WanMeterError

# every kernel name of the registry (data/attention.json); aliases are accepted too
ATTENTION_CHOICES = tuple(kernels())


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def resolve_attention(name: str, device: torch.device) -> str:
    """A kernel name or alias -> the diffusers backend name to use on `device` (raises if unusable).
    Requirements come from the registry: cuda_only, package, needs_fp8."""
    k = kernel(name)   # WanMeterError listing the names
    if k.name == "auto":
        # one policy for the runtime, the estimator and the bench: wanmeter.accel.attention_policy
        from ..accel.attention_policy import best_attention_for

        chosen = best_attention_for(device)
        return "native" if chosen == "auto" else resolve_attention(chosen, device)
    if k.cuda_only and device.type != "cuda":
        raise WanMeterError(f"attention={name!r} needs an NVIDIA GPU; on {device.type} use attention='auto' or 'sdpa'.")
    if k.needs_fp8:
        from ..accel.lowbit_attention import lowbit_supported

        if not lowbit_supported(device):
            raise WanMeterError(
                f"attention={name!r} needs an NVIDIA GPU with fp8 tensor cores (Ada sm89 or Hopper sm90+) and "
                "Triton; use attention='auto' on this GPU.")
        return resolve_attention("auto", device)  # the backend for cross-attention and fallbacks
    if k.name == "flash":
        if _has_module("flash_attn"):
            return "flash"
        if _has_module("flash_attn_interface"):
            return "_flash_3"
        raise WanMeterError(
            "attention='flash' needs the flash-attn package (pip install flash-attn, >= 2.6.3) or a "
            "FlashAttention-3 build; install it or use attention='auto' (cuDNN/flash SDPA, no extra package).")
    if k.package and not _has_module(k.package):
        raise WanMeterError(f"attention={name!r} needs the {k.package} package ({k.doc}); install it or use "
                            "attention='auto'.")
    return k.diffusers or "native"


def apply_attention(model: torch.nn.Module, name: str, device: torch.device) -> str:
    """Set the attention backend of a diffusers model; returns the diffusers name applied.

    On CUDA the self-attention of Wan DiTs also gets one of our processors
    (wanmeter.accel.wan_attention): the 8-bit kernel for attention='8bit', otherwise the fused-
    rotary bf16 processor (same backend, fewer kernels). On other devices the stock processors
    stay (CPU runs are what the parity tests compare with diffusers and the official code).
    """
    from diffusers.utils import logging as dlogging

    device = torch.device(device)
    backend = resolve_attention(name, device)
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # silence "attention backends are experimental" on every call
    try:
        set_backend = getattr(model, "set_attention_backend", None)
        if set_backend is not None:
            set_backend(backend)
        else:  # a plain nn.Module built from diffusers' attention modules (the S2V transformer)
            from diffusers.models.modeling_utils import ModelMixin

            ModelMixin.set_attention_backend(model, backend)
    except (RuntimeError, ValueError, ImportError) as e:
        raise WanMeterError(
            f"attention={name!r} (diffusers backend {backend!r}) cannot run here: {e} "
            "Install the package it names or use attention='auto'."
        ) from e
    finally:
        dlogging.set_verbosity(level)
    from diffusers import WanTransformer3DModel

    if not isinstance(model, WanTransformer3DModel):
        # our processors (8-bit kernel, fused rotary) are written for diffusers' Wan DiT; others (the S2V
        # transformer) keep diffusers' stock processors with the chosen backend
        if kernel(name).needs_fp8:
            raise WanMeterError(f"attention={name!r} runs on T2V/I2V/TI2V models only; for this model use "
                                "attention='auto'.")
        return backend
    if hasattr(model, "blocks"):
        from ..accel.wan_attention import install_wan_attention, remove_wan_attention

        if device.type == "cuda":
            lowbit = kernel(name).needs_fp8
            install_wan_attention(model, "8bit" if lowbit else "fused_rope", device)
            if lowbit:
                return f"8bit+{backend}"
        else:
            remove_wan_attention(model)
    return backend
