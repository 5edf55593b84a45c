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

from ..errors import WanMeterError

ATTENTION_CHOICES = ("auto", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sage", "flash", "8bit")

# our name -> diffusers AttentionBackendName value
_DIFFUSERS_NAME = {
    "sdpa": "native",
    "sdpa_flash": "_native_flash",
    "sdpa_cudnn": "_native_cudnn",
    "sdpa_efficient": "_native_efficient",
    "sage": "sage",
    "flash": "flash",
}

_CUDA_ONLY = {"sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sage", "flash", "8bit"}


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def resolve_attention(name: str, device: torch.device) -> str:
    """Our backend name -> the diffusers backend name to use on `device` (raises if unusable)."""
    if name not in ATTENTION_CHOICES:
        raise WanMeterError(f"Unknown attention backend {name!r}. Use one of: {', '.join(ATTENTION_CHOICES)}.")
    if name == "auto":
        # one policy for the runtime, the estimator and the bench: wanmeter.accel.attention_policy
        from ..accel.attention_policy import best_attention_for

        name = best_attention_for(device)
        if name == "auto":  # defensive: never recurse
            return "native"
        return resolve_attention(name, device)
    if name in _CUDA_ONLY and device.type != "cuda":
        raise WanMeterError(
            f"attention={name!r} needs an NVIDIA GPU; on {device.type} use attention='auto' or 'sdpa'."
        )
    if name == "8bit":
        from ..accel.lowbit_attention import lowbit_supported

        if not lowbit_supported(device):
            raise WanMeterError(
                "attention='8bit' needs an NVIDIA GPU with fp8 tensor cores (Ada sm89 or Hopper sm90+) and Triton; "
                "use attention='auto' on this GPU."
            )
        return resolve_attention("auto", device)  # the backend for cross-attention and fallbacks
    if name == "sage" and not _has_module("sageattention"):
        raise WanMeterError(
            "attention='sage' needs the sageattention package (>= 2.1.1, built from source: "
            "https://github.com/thu-ml/SageAttention); install it or use attention='auto'."
        )
    if name == "flash":
        if _has_module("flash_attn"):
            return "flash"
        if _has_module("flash_attn_interface"):
            return "_flash_3"
        raise WanMeterError(
            "attention='flash' needs the flash-attn package (pip install flash-attn, >= 2.6.3) or a "
            "FlashAttention-3 build; install it or use attention='auto' (cuDNN/flash SDPA, no extra package)."
        )
    return _DIFFUSERS_NAME[name]


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
        model.set_attention_backend(backend)
    except (RuntimeError, ValueError, ImportError) as e:
        raise WanMeterError(
            f"attention={name!r} (diffusers backend {backend!r}) cannot run here: {e} "
            "Install the package it names or use attention='auto'."
        ) from e
    finally:
        dlogging.set_verbosity(level)
    if hasattr(model, "blocks"):
        from ..accel.wan_attention import install_wan_attention, remove_wan_attention

        if device.type == "cuda":
            install_wan_attention(model, "8bit" if name == "8bit" else "fused_rope", device)
            if name == "8bit":
                return f"8bit+{backend}"
        else:
            remove_wan_attention(model)
    return backend
