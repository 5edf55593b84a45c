"""How N GPUs split one generation: a CFG degree (1 or 2) times a Ulysses degree.

Pure Python so the estimator and the nodes can ask for the layout without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import WanMeterError

SCHEMES = ("auto", "cfg", "ulysses", "cfg_ulysses")


@dataclass(frozen=True)
class Layout:
    """cfg: 2 = cond and uncond forwards on different GPU groups; ulysses: sequence-parallel degree."""

    cfg: int = 1
    ulysses: int = 1

    @property
    def world(self) -> int:
        return self.cfg * self.ulysses

    @property
    def name(self) -> str:
        parts = ([f"cfg{self.cfg}"] if self.cfg > 1 else []) + ([f"ulysses{self.ulysses}"] if self.ulysses > 1 else [])
        return "x".join(parts) or "single"


def choose_layout(num_gpus: int, *, guidance: bool = True, heads: int = 40, tokens: int | None = None,
                  scheme: str = "auto") -> Layout:
    """The layout for `num_gpus`. 'auto' puts CFG first (no communication inside the forward,
    so it scales best) and Ulysses over the rest; without guidance only Ulysses can help.

    Ulysses needs the head count and the token count divisible by its degree (diffusers' equal
    split); a layout that breaks that raises with the GPU counts that work.
    """
    n = int(num_gpus)
    if n < 1:
        raise WanMeterError(f"num_gpus must be at least 1 (got {num_gpus}).")
    if scheme not in SCHEMES:
        raise WanMeterError(f"Unknown multi-GPU scheme {scheme!r}; use one of {', '.join(SCHEMES)}.")
    if n == 1:
        return Layout()
    if scheme == "cfg" or (scheme == "auto" and n == 2 and guidance):
        if not guidance:
            raise WanMeterError("The 'cfg' multi-GPU scheme needs guidance (cfg != 1); use scheme 'ulysses' instead.")
        if n != 2:
            raise WanMeterError(f"The 'cfg' scheme uses exactly 2 GPUs (got {n}); use 'cfg_ulysses' or 'auto' for {n}.")
        lay = Layout(cfg=2)
    elif scheme == "ulysses" or not guidance:
        lay = Layout(ulysses=n)
    else:  # cfg_ulysses, or auto with guidance and n > 2
        if n % 2:
            raise WanMeterError(f"CFG x Ulysses needs an even GPU count (got {n}); use scheme 'ulysses' or {n - 1} GPUs.")
        lay = Layout(cfg=2, ulysses=n // 2)
    u = lay.ulysses
    if u > 1:
        if heads % u:
            ok = [d for d in range(1, heads + 1) if heads % d == 0 and d <= 8]
            raise WanMeterError(f"Ulysses degree {u} must divide the {heads} attention heads; use a degree in {ok}.")
        if tokens is not None and tokens % u:
            raise WanMeterError(
                f"{tokens} video tokens do not split evenly over {u} GPUs; change the size/frames or the GPU count.")
    return lay
