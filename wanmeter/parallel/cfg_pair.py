"""CFG-parallel under the unchanged single-GPU loop.

wanmeter.sampler calls each expert twice per guided step: cond, then uncond. Wrapping the
expert's forward lets a CFG pair serve those two calls with one forward per rank: on the cond
call rank 0 computes cond and rank 1 uncond (it swaps in the negative embedding), the pair
all-gathers, returns cond and keeps uncond for the next call, which then costs nothing. The loop
combines them exactly as on one GPU.
"""
from __future__ import annotations

from typing import Any

import torch


class CfgPairForward:
    """Installed as `expert.forward` (an instance attribute wins over the class method, and it
    sits on top of diffusers' own forward hooks such as context parallelism)."""

    def __init__(self, model: Any, group: Any, cfg_rank: int, negative: torch.Tensor, guided: bool) -> None:
        self.inner = model.forward
        self.group, self.cfg_rank, self.negative, self.guided = group, cfg_rank, negative, guided
        self.pending: torch.Tensor | None = None

    def __call__(self, *args: Any, **kw: Any):
        if not self.guided:  # cfg == 1 for this expert: only cond calls come; both ranks compute it
            return self.inner(*args, **kw)
        if self.pending is not None:  # the uncond call of this step: already computed by the peer
            out, self.pending = self.pending, None
            return _wrap(out) if kw.get("return_dict", True) else (out,)
        if self.cfg_rank == 1:
            kw = dict(kw, encoder_hidden_states=self.negative.to(kw["encoder_hidden_states"].device,
                                                                 kw["encoder_hidden_states"].dtype))
        res = self.inner(*args, **kw)
        local = (res[0] if isinstance(res, tuple) else res.sample).contiguous()
        both = [torch.empty_like(local) for _ in range(2)]
        import torch.distributed as dist

        dist.all_gather(both, local, group=self.group)
        self.pending = both[1]
        return (both[0],) if isinstance(res, tuple) else _wrap(both[0])

    def reset(self) -> None:
        self.pending = None


def _wrap(x: torch.Tensor):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=x)


def install(model: Any, group: Any, cfg_rank: int, negative: torch.Tensor, guided: bool) -> CfgPairForward:
    """Wrap `model.forward` for a CFG pair; returns the wrapper (call .reset() between videos)."""
    w = CfgPairForward(model, group, cfg_rank, negative, guided)
    model.forward = w
    return w
