"""int8 weight-only storage through torchao (optional: only where torchao is installed).

Why: int8 weights halve bf16 memory like fp8 storage, and on GPUs without fp8 support (Ampere:
RTX 3090, A100) torchao's int8 weight-only matmul is the fast way to use them. torchao pins
torch versions, so WanMeter never requires it; without it this raises a message naming the
install command.
"""
from __future__ import annotations

import importlib.util

from ..errors import WanMeterError


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def quantize_int8_weight_only(model):
    """Quantize the transformer blocks' linears of a diffusers model to int8 weight-only, in place.

    Embeddings, norms and the output head stay as they are (diffusers' layerwise-casting skip
    list for Wan: patch_embedding, condition_embedder, norms).
    """
    if not torchao_available():
        raise WanMeterError("int8 weights need torchao, which is not installed: pip install torchao "
                            "(pick the build matching your torch version), or use fp8 / a GGUF file instead.")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_  # type: ignore[import-not-found]
    import torch

    def in_blocks(module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.")

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=in_blocks)
    return model
