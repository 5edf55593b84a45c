"""Load a ComfyUI per-layer quantized DiT (comfy_quant) keeping its weights in the file's format.

`load_dit(..., weight_dtype="file")` ends here for comfy_quant files: the diffusers model is
built on the meta device as usual, every quantized linear becomes a `QuantLinear` holding the
file's tensors (fp8 / int8 / MXFP8 / NVFP4 bytes and scales, so memory is what the file takes),
everything else is loaded like load_dit does. Other weight_dtype values decode the weights once
at load (dit_loader.iter_official_tensors) and need no code here.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import WanMeterError
from . import dit_keys
from .comfy_quant import FORMATS, _check_kitchen_conf, _kitchen, decode_marker, dequantize_layer, is_aux
from .dit_inspect import DiTInfo

def compute_support(fmt: str, device: "torch.device") -> str:
    """How a QuantLinear of `fmt` computes on `device`: "kernel" (comfy-kitchen's GPU kernels),
    "dequant" (dequantize per layer: CPU, or fp8/int8 on GPUs below the kernels' generation).
    Raises for MXFP8/NVFP4 on a GPU older than Blackwell: no kernel, and per-layer decoding of
    block formats there would be slower than simply loading the model in bf16 or fp8."""
    import torch

    f = FORMATS[fmt]
    if device.type != "cuda":
        return "dequant"
    cap = torch.cuda.get_device_capability(device)
    if cap >= f.min_sm:
        return "kernel"
    if fmt in ("mxfp8", "nvfp4"):
        raise WanMeterError(
            f"{fmt.upper()} weights compute only on Blackwell GPUs (compute capability 10.0+, e.g. B200, RTX 50xx); this "
            f"GPU is {cap[0]}.{cap[1]}. Load the file with weight_dtype bf16 or fp8_e4m3fn (decoded once at load), or use "
            "the fp8_scaled / GGUF release of the model.")
    return "dequant"


class QuantLinear(nn.Module):
    """nn.Linear's forward over a weight kept in its ComfyUI quantized format.

    Buffers hold exactly the file's tensors (so memory is the file's bytes); `mode` "kernel"
    wraps them in comfy-kitchen's QuantizedTensor and lets F.linear dispatch to its kernels
    (fp8 / int8 / MXFP8 / NVFP4 matmuls with activation quantization); "dequant" decodes the
    weight to the input's dtype for each call (one layer at a time, like GGUF).
    """

    def __init__(self, fmt: str, parts: Mapping[str, "torch.Tensor"], bias: "torch.Tensor | None",
                 in_features: int, out_features: int, mode: str = "dequant", layer: str = ""):
        super().__init__()
        self.fmt, self.mode, self.layer = fmt, mode, layer
        self.in_features, self.out_features = in_features, out_features
        for k, v in parts.items():
            self.register_buffer(k, v)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, format={self.fmt}, mode={self.mode}"

    def _parts(self) -> dict[str, "torch.Tensor"]:
        return {k: getattr(self, k) for k in ("weight", "weight_scale", "weight_scale_2") if hasattr(self, k)}

    def dequantized(self, dtype) -> "torch.Tensor":
        return dequantize_layer(self.fmt, self._parts(), (self.out_features, self.in_features), dtype=dtype,
                                layer=self.layer)

    def forward(self, x):
        import torch.nn.functional as F

        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.mode == "kernel":
            return F.linear(x, self._kitchen_tensor(x.dtype), bias)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def _kitchen_tensor(self, dtype):
        import torch
        from comfy_kitchen.tensor import QuantizedTensor, get_layout_class

        f = FORMATS[self.fmt]
        layout = get_layout_class(f.layout)
        shape = (self.out_features, self.in_features)
        if self.fmt == "nvfp4":
            params = layout.Params(scale=self.weight_scale_2.float().reshape(()), orig_dtype=dtype, orig_shape=shape,
                                   block_scale=self.weight_scale.view(torch.float8_e4m3fn))
        elif self.fmt == "mxfp8":
            params = layout.Params(scale=self.weight_scale.view(torch.float8_e8m0fnu), orig_dtype=dtype, orig_shape=shape)
        else:
            params = layout.Params(scale=self.weight_scale.float(), orig_dtype=dtype, orig_shape=shape)
        return QuantizedTensor(self.weight, f.layout, params)



def read_quant_parts(handle, info: DiTInfo, group: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(format, {weight, weight_scale[, weight_scale_2]}) of one quantized layer from an open
    safe_open handle; the comfy_quant JSON, when present, must agree with the header."""
    fmt = info.quant[group]
    parts = {}
    for leaf in ("weight", "weight_scale", "weight_scale_2"):
        key = f"{group}.{leaf}"
        if key in info.sources:
            parts[leaf] = handle.get_tensor(info.sources[key][1])
    marker = f"{group}.comfy_quant"
    if marker in info.sources:
        conf = decode_marker(handle.get_tensor(info.sources[marker][1]), layer=group, name=info.path.name)
        _check_kitchen_conf(conf, layer=group, name=info.path.name)
        declared = str(conf["format"])
        if declared != fmt and not (declared.startswith("int8") and fmt == "int8_tensorwise"):
            raise WanMeterError(f"{info.path.name}: {marker} says {declared} but the tensors are {fmt}. "
                                "The file is corrupt: download it again.")
    return fmt, parts


def load_quantized_dit(info: DiTInfo, *, compute_dtype: torch.dtype, device: str | torch.device = "cpu"):
    """A diffusers WanTransformer3DModel whose quantized linears stay quantized (QuantLinear)."""
    from safetensors import safe_open

    from .dit_loader import LoadedDiT, _cast, _plan_dtypes, _set_tensor, build_empty_transformer

    dev = torch.device(device)
    modes = {FORMATS[f].name: compute_support(f, dev) for f in set(info.quant.values())}
    if any(m == "kernel" for m in modes.values()):
        for f in modes:
            _kitchen(f)
    model = build_empty_transformer(info.config)
    targets = _plan_dtypes(model, compute_dtype, compute_dtype)
    official = [k for k in info.sources if not is_aux(k) and k != "scaled_fp8"]
    to_diffusers = {o: d for d, o in dit_keys.official_to_diffusers(official).items()}
    missing = sorted(set(targets) - set(to_diffusers.values()))
    if missing:
        raise WanMeterError(f"{info.path.name} does not match the Wan2.2 {info.variant} transformer: {len(missing)} "
                            f"missing (e.g. {', '.join(missing[:3])}). The file is incomplete: download it again.")
    files = {f for f, _ in info.sources.values()}
    if len(files) != 1:
        raise WanMeterError(f"{info.path.name}: quantized weights are loaded from single files only.")
    with safe_open(str(next(iter(files))), framework="pt", device="cpu") as h:
        for official_key in official:
            name = to_diffusers[official_key]
            group = official_key[: -len(".weight")] if official_key.endswith(".weight") else None
            if group is not None and group in info.quant:
                mod_name = name[: -len(".weight")]
                lin = model.get_submodule(mod_name)
                if not isinstance(lin, nn.Linear):
                    raise WanMeterError(f"{info.path.name}: {official_key} is quantized but is not a linear layer's weight. "
                                        "WanMeter keeps only linear weights quantized: load with weight_dtype bf16.")
                fmt, parts = read_quant_parts(h, info, group)
                # decode once to check the scales fit (the same check a bf16 load does), then keep the bytes
                dequantize_layer(fmt, parts, (lin.out_features, lin.in_features), layer=group, name=info.path.name)
                bias_key = f"{group}.bias"
                bias = None
                if lin.bias is not None:
                    bias = _cast(h.get_tensor(info.sources[bias_key][1]), targets[to_diffusers[bias_key]]).to(dev)
                q = QuantLinear(fmt, {k: v.to(dev) for k, v in parts.items()}, bias, lin.in_features, lin.out_features,
                                mode=modes[fmt], layer=group)
                parent_name, _, leaf = mod_name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, leaf, q)
                continue
            mod_name, _, leaf = name.rpartition(".")
            if leaf == "bias" and isinstance(model.get_submodule(mod_name), QuantLinear):
                continue  # loaded with its layer
            t = h.get_tensor(info.sources[official_key][1])
            want = targets[name]
            meta = model.get_parameter(name) if not isinstance(model.get_submodule(mod_name), QuantLinear) else None
            if meta is not None and tuple(t.shape) != tuple(meta.shape):
                raise WanMeterError(f"{info.path.name}: tensor {official_key} has shape {list(t.shape)}, expected "
                                    f"{list(meta.shape)}. The file is corrupt or mixed: download it again.")
            _set_tensor(model, name, _cast(t, want).to(dev) if t.dtype != want else t.clone().to(dev))
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    model.wanmeter_quantized = ", ".join(sorted(set(info.quant.values())))
    return LoadedDiT(model=model, info=info, weight_dtype=torch.uint8, compute_dtype=compute_dtype)
