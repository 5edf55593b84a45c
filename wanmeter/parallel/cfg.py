"""Classifier-free guidance over a CFG pair of GPU groups.

Each side runs one forward (cond on cfg rank 0, uncond on cfg rank 1) and the two predictions
are all-gathered, so every rank combines the same tensors in the same order as the single-GPU
loop: uncond + g * (cond - uncond), in float32.
"""
from __future__ import annotations

from typing import Any

import torch


def _forward(model: Any, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]


def guided_prediction(model: Any, x: torch.Tensor, t: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None,
                      guidance: float, cfg_group: Any = None, cfg_rank: int = 0) -> torch.Tensor:
    """The guided flow prediction (float32) on every rank.

    With cfg_group None both forwards run here (one after the other, like wanmeter.sampler).
    guidance == 1 skips the unconditional forward; then a CFG pair computes the same cond forward twice.
    """
    if guidance == 1.0 or neg is None:
        return _forward(model, x, t, pos).float()
    if cfg_group is None:
        cond = _forward(model, x, t, pos).float()
        uncond = _forward(model, x, t, neg).float()
        return uncond + guidance * (cond - uncond)
    import torch.distributed as dist

    local = _forward(model, x, t, pos if cfg_rank == 0 else neg).contiguous()
    both = [torch.empty_like(local) for _ in range(2)]
    dist.all_gather(both, local, group=cfg_group)
    cond, uncond = both[0].float(), both[1].float()
    return uncond + guidance * (cond - uncond)
