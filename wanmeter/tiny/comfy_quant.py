"""Tiny Wan2.2 DiTs in ComfyUI's per-layer quantized format and kijai's fp8_e4m3fn_scaled naming.

comfy_quant files are written with comfy-kitchen's own layout code (`quantize_for_fixture`:
the layouts ComfyUI registers in comfy/quant_ops.py, serialized with their `state_dict_tensors`),
the tensors of ComfyUI's format: `L.weight`, `L.weight_scale`[, `L.weight_scale_2`] and the
`L.comfy_quant` JSON. The NVFP4 file also carries the header's `_quantization_metadata`; the
INT8 file has *only* that header entry (no comfy_quant tensors), as older converters wrote it.
What gets quantized: the 2-D linear weights of the transformer blocks (what ComfyUI's and kijai's
converters quantize; embeddings, head, norms and the modulation tables stay float).

kijai's WanVideo_comfy `*_fp8_e4m3fn_scaled_KJ` files: official key names with no prefix and no
`scaled_fp8` marker, block linears in fp8 with a `scale_weight` beside each (the convention
kijai's loader reads: scale_key = key.replace(".weight", ".scale_weight")), norms and modulation
kept in fp32.
The weights are those of the bf16 tiny fixtures (`tiny_official_state_dict`), so tests compare
against the float model.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import register
from .dit import _FILE_STEM, tiny_official_state_dict

VERSION = "1"
CQ_FORMATS = ("float8_e4m3fn", "int8_tensorwise", "mxfp8", "nvfp4")
_SHORT = {"float8_e4m3fn": "fp8", "int8_tensorwise": "int8", "mxfp8": "mxfp8", "nvfp4": "nvfp4"}


def _quantized(key: str, t) -> bool:
    return key.startswith("blocks.") and key.endswith(".weight") and t.ndim == 2


def cq_fixture_name(fmt: str) -> str:
    return f"dit_t2v_high_cq_{_SHORT[fmt]}"


def _cq_writer(fmt: str):
    def write(dest: Path) -> None:
        from safetensors.torch import save_file

        from ..loader.comfy_quant import quantize_for_fixture

        sd = tiny_official_state_dict("t2v_a14b", "high")
        out, layers = {}, {}
        for k, t in sd.items():
            if _quantized(k, t):
                group = k[: -len(".weight")]
                for leaf, v in quantize_for_fixture(fmt, t).items():
                    if leaf == "comfy_quant" and fmt == "int8_tensorwise":
                        continue  # header metadata only
                    out[f"{group}.{leaf}"] = v
                layers[group] = {"format": fmt}
            else:
                out[k] = t
        meta = {"wanmeter_tiny": f"t2v_a14b/high/comfy_quant_{fmt}/v{VERSION}"}
        if fmt in ("int8_tensorwise", "nvfp4"):
            meta["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
        save_file(out, str(dest), metadata=meta)
    return write


def _kj_writer(dest: Path) -> None:
    import torch
    from safetensors.torch import save_file

    sd = tiny_official_state_dict("t2v_a14b", "high")
    out = {}
    fmax = torch.finfo(torch.float8_e4m3fn).max
    for k, t in sd.items():
        if _quantized(k, t):
            w = t.float()
            scale = (w.abs().max() / fmax).reshape(1)
            out[k] = (w / scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn)
            out[k[: -len(".weight")] + ".scale_weight"] = scale
        elif "norm" in k or k.endswith("modulation"):
            out[k] = t.float()
        else:
            out[k] = t
    save_file(out, str(dest), metadata={"wanmeter_tiny": f"t2v_a14b/high/kj_fp8_e4m3fn_scaled/v{VERSION}"})


def _register_all() -> None:
    stem = _FILE_STEM["t2v_a14b"] + "_high_noise_14B"
    for fmt in CQ_FORMATS:
        register(cq_fixture_name(fmt), _cq_writer(fmt), f"diffusion_models/{stem}_{_SHORT[fmt]}_comfy_quant.safetensors",
                 version=VERSION)
    register("dit_t2v_high_kj_fp8_scaled", _kj_writer,
             f"diffusion_models/Wan2_2-{stem}_fp8_e4m3fn_scaled_KJ.safetensors", version=VERSION)


_register_all()
