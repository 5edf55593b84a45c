"""What the user (or the estimator's plan) asks of the runtime: device, offload, attention, dtype.

Kept as a small dataclass so the node, the CLI and the bench all describe a placement the same
way, and so the estimator engineer can map a `Plan` onto it one-to-one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import WanMeterError

OFFLOAD_MODES = ("none", "model", "blocks")

_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
    "fp32": torch.float32, "float32": torch.float32,
}


@dataclass
class RuntimeOptions:
    """How the DiT expert(s) are placed while sampling.

    device: "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:N".
    offload: "none" (every expert stays on the device), "model" (only the active expert is on
        the device; the other waits in CPU memory and they swap at the MoE boundary), "blocks"
        (as "model", and in addition the last `blocks_to_stream` transformer blocks of the
        active expert stream from pinned CPU memory, overlapped with compute).
    attention: "auto", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sage", "flash".
    compute_dtype: "bf16" / "fp16" / "fp32", or None to compute in the weights' dtype
        (bf16 when the weights are stored in fp8).
    record_stream: with "blocks", lets the allocator reuse streamed weights without a
        synchronisation per block (faster, slightly more memory).
    fp8_compute / compile / step_cache: speed paths of wanmeter.accel (apply_fast_paths), applied
        to each expert once it is on the device. step_cache is None or
        {"kind": "first_block" | "taylorseer" | "mag", "threshold": ...}. fp8_compute and compile
        are not available with offload="blocks" (streamed weights change device every step).
    pinned_swap: with "model"/"blocks", keep each expert's resident weights in page-locked CPU
        memory for the whole run, so an expert swap is one DMA copy in and no copy out (see
        wanmeter.runtime.placement). Costs all experts' bytes of pinned RAM; the planner turns it on
        when its RAM estimate fits (wanmeter.memplan).
    """

    device: str = "auto"
    offload: str = "none"
    blocks_to_stream: int = 0
    attention: str = "auto"
    compute_dtype: str | None = None
    record_stream: bool = False
    fp8_compute: bool = False
    compile: bool = False
    step_cache: dict | None = None
    pinned_swap: bool = False

    def validate(self) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise WanMeterError(
                f"Unknown offload mode {self.offload!r}. Use one of: {', '.join(OFFLOAD_MODES)}."
            )
        if self.offload == "blocks" and int(self.blocks_to_stream) < 1:
            raise WanMeterError(
                "offload='blocks' needs blocks_to_stream >= 1 (how many of the last transformer blocks "
                "stream from CPU memory); use offload='model' to stream none."
            )
        if self.offload != "blocks" and int(self.blocks_to_stream) != 0:
            raise WanMeterError(
                f"blocks_to_stream={self.blocks_to_stream} only applies with offload='blocks'; "
                "set offload='blocks' or blocks_to_stream=0."
            )
        if self.offload == "blocks" and (self.fp8_compute or self.compile):
            raise WanMeterError(
                "fp8_compute and compile cannot be combined with offload='blocks' (streamed weights move every "
                "step); use offload='model' or 'none', or turn them off."
            )
        if self.pinned_swap and self.offload == "none":
            raise WanMeterError(
                "pinned_swap only applies with offload='model' or 'blocks' (with 'none' nothing is swapped); "
                "turn it off or choose an offload mode."
            )
        if self.compute_dtype is not None and self.compute_dtype not in _DTYPES:
            raise WanMeterError(
                f"Unknown compute_dtype {self.compute_dtype!r}. Use bf16, fp16, fp32 or leave it empty."
            )

    def torch_device(self) -> torch.device:
        """The compute device; 'auto' picks CUDA when one is visible."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise WanMeterError(f"Unknown device {self.device!r}: use 'auto', 'cpu' or 'cuda'.") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise WanMeterError(
                f"device={self.device!r} but this torch build sees no CUDA GPU; use device='cpu' "
                "(slow) or install a CUDA build of torch."
            )
        return dev


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'bf16' -> torch.bfloat16 etc.; None stays None."""
    if name is None:
        return None
    try:
        return _DTYPES[name]
    except KeyError:
        raise WanMeterError(f"Unknown dtype {name!r}. Use bf16, fp16 or fp32.") from None
