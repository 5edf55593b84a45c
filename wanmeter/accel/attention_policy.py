"""Which attention kernel to use on which GPU (a policy, not a dispatcher).

Why a pure function of (device name, compute capability): the runtime, the estimator and the
bench must agree on the kernel a GPU gets, and a pure function can be tested without a GPU.
Measured on an H200 (performance.md, bf16, head_dim 128): cuDNN SDPA 565-618 TF/s, flash SDPA
353-366, SageAttention 1.0.6 (Triton) 433-450. So on Hopper (sm90) and newer cuDNN wins and
sage is not worth its small accuracy cost. There we return plain "sdpa": PyTorch 2.11's own SDPA
already picks the cuDNN kernel on sm90 (seen in bench/profile_forward.py), while diffusers'
forced-cuDNN backend first copies q, k and v into another layout (measured +5 ms per block of
A14B at 1280x720 on an H100); on Ampere/Ada PyTorch's flash SDPA is the safe
default (cuDNN SDPA is not faster there and older cuDNN builds reject some shapes), and sage is
used only when the user asks for it and a diffusers-compatible build (>= 2.1.1) is installed.
The names returned are wanmeter.runtime.attention's user-facing names.
"""
from __future__ import annotations

import importlib.util
from importlib import metadata


def sage_available() -> bool:
    """A SageAttention that diffusers' "sage" backend accepts (>= 2.1.1; 1.0.x is Triton-only and not wired)."""
    if importlib.util.find_spec("sageattention") is None:
        return False
    try:
        ver = metadata.version("sageattention")
    except metadata.PackageNotFoundError:
        return False
    parts = [int(p) for p in ver.split(".")[:3] if p.isdigit()]
    return tuple(parts + [0] * (3 - len(parts))) >= (2, 1, 1)


def best_attention_backend(device_name: str, capability: tuple[int, int] | None, *,
                           want_sage: bool = False, sage_installed: bool | None = None,
                           cudnn_available: bool = True) -> str:
    """The attention backend for a device: "sdpa_cudnn", "sdpa_flash", "sage" or "sdpa".

    device_name: e.g. torch.cuda.get_device_name() or "cpu"; capability: (major, minor) or None
    for a non-CUDA device. want_sage: the user asked for SageAttention (used when installed,
    on any CUDA GPU of sm80+; otherwise the default policy applies).
    """
    if capability is None or device_name.lower().startswith("cpu"):
        return "sdpa"
    major, minor = capability
    if want_sage and (sage_available() if sage_installed is None else sage_installed) and major >= 8:
        return "sage"
    if major >= 9 and cudnn_available:
        return "sdpa"  # PyTorch's default picks cuDNN here, without diffusers' layout copies
    if major >= 8:
        return "sdpa_flash"
    return "sdpa"  # Turing and older: let PyTorch pick (memory-efficient / math)


def best_attention_for(device) -> str:
    """best_attention_backend for a torch device (reads its name and capability)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "sdpa"
    return best_attention_backend(torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device),
                                  cudnn_available=torch.backends.cudnn.is_available())
