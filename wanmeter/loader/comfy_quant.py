"""ComfyUI's per-layer quantized checkpoints ("comfy_quant"): fp8, INT8, MXFP8, NVFP4.

The format (ComfyUI's QUANTIZATION.md and comfy/quant_ops.py QUANT_ALGOS; the tensors are what
comfy-kitchen's layouts serialize with `state_dict_tensors`): for each quantized linear `L`
- `L.weight`: the quantized data: float8_e4m3fn / float8_e5m2, int8, float8_e4m3fn for MXFP8
  (rows/cols padded to 32), or uint8 holding two FP4 (E2M1) values per byte for NVFP4 (padded to 16);
- `L.weight_scale`: fp32 per-tensor scale (fp8, int8; int8 may be per row [out, 1]), E8M0 block
  scales (MXFP8, 1 per 32 values, cuBLAS "blocked" order) or fp8 block scales (NVFP4, 1 per 16);
- `L.weight_scale_2`: NVFP4's fp32 per-tensor scale; `L.input_scale`: activation scale (unused here);
- `L.comfy_quant`: uint8 bytes of a JSON object {"format": "float8_e4m3fn" | "float8_e5m2" |
  "int8_tensorwise" | "mxfp8" | "nvfp4", ...}. Older files put the same per-layer formats in
  the header's `_quantization_metadata` ({"format_version", "layers": {L: {"format"}}}).
Everything not listed (norms, embeddings, biases) is stored as ordinary float tensors.

Here: which layers are quantized and how, from the header alone (`quant_layers`, for
inspection and the estimator); dequantization of one layer (`dequantize_layer`: plain torch for
fp8/int8, comfy-kitchen's decoders for MXFP8/NVFP4); and `QuantLinear`, a linear that keeps the
file's quantized weight (small in memory) and computes through comfy-kitchen's QuantizedTensor
(its GPU kernels where the GPU has them) or by dequantizing per layer: comfy_quant_load.py,
which imports torch (this module stays importable for header-only inspection).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import WanMeterError

if TYPE_CHECKING:
    import torch

MARKER_SUFFIX = ".comfy_quant"
AUX_SUFFIXES = (".weight_scale", ".weight_scale_2", ".input_scale", ".pre_quant_scale", MARKER_SUFFIX)


@dataclass(frozen=True)
class QuantFormat:
    name: str              # the comfy_quant "format" string
    label: str             # the on-disk dtype label WanMeter uses (DiTInfo.dtypes keys)
    layout: str            # comfy-kitchen layout class
    bytes_per_weight: float  # storage incl. block scales (estimator: calibration weight_bytes_per_param)
    min_sm: tuple[int, int]  # compute capability of comfy-kitchen's kernels for it
    plan: str              # the estimator's weight_dtype for it


FORMATS: dict[str, QuantFormat] = {f.name: f for f in (
    QuantFormat("float8_e4m3fn", "F8_E4M3", "TensorCoreFP8Layout", 1.0, (8, 9), "fp8_e4m3fn"),
    QuantFormat("float8_e5m2", "F8_E5M2", "TensorCoreFP8Layout", 1.0, (8, 9), "fp8_e5m2"),
    QuantFormat("int8_tensorwise", "I8", "TensorWiseINT8Layout", 1.0, (7, 5), "int8"),
    QuantFormat("mxfp8", "MXFP8", "TensorCoreMXFP8Layout", 1.0 + 1.0 / 32, (10, 0), "mxfp8"),
    QuantFormat("nvfp4", "NVFP4", "TensorCoreNVFP4Layout", 0.5 + 1.0 / 16, (10, 0), "nvfp4"),
)}
# formats ComfyUI knows that WanMeter does not decode (rotated / asymmetric / AWQ int4)
_NOT_SUPPORTED = ("convrot_w4a4", "asym_w4a8_int8", "awq_w4a16", "svdquant_w4a4")


def is_aux(key: str) -> bool:
    return key.endswith(AUX_SUFFIXES)


def is_comfy_quant(keys, metadata: Mapping[str, str] | None = None) -> bool:
    """True for a ComfyUI per-layer quantized file (comfy_quant / weight_scale keys or the header metadata)."""
    if metadata and "_quantization_metadata" in metadata:
        return True
    return any(k.endswith((MARKER_SUFFIX, ".weight_scale")) for k in keys)


def _metadata_layers(metadata: Mapping[str, str] | None) -> dict[str, str]:
    raw = (metadata or {}).get("_quantization_metadata")
    if not raw:
        return {}
    try:
        layers = json.loads(raw).get("layers", {})
        return {k: str(v.get("format", "")) for k, v in layers.items()}
    except (ValueError, AttributeError, TypeError):
        raise WanMeterError("the file's _quantization_metadata header entry is not valid JSON. "
                            "The file is corrupt: download it again.") from None


def quant_layers(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None, *,
                 name: str = "the file") -> dict[str, str]:
    """{layer: comfy_quant format} from header entries ({key: TensorMeta}, keys without a prefix).

    The format follows from the dtypes of `L.weight` and its scales (the JSON in `L.comfy_quant`
    is tensor data; the loader reads and cross-checks it). Raises naming the file when a scale is
    missing or the combination is not one of the formats.
    """
    declared = _metadata_layers(metadata)
    groups = {k[: -len(MARKER_SUFFIX)] for k in tensors if k.endswith(MARKER_SUFFIX)}
    groups |= {k[: -len(".weight_scale")] for k in tensors if k.endswith(".weight_scale")}
    groups |= {g for g in declared if f"{g}.weight" in tensors}
    out: dict[str, str] = {}
    for g in sorted(groups):
        w = tensors.get(f"{g}.weight")
        s = tensors.get(f"{g}.weight_scale")
        if w is None:
            raise WanMeterError(f"{name}: quantization data for {g} but no {g}.weight. The file is incomplete: download it again.")
        declared_fmt = declared.get(g)
        if declared_fmt in _NOT_SUPPORTED:
            raise WanMeterError(f"{name}: layer {g} uses ComfyUI's {declared_fmt} quantization, which WanMeter does not run. "
                                "Use the fp8_scaled, bf16 or GGUF release of the model.")
        if s is None:
            raise WanMeterError(f"{name}: {g}.weight is quantized ({w.dtype}) but its scale tensor {g}.weight_scale is "
                                "missing. The file is incomplete or was converted wrongly: download it again.")
        if w.dtype == "I8":
            fmt = "int8_tensorwise"
        elif w.dtype == "U8":
            if f"{g}.weight_scale_2" not in tensors:
                raise WanMeterError(f"{name}: {g} is NVFP4-packed (uint8) but its per-tensor scale {g}.weight_scale_2 is "
                                    "missing. The file is incomplete: download it again.")
            fmt = "nvfp4"
        elif w.dtype == "F8_E4M3":
            fmt = "mxfp8" if s.dtype in ("F8_E8M0", "U8") and len(s.shape) == 2 and s.shape[1] > 1 else "float8_e4m3fn"
        elif w.dtype == "F8_E5M2":
            fmt = "float8_e5m2"
        else:
            raise WanMeterError(f"{name}: layer {g} has a weight_scale but its weight is {w.dtype}, which is no ComfyUI "
                                "quantized format (fp8, int8, mxfp8, nvfp4). The file is corrupt or another format.")
        if declared_fmt and declared_fmt != fmt and not (declared_fmt.startswith("int8") and fmt == "int8_tensorwise"):
            raise WanMeterError(f"{name}: layer {g} is declared {declared_fmt} in the header but stored as {fmt}. "
                                "The file is corrupt: download it again.")
        out[g] = fmt
    return out


def logical_shape(fmt: str, storage_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The (padded) weight shape a quantized tensor stands for: NVFP4 packs two values per byte."""
    if fmt == "nvfp4":
        return (storage_shape[0], storage_shape[1] * 2)
    return tuple(storage_shape)


def decode_marker(t: "torch.Tensor", *, layer: str, name: str) -> dict[str, Any]:
    """The JSON object of an `L.comfy_quant` tensor."""
    try:
        conf = json.loads(bytes(t.reshape(-1).to("cpu").numpy().astype("uint8").tobytes()).decode("utf-8"))
        if not isinstance(conf, dict) or "format" not in conf:
            raise ValueError("no format")
        return conf
    except (ValueError, UnicodeDecodeError, TypeError):
        raise WanMeterError(f"{name}: {layer}.comfy_quant is not valid quantization JSON. The file is corrupt: "
                            "download it again.") from None


def _kitchen(fmt: str):
    try:
        import comfy_kitchen as ck
        import comfy_kitchen.tensor  # noqa: F401
    except ImportError:
        raise WanMeterError(f"{fmt} weights are decoded with comfy-kitchen (ComfyUI's quantization kernels), which is "
                            "not installed: pip install comfy-kitchen (it comes with current ComfyUI).") from None
    return ck


def _check_kitchen_conf(conf: Mapping[str, Any], *, layer: str, name: str) -> None:
    if conf.get("convrot") or conf.get("format") in _NOT_SUPPORTED:
        raise WanMeterError(f"{name}: layer {layer} uses {conf.get('format')} with a rotation (convrot), which WanMeter "
                            "does not run. Use the fp8_scaled, bf16 or GGUF release of the model.")


def dequantize_layer(fmt: str, parts: Mapping[str, "torch.Tensor"], shape: tuple[int, ...], *,
                     dtype: "torch.dtype | None" = None, layer: str = "", name: str = "") -> "torch.Tensor":
    """The float weight of one quantized layer (cut to `shape`, the module's [out, in]).

    parts: "weight", "weight_scale" and for NVFP4 "weight_scale_2". fp8 / int8 are decoded here
    (q * scale); MXFP8 / NVFP4 with comfy-kitchen's `dequantize_mxfp8` / `dequantize_nvfp4`.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    w, s = parts["weight"], parts["weight_scale"]
    try:
        if fmt in ("float8_e4m3fn", "float8_e5m2", "int8_tensorwise"):
            s = s.to(torch.float32)
            if s.numel() not in (1, w.shape[0]):
                raise ValueError(f"weight_scale has {s.numel()} values for {w.shape[0]} rows")
            out = w.to(torch.float32) * (s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()))
        elif fmt == "mxfp8":
            ck = _kitchen(fmt)
            out = ck.dequantize_mxfp8(w.view(torch.float8_e4m3fn), s.view(torch.float8_e8m0fnu), torch.float32)
        elif fmt == "nvfp4":
            ck = _kitchen(fmt)
            out = ck.dequantize_nvfp4(w.view(torch.uint8), parts["weight_scale_2"].to(torch.float32).reshape(()),
                                      s.view(torch.float8_e4m3fn), torch.float32)
        else:
            raise WanMeterError(f"{name}: layer {layer} has quantization format {fmt!r}, which WanMeter does not run. "
                                "Use the fp8_scaled, bf16 or GGUF release of the model.")
    except WanMeterError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError) as e:
        raise WanMeterError(f"{name}: cannot decode {fmt} layer {layer} ({type(e).__name__}: {e}). The scales do not fit "
                            "the weight: the file is corrupt or was converted wrongly; download it again.") from None
    if out.shape[0] < shape[0] or out.shape[1] < shape[1]:
        raise WanMeterError(f"{name}: {fmt} layer {layer} holds {list(out.shape)} values, the model needs {list(shape)}. "
                            "The file is corrupt or for another model: download it again.")
    out = out[: shape[0], : shape[1]]
    if not torch.isfinite(out).all():
        raise WanMeterError(f"{name}: {fmt} layer {layer} decodes to NaN/Inf values. The file is corrupt: download it again.")
    return out.to(dtype).contiguous()


def quantize_for_fixture(fmt: str, w: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    """Quantize a float weight with comfy-kitchen's own layout code and return the file tensors
    (`weight`, `weight_scale`[, `weight_scale_2`], `comfy_quant`) exactly as ComfyUI saves them.
    Used to write test fixtures (the producer's code, not ours)."""
    import torch

    _kitchen(fmt)
    from comfy_kitchen.tensor import get_layout_class

    f = FORMATS[fmt]
    layout = get_layout_class(f.layout)
    kw: dict[str, Any] = {"dtype": torch.float8_e5m2} if fmt == "float8_e5m2" else {}
    q, params = layout.quantize(w, **kw)
    out = {f"weight{suffix}": t.contiguous() for suffix, t in layout.state_dict_tensors(q, params).items()}
    conf = json.dumps({"format": fmt}).encode("utf-8")
    out["comfy_quant"] = torch.tensor(list(conf), dtype=torch.uint8)
    return out
