"""What plan_for needs from the machine and the files: free VRAM/RAM now, and the files' precision.

Kept apart from auto.py (pure arithmetic) because these read the live device and the loader's
DiTInfo; the node's "auto" offload choice calls `free_memory()` and `source_of(info)`, then plan_for.
"""
from __future__ import annotations

from typing import Any

_SAFETENSORS = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}
_GGUF_TO_PLAN = {"Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K_M", "Q5_K_S": "Q5_K_M", "Q5_0": "Q5_K_M",
                 "Q5_1": "Q5_K_M", "Q4_K_M": "Q4_K_M"}


def source_of(info: Any) -> str:
    """The plan_for `source` of a DiTInfo: bf16/fp16/fp32/fp8_e4m3fn, or the GGUF type the estimator
    knows that is closest in bytes per weight (Q4_K_S, Q4_0, Q3_K and Q2_K files count as Q4_K_M)."""
    if getattr(info, "layout", "") == "gguf":
        from ..loader.gguf_loader import gguf_file_type

        return _GGUF_TO_PLAN.get(gguf_file_type(info.dtypes), "Q4_K_M")
    return _SAFETENSORS.get(str(info.dtype), "bf16")


def free_ram_bytes() -> int | None:
    """MemAvailable (Linux) or psutil's available memory; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform
        return None


def free_memory(device: int | str | None = None) -> tuple[int | None, int | None, str | None]:
    """(free VRAM bytes incl. what this process's allocator holds but does not use, free RAM bytes,
    the GPU table key of the device) now; VRAM and key are None without CUDA."""
    ram = free_ram_bytes()
    try:
        import torch
    except ImportError:
        return None, ram, None
    if not torch.cuda.is_available():
        return None, ram, None
    from ..estimator import detect_gpu_name

    dev = torch.device(device if device is not None else "cuda")
    free, _ = torch.cuda.mem_get_info(dev)
    cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    return int(free + cached), ram, detect_gpu_name(torch.cuda.get_device_name(dev))
