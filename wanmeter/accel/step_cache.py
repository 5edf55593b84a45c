"""Step caching (skip most of a forward when it would barely change) through diffusers' hooks.

Why diffusers' hooks: First-Block Cache, TaylorSeer and MagCache are already implemented and
registered for WanTransformerBlock there; we only map one user knob onto their configs and
give the sampler the per-call context the hooks need.

The hooks keep state per *call name*: the sampler must run every forward inside
`denoise_context(model, "cond" | "uncond", step_index=i)` so the conditional and
unconditional passes are cached separately (a model without a cache gets a no-op context), and
call `reset_step_cache(model)` before a new video.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn

from ..errors import WanMeterError

CACHE_KINDS = ("none", "first_block", "taylorseer", "mag")

# First-Block Cache threshold: relative L1 change of the first block's residual under which the
# other blocks are skipped. 0.05-0.1 is the range its authors recommend for video DiTs.
DEFAULT_THRESHOLD = {"first_block": 0.08, "taylorseer": 4, "mag": 0.06}


def make_cache_config(kind: str, threshold: float | None = None, *, steps: int | None = None,
                      mag_ratios: list[float] | None = None) -> Any:
    """diffusers cache config for `kind` with the user's threshold.

    first_block: threshold = max relative change of the first block's residual (0.05-0.15).
    taylorseer: threshold = cache interval, the number of steps between full forwards (2-6);
        the first 3 steps always run in full.
    mag: threshold = MagCache accumulated-error threshold; needs `mag_ratios` calibrated for
        this checkpoint and `steps`.
    """
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if kind not in CACHE_KINDS or kind == "none":
        raise WanMeterError(f"Unknown step cache {kind!r}; use one of {', '.join(k for k in CACHE_KINDS if k != 'none')}.")
    t = DEFAULT_THRESHOLD[kind] if threshold is None else threshold
    if kind == "first_block":
        if not 0.0 < float(t) < 1.0:
            raise WanMeterError(f"first_block cache threshold must be in (0, 1) (got {t}); 0.05-0.15 is typical.")
        return FirstBlockCacheConfig(threshold=float(t))
    if kind == "taylorseer":
        if int(t) < 1 or int(t) != float(t):
            raise WanMeterError(f"taylorseer cache interval must be a whole number >= 1 (got {t}); 2-6 is typical.")
        # Lite mode: predict only the model output (proj_out) and skip every block on cached steps.
        # The default mode hooks modules named "...attn", which misses Wan's attn1/attn2, and full
        # per-block feature caching would hold 2 factors x 40 blocks x [N, 5120] per CFG branch
        # (~120 GB at 720p).
        return TaylorSeerCacheConfig(cache_interval=int(t), disable_cache_before_step=3, use_lite_mode=True)
    if mag_ratios is None or steps is None:
        raise WanMeterError("mag cache needs mag_ratios calibrated for this checkpoint and the step count; "
                            "use step cache 'first_block' or 'taylorseer', which need no calibration.")
    return MagCacheConfig(threshold=float(t), num_inference_steps=int(steps), mag_ratios=list(mag_ratios))


def enable_step_cache(model: nn.Module, kind: str, threshold: float | None = None, **kw: Any) -> Any:
    """Install a step cache on a diffusers WanTransformer3DModel; returns the config used."""
    if not hasattr(model, "enable_cache"):
        raise WanMeterError(f"{type(model).__name__} has no diffusers cache support; step caching needs a "
                            "diffusers WanTransformer3DModel.")
    if kind == "none":
        disable_step_cache(model)
        return None
    cfg = make_cache_config(kind, threshold, **kw)
    if model.is_cache_enabled:
        model.disable_cache()
    model.enable_cache(cfg)
    return cfg


def disable_step_cache(model: nn.Module) -> None:
    if getattr(model, "is_cache_enabled", False):
        model.disable_cache()


def reset_step_cache(model: nn.Module) -> None:
    """Forget cached residuals (call before each new video)."""
    if getattr(model, "is_cache_enabled", False):
        model._reset_stateful_cache()


@contextlib.contextmanager
def denoise_context(model: nn.Module, name: str, *, step_index: int | None = None,
                    num_inference_steps: int | None = None, timestep: Any = None) -> Iterator[None]:
    """The cache context diffusers' hooks need around one forward ("cond" or "uncond");
    a no-op when the model has no cache."""
    if not getattr(model, "is_cache_enabled", False):
        yield
        return
    with model.cache_context(name, step_index=step_index, num_inference_steps=num_inference_steps, timestep=timestep):
        yield
