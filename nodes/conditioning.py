"""Conversion between the engine's text embeddings and ComfyUI's CONDITIONING.

ComfyUI's CONDITIONING is a list of [tensor [B, n, 4096], {extra}] pairs. The native umt5 path
(CLIPLoader type wan + CLIPTextEncode) gives n >= 512 with the padded positions zeroed, which is
the same content as the official embedding (trimmed to the prompt length, zero-padded to 512),
so our sampler accepts both and our text encoder's output works in native nodes.
"""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError

TEXT_LEN = 512


def to_conditioning(embeddings) -> list[list[Any]]:
    """[B, 512, D] embeddings -> ComfyUI CONDITIONING with one entry."""
    if embeddings.dim() == 2:
        embeddings = embeddings.unsqueeze(0)
    return [[embeddings, {}]]


def from_conditioning(cond: Any, *, name: str, text_len: int = TEXT_LEN):
    """ComfyUI CONDITIONING -> [B, text_len, D] tensor (first entry; trimmed or zero-padded).

    Several entries (ConditioningCombine) are not supported: Wan has one text stream, and
    silently dropping a prompt would be worse than saying so.
    """
    import torch

    if torch.is_tensor(cond):
        t = cond
    else:
        if not isinstance(cond, (list, tuple)) or not cond:
            raise WanMeterError(
                f"The {name} input is not a CONDITIONING. Connect WanMeter Text Encode or a native "
                "CLIPTextEncode with a umt5 (type wan) text encoder."
            )
        if len(cond) > 1:
            raise WanMeterError(
                f"The {name} conditioning has {len(cond)} entries (ConditioningCombine?). Wan uses one "
                "prompt per side: connect a single text-encode output."
            )
        entry = cond[0]
        t = entry[0] if isinstance(entry, (list, tuple)) else entry
        if not torch.is_tensor(t):
            raise WanMeterError(f"The {name} conditioning holds no tensor. Connect a text-encode output.")
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise WanMeterError(
            f"The {name} conditioning has shape {tuple(t.shape)}; Wan needs [batch, tokens, 4096] from a "
            "umt5-xxl encoder. Use WanMeter Text Encode or CLIPLoader with type 'wan'."
        )
    n = t.shape[1]
    if n > text_len:
        t = t[:, :text_len]
    elif n < text_len:
        pad = t.new_zeros(t.shape[0], text_len - n, t.shape[2])
        t = torch.cat([t, pad], dim=1)
    return t


def match_batch(t, batch: int, *, name: str):
    """Repeat a batch-1 embedding for batch_size videos; refuse other mismatches."""
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, -1, -1).contiguous()
    raise WanMeterError(
        f"The {name} conditioning has batch {t.shape[0]} but batch_size is {batch}. "
        "Encode one prompt, or set batch_size to the number of prompts."
    )
