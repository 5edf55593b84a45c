"""Load a Wan2.2 DiT file/folder into `diffusers.WanTransformer3DModel`, strictly and lean.

Why not `from_single_file`: it fetches configs from the hub, guesses TI2V/I2V wrongly, does not
know ComfyUI's fp8_scaled files and reads the whole checkpoint into memory first. Here the config
comes from tensor shapes (dit_inspect), the module is built on the meta device, and each tensor is
read from the memory-mapped file, renamed with diffusers' own key converter, dequantized if
needed, cast to its final dtype and placed on the device one at a time: peak memory is the final
model plus one tensor. The precision rules follow diffusers: modules in
`_keep_in_fp32_modules` stay float32 under fp16/bf16 (as `from_pretrained` does), and fp8 storage
uses diffusers' layerwise casting (block linears stored in fp8, upcast per layer for compute;
norms, embeddings and the output projection are skipped by its default patterns).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import WanMeterError
from . import comfy_quant, dit_keys
from .dit_inspect import DiTInfo, find_expert_folders, inspect_dit
from .fp8_scaled import dequantize_scaled_fp8
from .safetensors_io import check_finite

KEEP_FILE_FORMAT = "file"  # weight_dtype that keeps the file's storage (comfy_quant stays quantized)

WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
            "default": "bf16", "fp8_e4m3fn_fast": "fp8_e4m3fn"}


@dataclass
class LoadedDiT:
    """A ready-to-run transformer plus what it was loaded from.

    `weight_dtype` is the storage precision of the block linears; `compute_dtype` the precision
    the forward pass runs in (they differ only for fp8 storage or an explicit compute_dtype).
    """

    model: Any  # diffusers.WanTransformer3DModel
    info: DiTInfo
    weight_dtype: torch.dtype
    compute_dtype: torch.dtype

    @property
    def variant(self) -> str:
        return self.info.variant


def parse_dtype(value: str | torch.dtype, *, what: str = "weight_dtype") -> torch.dtype:
    """'bf16' / 'fp8_e4m3fn' / torch.bfloat16 ... -> torch.dtype, with a fix-naming error."""
    if isinstance(value, torch.dtype):
        if value in WEIGHT_DTYPES.values():
            return value
    else:
        key = _ALIASES.get(str(value).lower(), str(value).lower())
        if key in WEIGHT_DTYPES:
            return WEIGHT_DTYPES[key]
    raise WanMeterError(f"{what}={value!r} is not supported. Use one of: {', '.join(WEIGHT_DTYPES)}.")


def file_weight_dtype(info: DiTInfo) -> str:
    """The weight_dtype that stores a (non-quantized-layer) file's weights as the file does."""
    return {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8_e4m3fn",
            "F8_E5M2": "fp8_e5m2"}.get(info.dtype, "bf16")


def build_empty_transformer(config: dict[str, Any]):
    """`WanTransformer3DModel(**config)` with parameters on the meta device (no memory, no init);
    the non-persistent RoPE tables are real CPU buffers."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights(include_buffers=False):
        return WanTransformer3DModel(**config)


def iter_official_tensors(info: DiTInfo, *, dtype: torch.dtype | None = None,
                          device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (official key, tensor) for every model tensor, one at a time, fp8_scaled dequantized.

    Scales and the fp8 marker are consumed, not yielded. `dtype=None` keeps the on-disk dtype for
    unscaled tensors (scaled ones come out float32). ComfyUI comfy_quant layers (fp8 / int8 /
    MXFP8 / NVFP4) are decoded the same way (float32, cut to the logical shape).
    Used by load_dit and by the S2V loader.
    """
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for k, (f, _) in info.sources.items():
        by_file.setdefault(f, []).append(k)
    for f, keys in by_file.items():
        try:
            handle = safe_open(str(f), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise WanMeterError(f"cannot open {f.name}: {e}. Download it again.") from None
        with handle as h:
            for k in keys:
                if k == "scaled_fp8" or k.endswith((".scaled_fp8", ".scale_weight", ".scale_input")) or comfy_quant.is_aux(k):
                    continue
                group = k[: -len(".weight")] if k.endswith(".weight") else None
                if group is not None and group in info.quant:
                    from .comfy_quant_load import read_quant_parts

                    fmt, parts = read_quant_parts(h, info, group)
                    t = comfy_quant.dequantize_layer(fmt, parts, info.tensors[k].shape, layer=group, name=info.path.name)
                    yield k, (t if dtype is None else _cast(t, dtype)).to(device)
                    continue
                t = h.get_tensor(info.sources[k][1])
                scale_key = k[: -len(".weight")] + ".scale_weight" if k.endswith(".weight") else None
                if scale_key and scale_key in info.sources:
                    sf, sk = info.sources[scale_key]
                    if sf == f:
                        s = h.get_tensor(sk)
                    else:
                        with safe_open(str(sf), framework="pt", device="cpu") as h2:
                            s = h2.get_tensor(sk)
                    t = dequantize_scaled_fp8({"w.weight": t, "w.scale_weight": s}, dtype=torch.float32)["w.weight"]
                check_finite(t, k, f)
                if dtype is not None and t.dtype != dtype:
                    t = _cast(t, dtype)
                yield k, t.to(device)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in _FP8 and t.dtype not in _FP8:
        fmax = torch.finfo(dtype).max
        return t.to(torch.float32).clamp_(-fmax, fmax).to(dtype)
    return t.to(dtype)


def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if leaf in mod._parameters:
        mod._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    else:
        mod._buffers[leaf] = value


def _plan_dtypes(model, storage: torch.dtype, compute: torch.dtype) -> dict[str, torch.dtype]:
    """Final dtype of every parameter, decided on the meta model exactly as diffusers would."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, p in list(model.named_parameters()):
        want = torch.float32 if (compute != torch.float32 and any(m in name.split(".") for m in keep)) else compute
        if p.dtype != want:
            _set_tensor(model, name, torch.empty(p.shape, dtype=want, device="meta"))
    if storage != compute:
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    return {n: p.dtype for n, p in model.named_parameters()}


def load_dit(path: str | os.PathLike | DiTInfo, *, weight_dtype: str | torch.dtype = "bf16",
             compute_dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu") -> LoadedDiT:
    """Load a T2V/I2V/TI2V DiT (file or folder) as a diffusers WanTransformer3DModel in eval mode.

    weight_dtype: bf16 | fp16 | fp32 | fp8_e4m3fn | fp8_e5m2 (fp8 = storage only).
    compute_dtype: defaults to weight_dtype, or bf16 for fp8 storage.
    Raises WanMeterError for foreign files, missing/unexpected tensors and S2V (see wanmeter.s2v).
    """
    info = path if isinstance(path, DiTInfo) else inspect_dit(path)
    if info.layout == "gguf":  # weights stay quantized; weight_dtype only picks the compute dtype
        from .gguf_loader import load_gguf_dit

        wd = None if str(weight_dtype).startswith(("fp8", "torch.float8", KEEP_FILE_FORMAT)) else weight_dtype
        return load_gguf_dit(info, compute_dtype=compute_dtype or wd, device=device)
    if info.variant == "s2v_14b":
        raise WanMeterError(
            f"{info.path.name} is Wan2.2 S2V-14B; diffusers has no S2V transformer, so it is loaded by "
            "WanMeter's S2V loader (wanmeter.s2v / the S2V model loader node), not load_dit.")
    if str(weight_dtype) == KEEP_FILE_FORMAT:
        if info.quant:  # ComfyUI comfy_quant: keep fp8 / int8 / MXFP8 / NVFP4 weights as they are
            from .comfy_quant_load import load_quantized_dit

            compute = parse_dtype(compute_dtype or "bf16", what="compute_dtype")
            return load_quantized_dit(info, compute_dtype=compute, device=device)
        weight_dtype = file_weight_dtype(info)
    storage = parse_dtype(weight_dtype)
    compute = parse_dtype(compute_dtype, what="compute_dtype") if compute_dtype is not None else (
        torch.bfloat16 if storage in _FP8 else storage)
    if compute in _FP8:
        raise WanMeterError("compute_dtype cannot be fp8 (fp8 is a storage format here). Use bf16 or fp16.")
    dev = torch.device(device)

    model = build_empty_transformer(info.config)
    targets = _plan_dtypes(model, storage, compute)

    official_keys = [k for k in info.sources
                     if not (k == "scaled_fp8" or k.endswith((".scaled_fp8", ".scale_weight", ".scale_input"))
                             or comfy_quant.is_aux(k))]
    to_diffusers = {o: d for d, o in dit_keys.official_to_diffusers(official_keys).items()}
    expected = set(targets)
    got = set(to_diffusers.values())
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            back = {d: o for o, d in to_diffusers.items()}
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(back[u] for u in unexpected[:3])})")
        raise WanMeterError(
            f"{info.path.name} does not match the Wan2.2 {info.variant} transformer: {'; '.join(parts)}. "
            "The file is incomplete or a modified model: download the official release again.")

    for official, t in iter_official_tensors(info, device="cpu"):
        name = to_diffusers[official]
        want = targets[name]
        meta = model.get_parameter(name)
        if official[: -len(".weight")] in info.quant and t.ndim == 2:
            t = t[: meta.shape[0], : meta.shape[1]]  # padded MXFP8 / NVFP4 blocks
        if tuple(t.shape) != tuple(meta.shape):
            raise WanMeterError(f"{info.path.name}: tensor {official} has shape {list(t.shape)}, expected "
                                f"{list(meta.shape)} for this config. The file is corrupt or mixed: download it again.")
        if t.dtype != want:
            t = _cast(t, want).to(dev)
        elif dev.type == "cpu":
            # tensors read from a file can sit at unaligned addresses, which sends CPU matmuls down
            # other kernels (results then differ in the last bit from a normally allocated model)
            t = t.clone()
        else:
            t = t.to(dev)
        _set_tensor(model, name, t)
        del t
    model.to(dev)  # the RoPE buffers
    model.eval()
    model.requires_grad_(False)
    return LoadedDiT(model=model, info=info, weight_dtype=storage, compute_dtype=compute)


def load_expert_pair(high: str | os.PathLike, low: str | os.PathLike | None = None, **kwargs) -> tuple[LoadedDiT, LoadedDiT]:
    """Load the two A14B experts (high-noise, low-noise). `low=None`: `high` is a release folder
    holding high_noise_model/ + low_noise_model/ (or a diffusers pipeline's transformer/ + transformer_2/).

    Both must be the same variant with the same config; which is high and which is low cannot
    be told from the weights, so the order is the caller's (a name hint that contradicts it warns).
    kwargs go to load_dit.
    """
    if low is None:
        pair = find_expert_folders(high)
        if pair is None:
            raise WanMeterError(f"{high} is not a folder with high_noise_model/ and low_noise_model/. "
                                "Pass the high-noise and the low-noise files separately.")
        high, low = pair
    hi, lo = inspect_dit(high), inspect_dit(low)
    check_expert_pair(hi, lo)
    return load_dit(hi, **kwargs), load_dit(lo, **kwargs)


def check_expert_pair(hi: DiTInfo, lo: DiTInfo) -> None:
    """Raise if two experts cannot form an A14B pair; warn if the file names look swapped."""
    if hi.variant != lo.variant or hi.config != lo.config:
        raise WanMeterError(
            f"the two experts do not match: {hi.path.name} is {hi.variant} (dim {hi.dim}, in {hi.config['in_channels']}) and "
            f"{lo.path.name} is {lo.variant} (dim {lo.dim}, in {lo.config['in_channels']}). Use the high- and low-noise "
            "files of the same release (both t2v or both i2v).")
    if hi.variant not in ("t2v_a14b", "i2v_a14b"):
        raise WanMeterError(f"{hi.variant} has a single expert; load it with load_dit, not load_expert_pair.")
    if hi.expert_hint == "low" and lo.expert_hint == "high":
        warnings.warn(f"the high-noise slot holds {hi.path.name} and the low-noise slot {lo.path.name}: "
                      "they look swapped (by name)", stacklevel=3)
    if hi.path.resolve() == lo.path.resolve():
        warnings.warn(f"the same file {hi.path.name} is used for both experts", stacklevel=3)
