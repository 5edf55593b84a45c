"""Tiny random Wan2.2 DiTs written exactly like the released ComfyUI files, only smaller.

Why: every loader, sampler and node test needs DiT files in the real layout (official key names,
bf16 tensors, the fp8_scaled variant) without 14B of weights. Each fixture is a diffusers
`WanTransformer3DModel` with the tiny sizes of spec.TINY_DIT and a fixed seed, its weights
rounded to bf16, written through the inverse of diffusers' key conversion. The same model can be
rebuilt in memory with `tiny_reference_model`, so tests compare the loader against it.
Weights get realistic scales (linears N(0, 0.02), norm gains near 1) so outputs are not degenerate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import register
from .spec import SEED, TINY_DIT

VERSION = "1"
# variant -> (in_channels, out_channels, experts)
_VARIANTS: dict[str, tuple[int, int, tuple[str | None, ...]]] = {
    "t2v_a14b": (16, 16, ("high", "low")),
    "i2v_a14b": (36, 16, ("high", "low")),
    "ti2v_5b": (48, 48, (None,)),
}
_FILE_STEM = {"t2v_a14b": "tiny_wan2.2_t2v", "i2v_a14b": "tiny_wan2.2_i2v", "ti2v_5b": "tiny_wan2.2_ti2v_5B"}


def tiny_dit_config(variant: str) -> dict[str, Any]:
    """diffusers WanTransformer3DModel config of the tiny model for `variant`."""
    in_ch, out_ch, _ = _VARIANTS[variant]
    return {
        "patch_size": [1, 2, 2],
        "num_attention_heads": TINY_DIT["dim"] // 128,
        "attention_head_dim": 128,
        "in_channels": in_ch,
        "out_channels": out_ch,
        "text_dim": TINY_DIT["text_dim"],
        "freq_dim": TINY_DIT["freq_dim"],
        "ffn_dim": TINY_DIT["ffn_dim"],
        "num_layers": TINY_DIT["num_layers"],
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }


def _seed(variant: str, expert: str | None) -> int:
    return SEED + 100 * list(_VARIANTS).index(variant) + {None: 0, "high": 1, "low": 2}[expert]


def tiny_reference_model(variant: str, expert: str | None = None):
    """The float32 diffusers model a tiny fixture is written from (weights already bf16-rounded)."""
    import torch
    from diffusers import WanTransformer3DModel

    if expert not in _VARIANTS[variant][2]:
        raise ValueError(f"{variant} has experts {_VARIANTS[variant][2]}, not {expert!r}")
    g = torch.Generator().manual_seed(_seed(variant, expert))
    model = WanTransformer3DModel(**tiny_dit_config(variant)).eval()
    dim = TINY_DIT["dim"]
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            leaf = name.split(".")[-2] if name.count(".") else name
            if name.endswith("scale_shift_table"):
                v = torch.randn(p.shape, generator=g) / dim**0.5
            elif ("norm" in leaf) and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = 0.02 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(torch.bfloat16).to(torch.float32))
    return model


def tiny_official_state_dict(variant: str, expert: str | None = None) -> dict[str, Any]:
    """The fixture's tensors under official key names, bf16 (what the .safetensors file holds)."""
    import torch

    from ..loader.dit_keys import diffusers_to_official

    model = tiny_reference_model(variant, expert)
    sd = model.state_dict()
    names = diffusers_to_official(sd.keys(), TINY_DIT["num_layers"])
    return {o: sd[d].to(torch.bfloat16).contiguous() for o, d in sorted(names.items())}


def _is_block_linear(key: str, t) -> bool:
    """What ComfyUI stores as fp8 in its fp8_scaled Wan files: the 2-D linear weights of the blocks."""
    return key.startswith("blocks.") and t.ndim == 2


def _writer(variant: str, expert: str | None, scaled: bool):
    def write(dest: Path) -> None:
        from safetensors.torch import save_file

        from ..loader.fp8_scaled import quantize_scaled_fp8

        sd = tiny_official_state_dict(variant, expert)
        if scaled:
            sd = quantize_scaled_fp8(sd, _is_block_linear)
        meta = {"wanmeter_tiny": f"{variant}/{expert or 'single'}/{'fp8_scaled' if scaled else 'bf16'}/v{VERSION}"}
        save_file(sd, str(dest), metadata=meta)
    return write


def _gguf_writer(variant: str, expert: str | None, qtype: str):
    """city96-style GGUF: block linears quantized, other 2-D+ tensors F16, 1-D F32; 5-D tensors
    flattened to 4-D with their real shape in `comfy.gguf.orig_shape.<name>`."""
    def write(dest: Path) -> None:
        import gguf
        import numpy as np

        q = gguf.GGMLQuantizationType[qtype]
        w = gguf.GGUFWriter(str(dest), arch="wan")
        w.add_string("wanmeter_tiny", f"{variant}/{expert or 'single'}/{qtype}/v{VERSION}")
        for k, t in tiny_official_state_dict(variant, expert).items():
            a = t.float().numpy()
            if _is_block_linear(k, t):
                w.add_tensor(k, gguf.quants.quantize(a, q), raw_dtype=q)
            elif a.ndim == 1:
                w.add_tensor(k, a.astype(np.float32))
            else:
                if a.ndim > 4:
                    w.add_array(f"comfy.gguf.orig_shape.{k}", list(a.shape))
                    a = a.reshape(a.shape[0], -1)
                w.add_tensor(k, a.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return write


def fixture_name(variant: str, expert: str | None = None, scaled: bool = False) -> str:
    """Registry name, e.g. dit_t2v_high, dit_i2v_low_fp8_scaled, dit_ti2v."""
    short = variant.split("_")[0]
    return f"dit_{short}" + (f"_{expert}" if expert else "") + ("_fp8_scaled" if scaled else "")


def _register_all() -> None:
    for variant, (_, _, experts) in _VARIANTS.items():
        for expert in experts:
            for scaled in (False, True):
                stem = _FILE_STEM[variant] + (f"_{expert}_noise" if expert else "")
                rel = f"diffusion_models/{stem}{'_fp8_scaled' if scaled else ''}.safetensors"
                register(fixture_name(variant, expert, scaled), _writer(variant, expert, scaled), rel, version=VERSION)
    # GGUF (inspection only for now): one A14B expert in Q8_0, the 5B in Q4_0
    register("dit_t2v_high_q8_0", _gguf_writer("t2v_a14b", "high", "Q8_0"),
             "diffusion_models/tiny_wan2.2_t2v_high_noise-Q8_0.gguf", version=VERSION)
    register("dit_ti2v_q4_0", _gguf_writer("ti2v_5b", None, "Q4_0"),
             "diffusion_models/tiny_wan2.2_ti2v_5B-Q4_0.gguf", version=VERSION)


_register_all()
