"""Wan LoRAs on a diffusers Wan DiT: every common key layout, merged or at run time, all-or-nothing.

Layouts read (each seen in files people download for Wan2.1/2.2):
- ComfyUI / kijai / lightx2v: `diffusion_model.blocks.0.self_attn.q.lora_down.weight` (or
  `lora_A` / `lora_B`), `.alpha`, `.diff` (a full weight difference, e.g. norms and the head in
  lightx2v's distill LoRAs), `.diff_b` (bias), kijai's `.diff_m` (the modulation table); with or
  without the `diffusion_model.` / `model.diffusion_model.` prefix.
- diffusers / PEFT: `transformer.blocks.0.attn1.to_q.lora_A.weight`, `lora_B.bias`,
  `base_model.model.` and `.default.` from PEFT saves.
- musubi-tuner / Fun: `lora_unet_blocks_0_self_attn_q.lora_down.weight` (underscored names).
Everything is first turned into one form in the *official* key space (the names of the Wan2.2
checkpoint), resolved against the model's own parameters through diffusers' key converter
(wanmeter.loader.dit_keys), and checked as a whole before any weight is touched:

- `merge_lora`: W += strength * (alpha / rank) * up @ down, W += strength * diff,
  bias += strength * diff_b (ComfyUI's semantics), in place. Zero run-time cost; merge before
  fp8 storage / fp8 compute. A failed merge leaves the model exactly as it was: every pair is
  validated first (module exists, float weights, shapes, ranks, finite values), and if applying
  still fails (out of memory, interrupt) the weights already changed are restored from copies.
- `merge_loras_atomic`: several (model, LoRA, strength) merges validated together, then applied.
- `attach_lora`: keeps the base weights and runs the LoRA beside them through diffusers'
  `load_lora_adapter` (PEFT); the same normalized pairs, so it equals the merge.

A LoRA made for another model family (SD/SDXL, Flux, HunyuanVideo, LTX, ...) or another Wan
size (1.3B / 5B / 14B) is refused with its name.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import WanMeterError

_FLOAT = (torch.bfloat16, torch.float16, torch.float32)
# suffix -> part name (longest first so ".lora_B.bias" is not read as something else)
_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_B.bias", "diff_b"),
    (".lora_down", "down"), (".lora_up", "up"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff_m", "diff_m"), (".diff", "diff"),
)
_UNSUPPORTED = {".dora_scale": "a DoRA LoRA (dora_scale keys)", ".lora_mid.weight": "a LoCon/LyCORIS LoRA (lora_mid keys)",
                ".hada_w1_a": "a LoHa LoRA (hada_ keys)", ".lokr_w1": "a LoKr LoRA (lokr_ keys)"}
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.", "pipe.dit.",
             "diffusion.model.")
_WAN_SIZES = {1536: "Wan2.1 1.3B", 3072: "Wan2.2 TI2V-5B", 5120: "Wan 14B (Wan2.1 14B / Wan2.2 A14B / S2V)"}


def read_lora(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA file (.safetensors) or state dict -> tensors, keys as in the file."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.exists():
        raise WanMeterError(f"LoRA file {path} does not exist; put it in ComfyUI/models/loras and pick it again.")
    if path.suffix != ".safetensors":
        raise WanMeterError(f"{path.name}: only .safetensors LoRAs are supported; convert it to safetensors.")
    from safetensors.torch import load_file

    from ..loader.safetensors_io import read_header

    read_header(path)  # a damaged / deeply nested / foreign header -> one fix-naming error
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        raise WanMeterError(f"LoRA {path.name} is not a readable safetensors file ({type(e).__name__}: {e}). "
                            "It is truncated or in another format: download it again.") from None


def lora_expert_hint(name: str | Path) -> str | None:
    """'high' / 'low' when a LoRA file name says which A14B expert it is for (lightx2v's
    `..._HIGH_fp16`, kijai's `..._high_noise_...`), else None. A hint from the name only."""
    tokens = set(re.split(r"[^a-z0-9]+", Path(str(name)).name.lower()))
    high, low = "high" in tokens or "highnoise" in tokens, "low" in tokens or "lownoise" in tokens
    return "high" if high and not low else "low" if low and not high else None


# --- one normalized form ---------------------------------------------------------------------

@dataclass
class _Pair:
    """What a LoRA changes in one official parameter group (a linear, a norm, a modulation table)."""
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)


@dataclass
class _Change:
    """A validated change: the parameter (diffusers name) and its delta factors, nothing applied yet."""
    name: str
    param: torch.Tensor
    down: torch.Tensor | None = None   # [r, in], alpha/rank and strength folded in
    up: torch.Tensor | None = None     # [out, r]
    full: torch.Tensor | None = None   # a full delta (diff / diff_b / diff_m), strength folded in


@dataclass
class LoraMergePlan:
    """A LoRA validated against one model: what `apply_merge` will change. Holds no copy of the model."""
    model: nn.Module
    changes: list[_Change]
    source: str
    skipped: list[str]

    @property
    def modules(self) -> list[str]:
        return sorted({c.name.rsplit(".", 1)[0] for c in self.changes})


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def describe_lora_family(keys: Iterable[str]) -> str | None:
    """The model family a non-Wan LoRA was made for, from its key names (None if not recognised)."""
    ks = list(keys)
    s = " ".join(ks[:4000])
    if "lora_te" in s or "text_model.encoder" in s or "lora_te1_" in s:
        if "lora_unet_" not in s:
            return "a text-encoder LoRA (CLIP lora_te keys)"
    if "input_blocks" in s or "down_blocks" in s or "output_blocks" in s or "up_blocks" in s:
        return "a Stable Diffusion / SDXL LoRA (UNet down_blocks / input_blocks keys)"
    if "double_blocks" in s or "single_blocks" in s or "single_transformer_blocks" in s:
        if "txt_attn" in s and "img_mod" in s and "single_blocks" not in s:
            return "a HunyuanVideo LoRA (double_blocks keys)"
        return "a Flux (or HunyuanVideo) LoRA (double_blocks / single_blocks keys)"
    if "joint_blocks" in s:
        return "a Stable Diffusion 3 LoRA (joint_blocks keys)"
    if "transformer_blocks" in s:
        return "a LoRA for a DiT of another family (transformer_blocks keys: LTX-Video, Qwen-Image, Flux diffusers, CogVideoX, ...)"
    if "vace_blocks" in s and "blocks." not in s.replace("vace_blocks.", ""):
        return "a Wan VACE LoRA (vace_blocks keys), which WanMeter does not run"
    return None


def _normalize(state: Mapping[str, torch.Tensor], lookup: "_Lookup", source: str) -> tuple[dict[str, _Pair], list[str]]:
    """{official parameter group: _Pair} and the keys that resolve to nothing in this model."""
    groups: dict[str, _Pair] = {}
    unknown: list[str] = []
    for key, value in state.items():
        for bad, what in _UNSUPPORTED.items():
            if bad in key:
                raise WanMeterError(f"LoRA {source} is {what}, which WanMeter does not merge. "
                                    "Use a plain LoRA (lora_down/lora_up or lora_A/lora_B), e.g. the lightx2v Wan2.2 LoRAs.")
        split = _split_key(key)
        if split is None:
            unknown.append(key)
            continue
        name, part = split
        group = lookup.resolve(name, part)
        if group is None:
            unknown.append(key)
            continue
        pair = groups.setdefault(group, _Pair())
        pair.keys.append(key)
        if part == "alpha":
            pair.alpha = float(value.float().reshape(-1)[0]) if value.numel() else None
        elif part == "diff_m":
            pair.diff = value
        else:
            setattr(pair, part, value)
    return groups, unknown


class _Lookup:
    """Names of one model's parameters in every layout a LoRA may use, resolved to official groups.

    An official group is the official parameter name without `.weight` / `.bias` for linears and
    norms (`blocks.0.self_attn.q`), or the parameter itself for tables (`blocks.0.modulation`).
    """

    def __init__(self, model: nn.Module):
        from ..loader.dit_keys import block_indices, diffusers_to_official

        params = dict(model.named_parameters())
        n_layers = len(block_indices(params))
        try:
            o2d = diffusers_to_official(params.keys(), n_layers)   # {official param: diffusers param}
        except KeyError as e:
            raise WanMeterError(f"this model has a parameter {e.args[0]!r} that a Wan2.2 diffusers transformer does not; "
                                "LoRAs are merged into T2V/I2V/TI2V models from WanMeter Model Loader.") from None
        self.params = params
        self.o2d = o2d
        self.groups: dict[str, str] = {}   # any spelling of a group -> official group
        for official, diffusers in o2d.items():
            for o, d in ((official, diffusers),):
                og = o.rsplit(".", 1)[0] if o.endswith((".weight", ".bias")) else o
                dg = d.rsplit(".", 1)[0] if d.endswith((".weight", ".bias")) else d
                for alias in (og, dg):
                    self.groups.setdefault(alias, og)
                    self.groups.setdefault(alias.replace(".", "_"), og)
        self.n_layers = n_layers

    def resolve(self, name: str, part: str) -> str | None:
        for pre in _PREFIXES:
            if name.startswith(pre):
                name = name[len(pre):]
                break
        name = name.replace(".default", "")
        if name.startswith("lora_unet_"):
            name = name[len("lora_unet_"):].lstrip("_")
        elif name.startswith("lycoris_"):
            name = name[len("lycoris_"):]
        if part == "diff_m":  # kijai: blocks.N.diff_m is the modulation table's difference
            name = f"{name}.modulation" if name else "modulation"
        return self.groups.get(name)

    def param_of(self, group: str, leaf: str | None) -> tuple[str, torch.Tensor] | None:
        official = group if leaf is None else f"{group}.{leaf}"
        d = self.o2d.get(official)
        return (d, self.params[d]) if d is not None else None


def plan_lora_merge(model: nn.Module, lora: str | Path | Mapping[str, torch.Tensor], strength: float = 1.0) -> LoraMergePlan:
    """Read and validate a LoRA against `model` without changing anything; raise naming the fix."""
    source = Path(lora).name if isinstance(lora, (str, Path)) else "(state dict)"
    state = read_lora(lora)
    if not state:
        raise WanMeterError(f"LoRA {source} is empty; pick a Wan2.2 LoRA file.")
    family = describe_lora_family(state)
    lookup = _Lookup(model)
    groups, unknown = _normalize(state, lookup, source)
    if not groups:
        if family:
            raise WanMeterError(f"LoRA {source} is {family}, not a Wan LoRA: it cannot be applied to Wan2.2. "
                                "Pick a LoRA trained for Wan2.2 (or Wan2.1 14B / 5B to match the model).")
        sample = ", ".join(sorted(state)[:3])
        raise WanMeterError(f"None of the {len(state)} keys of LoRA {source} matches a layer of this Wan2.2 model "
                            f"(first keys: {sample}). It is for another model or in an unknown layout: pick a "
                            "Wan2.2 LoRA (ComfyUI/kijai, lightx2v, diffusers or musubi format).")
    s = float(strength)
    changes: list[_Change] = []
    for group, pair in sorted(groups.items()):
        where = f"LoRA {source}, layer {group}"
        if (pair.down is None) != (pair.up is None):
            raise WanMeterError(f"{where}: has {'lora_down/lora_A' if pair.down is not None else 'lora_up/lora_B'} "
                                "without its partner. The file is incomplete: download it again.")
        for t in (pair.down, pair.up, pair.diff, pair.diff_b):
            if t is not None and not torch.isfinite(t.float()).all():
                raise WanMeterError(f"{where}: holds NaN or Inf values. The file is corrupt: download it again.")
        if pair.down is not None:
            target = lookup.param_of(group, "weight")
            if target is None:
                raise WanMeterError(f"{where}: a low-rank pair for a layer that has no weight matrix. Not a Wan2.2 LoRA.")
            name, w = target
            _check_float(name, w, source)
            down, up = pair.down, pair.up
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                raise WanMeterError(f"{where}: lora_up {tuple(up.shape)} and lora_down {tuple(down.shape)} do not form a "
                                    "low-rank pair (ranks differ). The file is corrupt: download it again.")
            if (up.shape[0], down.shape[1]) != tuple(w.shape):
                raise WanMeterError(_size_message(source, group, (up.shape[0], down.shape[1]), tuple(w.shape)))
            rank = down.shape[0]
            scale = s * ((pair.alpha / rank) if pair.alpha is not None else 1.0)
            changes.append(_Change(name, w, down=down.float() * scale, up=up.float()))
        if pair.diff is not None:
            leaf = None if group.endswith("modulation") else "weight"
            target = lookup.param_of(group, leaf)
            if target is None:
                raise WanMeterError(f"{where}: a full difference (.diff) for a parameter this model does not have.")
            name, w = target
            _check_float(name, w, source)
            diff = pair.diff.reshape(w.shape) if pair.diff.numel() == w.numel() else None
            if diff is None:
                raise WanMeterError(_size_message(source, group, tuple(pair.diff.shape), tuple(w.shape)))
            changes.append(_Change(name, w, full=diff.float() * s))
        if pair.diff_b is not None:
            target = lookup.param_of(group, "bias")
            if target is None:
                raise WanMeterError(f"{where}: a bias difference (diff_b) for a layer without bias. Not a Wan2.2 LoRA.")
            name, b = target
            _check_float(name, b, source)
            if pair.diff_b.numel() != b.numel():
                raise WanMeterError(_size_message(source, group, tuple(pair.diff_b.shape), tuple(b.shape)))
            changes.append(_Change(name, b, full=pair.diff_b.reshape(b.shape).float() * s))
    skipped = [k for k in unknown if not k.endswith(".alpha")]
    return LoraMergePlan(model=model, changes=changes, source=source, skipped=skipped)


def _check_float(name: str, p: torch.Tensor, source: str) -> None:
    if p.dtype not in _FLOAT or type(p) not in (torch.Tensor, nn.Parameter):
        raise WanMeterError(
            f"Cannot merge LoRA {source} into {name} (weights stored as {getattr(p, 'quant_type', p.dtype)}): merge LoRAs "
            "into a bf16/fp16 model (WanMeter Model Loader weight_dtype bf16, a bf16/fp16/fp8_scaled file) before fp8 "
            "storage or fp8 compute; GGUF and other quantized weights cannot take a merged LoRA.")


def _size_message(source: str, group: str, got: tuple, want: tuple) -> str:
    dims = [d for d in got if d in _WAN_SIZES]
    made_for = f" It was made for {_WAN_SIZES[dims[0]]}." if dims and dims[0] not in want else ""
    return (f"LoRA {source}: layer {group} is {list(got)} but the model's is {list(want)}.{made_for} "
            "This LoRA was trained for another Wan model size (1.3B / 5B / 14B): pick one made for this model.")


def apply_merge(plans: list[LoraMergePlan]) -> None:
    """Apply validated plans in order, a block of rows at a time (bounded extra memory: no
    full-size fp32 delta, so a merge that validated does not run out of memory halfway).

    Should anything still fail midway (an interrupt, a device error), the tensors changed so far
    get their deltas subtracted again and a WanMeterError says so: that restores them to within
    one rounding of their dtype, not bit for bit (keeping exact copies would double the memory).
    """
    done: list[_Change] = []
    try:
        with torch.no_grad():
            for plan in plans:
                for c in plan.changes:
                    _add_delta(c, +1.0)
                    done.append(c)
    except BaseException as e:
        with torch.no_grad():
            for c in reversed(done):
                _add_delta(c, -1.0)
        if isinstance(e, WanMeterError):
            raise
        raise WanMeterError(f"merging the LoRA failed midway ({type(e).__name__}: {e}); the weights changed so far "
                            "were restored to within bf16 rounding. Reload the model for bit-exact weights.") from e


_ROWS_PER_CHUNK = 1024


def _add_delta(c: _Change, sign: float) -> None:
    p = c.param
    flat = p.view(p.shape[0], -1) if p.ndim > 1 else p.view(1, -1)
    for r0 in range(0, flat.shape[0], _ROWS_PER_CHUNK):
        r1 = min(r0 + _ROWS_PER_CHUNK, flat.shape[0])
        if c.full is not None:
            full = c.full.reshape(flat.shape)
            delta = full[r0:r1].to(p.device)
        else:
            delta = c.up[r0:r1].to(p.device) @ c.down.to(p.device)
        rows = flat[r0:r1]
        rows.copy_((rows.float() + sign * delta).to(p.dtype))


def merge_lora(model: nn.Module, lora: str | Path | Mapping[str, torch.Tensor], strength: float = 1.0) -> list[str]:
    """Merge a LoRA into a diffusers WanTransformer3DModel's weights in place; returns the modules changed.

    All-or-nothing: the LoRA is validated as a whole first; a failure leaves the model unchanged.
    Keys that match no layer of this model (e.g. Wan2.1 I2V's k_img/v_img on Wan2.2) are skipped
    with a warning; a LoRA matching no layer at all is refused.
    """
    return merge_loras_atomic([(model, lora, strength)])[0]


def merge_loras_atomic(items: list[tuple[nn.Module, str | Path | Mapping[str, torch.Tensor], float]]) -> list[list[str]]:
    """Validate every (model, LoRA, strength) first, then apply them all; nothing changes on failure."""
    plans = [plan_lora_merge(m, lo, s) for m, lo, s in items]
    for plan in plans:
        if plan.skipped:
            warnings.warn(f"LoRA {plan.source}: {len(plan.skipped)} keys match no layer of this model and were skipped "
                          f"(e.g. {plan.skipped[0]})", stacklevel=3)
    apply_merge(plans)
    return [plan.modules for plan in plans]


def lora_to_diffusers(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A Wan LoRA -> diffusers/PEFT names without the "transformer." prefix
    (e.g. "blocks.0.attn1.to_q.lora_A.weight"), alpha/rank folded into A. The caller's tensors are
    not modified. Full differences of linears (.diff) become a B = identity pair, as diffusers does;
    full differences of norms / tables cannot run beside the weights and are refused unless zero."""
    plan = plan_lora_merge(model, dict(state), 1.0)
    out: dict[str, torch.Tensor] = {}
    for c in plan.changes:
        mod, leaf = c.name.rsplit(".", 1)
        if c.down is not None:
            out[f"{mod}.lora_A.weight"] = c.down.clone()
            out[f"{mod}.lora_B.weight"] = c.up.clone()
        elif leaf == "bias":
            out[f"{mod}.lora_B.bias"] = c.full.clone()
        elif isinstance(model.get_submodule(mod), nn.Linear) and leaf == "weight":
            out[f"{mod}.lora_A.weight"] = c.full.clone()
            out[f"{mod}.lora_B.weight"] = torch.eye(c.full.shape[0], dtype=c.full.dtype)
        elif c.full.abs().max() > 0:
            raise WanMeterError(f"LoRA {plan.source} changes {c.name} (a norm / modulation table), which cannot run "
                                "beside the weights: merge this LoRA (WanMeter LoRA node) instead of attaching it.")
    for k in [k for k in out if k.endswith("lora_B.bias")]:
        mod = k[: -len(".lora_B.bias")]
        if f"{mod}.lora_A.weight" not in out:  # PEFT needs a pair to carry the bias: a zero rank-1 pair
            w = model.get_parameter(f"{mod}.weight")
            out[f"{mod}.lora_A.weight"] = torch.zeros(1, w.shape[1])
            out[f"{mod}.lora_B.weight"] = torch.zeros(w.shape[0], 1)
    return out


def attach_lora(model: nn.Module, lora: str | Path | Mapping[str, torch.Tensor], *, name: str = "lora",
                strength: float = 1.0) -> None:
    """Apply a LoRA at run time (unmerged) through diffusers' PEFT integration."""
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise WanMeterError("Run-time (unmerged) LoRAs need the peft package: pip install peft; "
                            "or merge the LoRA into the weights instead.") from e
    conv = lora_to_diffusers(read_lora(lora), model)
    model.load_lora_adapter(conv, adapter_name=name, prefix=None)
    model.set_adapters([name], weights=[float(strength)])
