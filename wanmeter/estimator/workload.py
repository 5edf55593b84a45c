"""What is generated (Workload) and how it runs (Plan): the estimator's two inputs.

Kept as plain frozen dataclasses so the CLI, the HTTP route and the nodes build them from
settings without importing torch, and so suggest_fixes() can derive changed copies.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from ..attention_kernels import calibration_key, calibration_keys
from ..errors import WanMeterError
from ..variants import variant, variant_names

WEIGHT_DTYPES = ("bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2", "int8", "mxfp8", "nvfp4", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")
GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")
COMPUTE = ("bf16", "fp16", "fp8")
OFFLOAD = ("none", "model", "blocks")
# Plan.attention holds a kernel's calibration key; any name or alias of data/attention.json is accepted.
ATTENTION = calibration_keys()
TE_DTYPES = ("bf16", "fp16", "fp32", "fp8_e4m3fn")
VAE_DTYPES = ("bf16", "fp16", "fp32")
STEP_CACHES = ("none", "first_block", "taylorseer")
PARALLEL_SCHEMES = ("auto", "cfg", "ulysses", "cfg_ulysses")
RUNTIMES = ("wanmeter", "comfy_native", "kijai")  # estimator/runtimes.py models the other two   # wanmeter/parallel/layout.py SCHEMES

LIMITS = {"width": (64, 4096), "height": (64, 4096), "frames": (1, 1025), "steps": (1, 1000),
          "batch": (1, 64), "loras": (0, 32), "lora_rank": (1, 1024), "s2v_clips": (1, 100), "num_gpus": (1, 64)}


def _check_int(name: str, value: object) -> int:
    lo, hi = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise WanMeterError(f"{name} must be a whole number between {lo} and {hi}, got {value!r}.")
    if not lo <= int(value) <= hi:
        raise WanMeterError(f"{name}={value} is out of range: use {lo}..{hi}.")
    return int(value)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise WanMeterError(f"{name}={value!r} is not supported. Use one of: {', '.join(choices)}.")
    return str(value)


@dataclass(frozen=True)
class Workload:
    """One generation request. cfg has one guidance scale per expert; 1.0 (or less) means no CFG
    (one forward per step instead of two). Unset sizes, frames, steps and cfg take the variant's
    official defaults."""

    variant: str = "t2v_a14b"
    width: int | None = None        # None: the variant's first official size
    height: int | None = None
    frames: int | None = None       # None: the variant's default
    steps: int | None = None
    cfg: tuple[float, ...] | float | None = None
    batch: int = 1
    shift: float | None = None
    high_noise_steps: int | None = None
    boundary: float | None = None
    loras: int = 0
    lora_rank: int = 64
    s2v_clips: int = 1

    def __post_init__(self) -> None:
        if self.variant not in variant_names():
            raise WanMeterError(f"Unknown variant {self.variant!r}. Use one of: {', '.join(variant_names())}.")
        f = variant(self.variant)
        for n, d in (("width", f["sizes"][0][0]), ("height", f["sizes"][0][1]), ("frames", f["default_frames"]),
                     ("steps", f["default_steps"]), ("cfg", tuple(f["default_cfg"]))):
            if getattr(self, n) is None:
                object.__setattr__(self, n, d)
        for n in ("width", "height", "frames", "steps", "batch", "loras", "lora_rank", "s2v_clips"):
            object.__setattr__(self, n, _check_int(n, getattr(self, n)))
        mult = int(variant(self.variant)["size_multiple"])
        if self.width % mult or self.height % mult:
            raise WanMeterError(f"{self.width}x{self.height} is not a multiple of {mult} for {self.variant}: "
                                f"round to e.g. {self.width // mult * mult}x{self.height // mult * mult}.")
        if (self.frames - 1) % 4:
            if not (self.variant == "s2v_14b" and self.frames % 4 == 0):
                raise WanMeterError(f"frames={self.frames}: Wan needs 4k+1 frames (e.g. {(self.frames - 1) // 4 * 4 + 1}).")
        cfg = self.cfg if isinstance(self.cfg, (tuple, list)) else (self.cfg,)
        cfg = tuple(float(c) for c in cfg)
        if not cfg or any(c < 0 or c > 100 for c in cfg):
            raise WanMeterError(f"cfg={self.cfg!r}: give one guidance scale per expert between 0 and 100 (1.0 = off).")
        n_exp = int(variant(self.variant)["experts"])
        if len(cfg) == 1 and n_exp == 2:
            cfg = cfg * 2
        if len(cfg) != n_exp:
            raise WanMeterError(f"{self.variant} has {n_exp} expert(s): give {n_exp} cfg value(s), got {len(cfg)}.")
        object.__setattr__(self, "cfg", cfg)
        if self.high_noise_steps is not None and not 0 <= int(self.high_noise_steps) <= self.steps:
            raise WanMeterError(f"high_noise_steps={self.high_noise_steps} must be between 0 and steps={self.steps}.")
        if self.boundary is not None and not 0 <= float(self.boundary) <= 1:
            raise WanMeterError(f"boundary={self.boundary} must be between 0 and 1 (0 = the variant's default).")
        if self.shift is not None and not 0 < float(self.shift) <= 100:
            raise WanMeterError(f"shift={self.shift} must be in (0, 100].")

    @property
    def facts(self) -> dict:
        return variant(self.variant)

    def expert_steps(self) -> tuple[int, ...]:
        """Steps run by each expert. A14B: steps whose shifted timestep >= boundary*1000 go to the
        high-noise expert (sigmas = linspace(1, 0, N+1)[:-1], shifted s*x/(1+(s-1)*x))."""
        return _expert_steps(self.variant, self.steps, self.high_noise_steps, self.shift, self.boundary)

    def with_(self, **kw) -> "Workload":
        return replace(self, **kw)


_PLAN_COPIES: dict[tuple, "Plan"] = {}


@lru_cache(maxsize=1024)
def _expert_steps(var: str, steps: int, high_noise_steps: int | None, shift: float | None,
                  boundary: float | None) -> tuple[int, ...]:
    """Workload.expert_steps, memoized (the estimator asks for it several times per estimate)."""
    f = variant(var)
    if int(f["experts"]) == 1:
        return (steps,)
    if high_noise_steps is not None:
        high = int(high_noise_steps)
    else:
        s = float(shift if shift is not None else f["default_shift"])
        b = float(boundary if boundary else f["boundary"])
        high = 0
        for i in range(steps):
            x = 1.0 - i / steps
            if s * x / (1 + (s - 1) * x) >= b:
                high += 1
    return (high, steps - high)


@dataclass(frozen=True)
class Plan:
    """How the workload runs: storage precision, compute path, offload, kernels, devices."""

    weight_dtype: str = "bf16"
    compute: str = "bf16"
    offload: str = "none"
    blocks_to_stream: int = 0
    attention: str = "sdpa"
    text_encoder_device: str = "gpu"
    text_encoder_dtype: str = "bf16"
    text_encoder_unload: bool = True
    vae_tiled: bool = False
    vae_dtype: str = "bf16"
    num_gpus: int = 1
    lora_mode: str = "merged"
    budget_gib: float | None = None
    ram_gib: float | None = None
    fp8_compute: bool = False        # fp8 matmuls with rowwise scales (same as compute="fp8"; needs fp8 weights)
    compile: bool = False            # regional torch.compile of the transformer blocks
    step_cache: str = "none"         # "none" | "first_block" | "taylorseer"
    cache_skip_fraction: float = 0.0  # share of forwards the cache skips: user-set, not predicted (see docs)
    parallel_scheme: str = "auto"    # how num_gpus split the work (wanmeter/parallel/layout.py)
    shard_weights: bool = False      # FSDP: each GPU keeps 1/num_gpus of the weights
    runtime: str = "wanmeter"        # who runs the graph: "wanmeter" | "comfy_native" | "kijai" (estimator/runtimes.py)
    prefetch_blocks: int | None = None  # streamed blocks copied ahead (None: the runtime's own behaviour)
    fused_rotary: bool = True        # our fused-rotary self-attention processor (CUDA runtime since 2026-11-22);
    #                                  False re-estimates runs of diffusers' own processor (older saved runs)
    pinned_swap: bool = False        # offload model/blocks: experts parked in pinned RAM (RuntimeOptions.pinned_swap):
    #                                  swaps at the pinned link rate, no copy out (timing.expert_transfer_time)

    def __post_init__(self) -> None:
        _check_choice("weight_dtype", self.weight_dtype, WEIGHT_DTYPES)
        _check_choice("compute", self.compute, COMPUTE)
        for n in ("fp8_compute", "compile", "shard_weights", "fused_rotary", "pinned_swap"):
            if not isinstance(getattr(self, n), bool):
                raise WanMeterError(f"{n} must be true or false, got {getattr(self, n)!r}.")
        # compute="fp8" and fp8_compute=True are one switch; keep both spellings in step.
        if self.compute == "fp8" or self.fp8_compute:
            object.__setattr__(self, "compute", "fp8")
            object.__setattr__(self, "fp8_compute", True)
        _check_choice("runtime", self.runtime, RUNTIMES)
        pf = self.prefetch_blocks
        if pf is not None and (isinstance(pf, bool) or not isinstance(pf, int) or not 0 <= pf <= 64):
            raise WanMeterError(f"prefetch_blocks={pf!r} must be a whole number 0..64, or unset.")
        _check_choice("step_cache", self.step_cache, STEP_CACHES)
        _check_choice("parallel_scheme", self.parallel_scheme, PARALLEL_SCHEMES)
        v = self.cache_skip_fraction
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 0.95:
            raise WanMeterError(f"cache_skip_fraction={v!r} must be a number between 0 and 0.95 "
                                "(the share of forwards the step cache skips).")
        if self.step_cache == "none" and v:
            raise WanMeterError(f"cache_skip_fraction={v} needs a step cache: set step_cache to "
                                "'first_block' or 'taylorseer', or the fraction to 0.")
        _check_choice("offload", self.offload, OFFLOAD)
        object.__setattr__(self, "attention", calibration_key(str(self.attention)))
        _check_choice("text_encoder_device", self.text_encoder_device, ("gpu", "cpu"))
        _check_choice("text_encoder_dtype", self.text_encoder_dtype, TE_DTYPES)
        _check_choice("vae_dtype", self.vae_dtype, VAE_DTYPES)
        _check_choice("lora_mode", self.lora_mode, ("merged", "unmerged"))
        object.__setattr__(self, "num_gpus", _check_int("num_gpus", self.num_gpus))
        if isinstance(self.blocks_to_stream, bool) or not isinstance(self.blocks_to_stream, int) or self.blocks_to_stream < 0:
            raise WanMeterError(f"blocks_to_stream={self.blocks_to_stream!r} must be a whole number >= 0.")
        if self.offload != "blocks" and self.blocks_to_stream:
            object.__setattr__(self, "offload", "blocks")
        for n in ("budget_gib", "ram_gib"):
            v = getattr(self, n)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 4096):
                raise WanMeterError(f"{n}={v!r} must be a positive number of GiB (at most 4096), or unset.")

    @property
    def is_gguf(self) -> bool:
        return self.weight_dtype in GGUF_TYPES

    def with_(self, **kw) -> "Plan":
        """A changed copy. Memoized: the fix search derives the same few hundred plans for every GPU,
        and each copy re-runs the validation above (Plans are frozen, so sharing them is safe)."""
        try:
            key = (self, tuple(sorted(kw.items())))
            hit = _PLAN_COPIES.get(key)
        except TypeError:  # an unhashable value: no memo
            return replace(self, **kw)
        if hit is None:
            hit = replace(self, **kw)
            if len(_PLAN_COPIES) >= 8192:
                _PLAN_COPIES.clear()
            _PLAN_COPIES[key] = hit
        return hit

    def describe(self) -> str:
        parts = [] if self.runtime == "wanmeter" else [{"comfy_native": "ComfyUI native", "kijai": "kijai wrapper"}[self.runtime]]
        parts.append(self.weight_dtype + (" fp8-compute" if self.compute == "fp8" else ""))
        parts.append({"none": "no offload", "model": "model offload"}.get(
            self.offload, f"stream {self.blocks_to_stream} blocks"))
        parts.append(f"attn {self.attention}")
        if self.text_encoder_device == "cpu":
            parts.append("text enc. on CPU")
        if self.compile:
            parts.append("compiled")
        if self.step_cache != "none":
            parts.append(f"{self.step_cache} cache")
        if self.vae_tiled:
            parts.append("tiled VAE")
        if self.num_gpus > 1:
            parts.append(f"{self.num_gpus} GPUs" + (f" {self.parallel_scheme}" if self.parallel_scheme != "auto" else "")
                         + (" FSDP" if self.shard_weights else ""))
        return ", ".join(parts)
