"""Tiny GGUF Wan2.2 DiTs in the quant types people download: Q4_K_M, Q5_K_M, Q6_K, Q8_0.

Written the way city96's current converter lays out Wan files: official key names, 1-D tensors
in F32, every other tensor quantized; tensors whose rows do not split into whole quant blocks
(the 5-D patch_embedding, the [1, 6, dim] modulation tables) are flattened to rows of 256
values with their real shape in `comfy.gguf.orig_shape.<name>`. Quantizing the non-block
tensors too (embeddings, time projection, head) exercises every path of the loader: GGUF
linears, linears diffusers keeps in fp32, and reshaped non-linear tensors.
The weights are those of the bf16 tiny fixtures (`tiny_reference_model`), so a test can compare
a loaded GGUF model against the float model it came from.
"""
from __future__ import annotations

from pathlib import Path

from . import register
from .dit import _FILE_STEM, tiny_official_state_dict

VERSION = "1"
FILE_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
_ROW = 256


def gguf_fixture_name(variant: str, file_type: str, expert: str | None = None) -> str:
    """e.g. dit_ti2v_gguf_q4_k_m, dit_t2v_high_gguf_q8_0."""
    return f"dit_{variant.split('_')[0]}" + (f"_{expert}" if expert else "") + f"_gguf_{file_type.lower()}"


def write_gguf_dit(dest: Path, state_dict: dict, file_type: str, *, tag: str = "") -> None:
    """Write an official-key state dict (torch tensors) as a city96-layout GGUF of `file_type`."""
    import gguf
    import numpy as np

    from ..loader.gguf_quantize import block_size, mixed_type, quantize

    w = gguf.GGUFWriter(str(dest), arch="wan")
    if tag:
        w.add_string("wanmeter_tiny", tag)
    for k, t in state_dict.items():
        a = t.float().numpy()
        if a.ndim == 1:
            w.add_tensor(k, a.astype(np.float32))
            continue
        qtype = mixed_type(file_type, k)
        if a.ndim > 2 or a.shape[-1] % block_size(qtype):
            if a.size % _ROW:
                w.add_tensor(k, a.astype(np.float16))
                continue
            w.add_array(f"comfy.gguf.orig_shape.{k}", [int(s) for s in a.shape])
            a = a.reshape(-1, _ROW)
        w.add_tensor(k, quantize(a, qtype), raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _writer(variant: str, expert: str | None, file_type: str):
    def write(dest: Path) -> None:
        write_gguf_dit(dest, tiny_official_state_dict(variant, expert), file_type,
                       tag=f"{variant}/{expert or 'single'}/{file_type}/v{VERSION}")
    return write


def _register_all() -> None:
    for ft in FILE_TYPES:
        register(gguf_fixture_name("ti2v_5b", ft), _writer("ti2v_5b", None, ft),
                 f"diffusion_models/{_FILE_STEM['ti2v_5b']}-{ft}.gguf", version=VERSION)
    register(gguf_fixture_name("t2v_a14b", "Q4_K_M", "high"), _writer("t2v_a14b", "high", "Q4_K_M"),
             f"diffusion_models/{_FILE_STEM['t2v_a14b']}_high_noise-Q4_K_M.gguf", version=VERSION)


_register_all()
