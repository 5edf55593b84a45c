"""Real-size safetensors files with a true header and no data (sparse files).

Why: inspecting a 14B checkpoint reads only its header, so tests of variant detection, config
building, parameter counts and file-size estimates can run against the exact real layout
(data/official_keys/*.json) without 28 GB of weights. The data region is created with truncate,
so it takes no disk space on filesystems with sparse files. Loading such a file is an error.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..loader.dit_keys import official_layout
from ..loader.safetensors_io import DTYPE_BYTES


def write_header_only(path: str | os.PathLike, layout: dict[str, tuple[str, tuple[int, ...]]],
                      metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file whose header describes `layout` {key: (dtype, shape)}; data is zeros (sparse)."""
    header: dict[str, object] = {}
    offset = 0
    for key in sorted(layout):
        dtype, shape = layout[key]
        n = math.prod(shape) * DTYPE_BYTES[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    p = Path(path)
    with open(p, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return p


def write_fake_release(variant: str, path: str | os.PathLike, *, dtype: str = "BF16", fp8_scaled: bool = False,
                       prefix: str = "") -> Path:
    """A header-only copy of a real Wan2.2 DiT file (ComfyUI layout, official keys, real shapes)."""
    layout: dict[str, tuple[str, tuple[int, ...]]] = {}
    for k, shape in official_layout(variant).items():
        if fp8_scaled and k.startswith("blocks.") and len(shape) == 2:
            layout[prefix + k] = ("F8_E4M3", shape)
            layout[prefix + k[: -len(".weight")] + ".scale_weight"] = ("F32", ())
        else:
            layout[prefix + k] = (dtype, shape)
    if fp8_scaled:
        layout[prefix + "scaled_fp8"] = ("F8_E4M3", (0,))
    return write_header_only(path, layout)
