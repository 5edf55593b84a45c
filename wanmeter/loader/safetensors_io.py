"""Reading safetensors files defensively.

Users point the loader at whatever is in their models folder: half-downloaded files, .ckpt
pickles renamed to .safetensors, GGUF files. We read the header ourselves first (it is a tiny
JSON block) so we can say exactly what is wrong before any tensor is allocated.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WanMeterError

# safetensors dtype strings -> bytes per element
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
    "F8_E8M0": 1,  # MXFP8 block scales (ComfyUI comfy_quant files)
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorMeta:
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorMeta]
    metadata: dict[str, str]
    file_bytes: int


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header without reading tensor data.

    Raises WanMeterError naming the fix for missing, truncated or foreign files.
    """
    p = Path(path)
    if not p.is_file():
        raise WanMeterError(f"{p} does not exist or is not a file. Check the file name and your models folder.")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WanMeterError(f"{p.name} is empty or truncated ({size} bytes). Download it again.")
        if head[:4] == b"GGUF":
            raise WanMeterError(f"{p.name} is a GGUF file with a .safetensors name. Rename it to .gguf.")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > _MAX_HEADER or n + 8 > size:
            raise WanMeterError(
                f"{p.name} is not a valid safetensors file (bad header length {n} for a file of {size} bytes). "
                "It is truncated or in another format (.ckpt/.pt pickles are not supported): download it again "
                "or convert it to safetensors."
            )
        raw = f.read(n)
    try:
        hdr = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WanMeterError(f"{p.name} has a corrupt safetensors header ({e}). Download it again.") from None
    if not isinstance(hdr, dict):
        raise WanMeterError(f"{p.name} has a corrupt safetensors header. Download it again.")
    metadata = hdr.pop("__metadata__", None) or {}
    tensors: dict[str, TensorMeta] = {}
    data_len = size - 8 - n
    for k, v in hdr.items():
        try:
            meta = TensorMeta(str(v["dtype"]), tuple(int(s) for s in v["shape"]), tuple(v["data_offsets"]))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise WanMeterError(f"{p.name} has a corrupt entry for tensor {k!r}. Download it again.") from None
        if meta.offsets[1] > data_len:
            raise WanMeterError(
                f"{p.name} is truncated: tensor {k!r} ends at byte {meta.offsets[1]} but the file holds "
                f"{data_len} bytes of data. Download it again (the download was probably interrupted)."
            )
        tensors[k] = meta
    return SafetensorsHeader(p, tensors, dict(metadata), size)


def strip_prefix(keys: list[str] | dict[str, Any], prefixes: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.")) -> str:
    """Return the common wrapper prefix used by a checkpoint ('' if none)."""
    names = list(keys)
    for pre in prefixes:
        if names and all(k.startswith(pre) for k in names if not k.startswith("__")):
            return pre
    return ""
