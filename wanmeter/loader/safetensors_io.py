"""Reading safetensors files defensively.

Users point the loader at whatever is in their models folder: half-downloaded files, .ckpt
pickles renamed to .safetensors, GGUF files. We read the header ourselves first (it is a tiny
JSON block) so we can say exactly what is wrong before any tensor is allocated.
"""
from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WanMeterError
from ..safejson import json_depth

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


_MAX_DEPTH = 3          # {"tensor": {"shape": [..]}} is 3 deep; a real header never goes deeper
_MAX_RANK = 8
_CACHE: dict[tuple, SafetensorsHeader] = {}
_CACHE_MAX = 256


def _bad(p: Path, detail: str) -> WanMeterError:
    """The one error for a malformed safetensors file: what is wrong, then the fix."""
    return WanMeterError(f"{p.name} is not a valid safetensors file: {detail}. The file is damaged, truncated or in "
                         "another format: download it again (or convert it to .safetensors).")


def check_regular_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """os.stat of a path that must be a regular file, before anything opens it: a FIFO would block
    open() forever, a device or a directory is never a model; symlinks are followed (a loop is an
    error). Returns the stat (size and mtime key the header cache)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise WanMeterError(f"{p} does not exist. Check the file name and your models folder.") from None
    except OSError as e:  # ELOOP (symlink loop), ENAMETOOLONG, EACCES ...
        raise WanMeterError(f"{p} cannot be read ({e.strerror or e}). Check the file (a broken or looping "
                            "symlink?) and your models folder.") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "a device or socket")
        raise WanMeterError(f"{p.name} is {kind}, not a regular {what}. Put the real file in your models folder.")
    return st


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header without reading tensor data.

    Validates everything safetensors itself checks before it maps the data (JSON object of bounded
    depth, known dtypes, shapes whose byte count matches the offsets, offsets contiguous from 0 to
    the end of the file), so a file that passes never reaches a loader as a raw safetensors error,
    IndexError or RecursionError. Raises one fix-naming WanMeterError. Cached on (path, size, mtime).
    """
    p = Path(path)
    st = check_regular_file(p, "safetensors file")
    key = (os.path.abspath(p), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    hdr = _parse(p, st.st_size)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = hdr
    return hdr


def _parse(p: Path, size: int) -> SafetensorsHeader:
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WanMeterError(f"{p.name} is empty or truncated ({size} bytes). Download it again.")
        if head[:4] == b"GGUF":
            raise WanMeterError(f"{p.name} is a GGUF file with a .safetensors name. Rename it to .gguf.")
        (n,) = struct.unpack("<Q", head)
        pickle = head[:1] == b"\x80" and head[1] in (2, 3, 4, 5)  # pickle protocol 2..5 opcode
        zipped = head[:4] == b"PK\x03\x04" and head[4:8] != b"\0\0\0\0"  # torch.save's zip container
        if zipped or (pickle and (n > _MAX_HEADER or n + 8 > size)):
            raise WanMeterError(f"{p.name} is a PyTorch pickle checkpoint (.ckpt/.pt) renamed to .safetensors. WanMeter "
                                "never unpickles files (they can run code): download the .safetensors release.")
        if n <= 1 or n > _MAX_HEADER or n + 8 > size:
            raise WanMeterError(
                f"{p.name} is not a valid safetensors file (bad header length {n} for a file of {size} bytes). "
                "It is truncated or in another format (.ckpt/.pt pickles are not supported): download it again "
                "or convert it to safetensors."
            )
        raw = f.read(n)
    if len(raw) != n:
        raise _bad(p, f"the header is cut short ({len(raw)} of {n} bytes)")
    if json_depth(raw) > _MAX_DEPTH:
        raise _bad(p, f"the header nests deeper than {_MAX_DEPTH} levels")
    try:
        hdr = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WanMeterError(f"{p.name} has a corrupt safetensors header ({e}). Download it again.") from None
    if not isinstance(hdr, dict):
        raise WanMeterError(f"{p.name} has a corrupt safetensors header. Download it again.")
    metadata = hdr.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad(p, "__metadata__ is not a map of text to text")
    tensors: dict[str, TensorMeta] = {}
    data_len = size - 8 - n
    for k, v in hdr.items():
        tensors[k] = _entry(p, k, v, data_len)
    spans = sorted((m.offsets, k) for k, m in tensors.items())
    pos = 0
    for (begin, end), k in spans:
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise _bad(p, f"tensor {k!r} starts at byte {begin}, which {what}")
        pos = end
    if pos != data_len:
        raise _bad(p, f"the tensors cover {pos} bytes but the file holds {data_len} bytes of data")
    return SafetensorsHeader(p, tensors, dict(metadata), size)


def _entry(p: Path, k: str, v: Any, data_len: int) -> TensorMeta:
    if not isinstance(v, dict):
        raise WanMeterError(f"{p.name} has a corrupt entry for tensor {k!r}. Download it again.")
    dtype, shape, offsets = v.get("dtype"), v.get("shape"), v.get("data_offsets")
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2 or not all(
            type(x) is int for x in shape + offsets):
        raise WanMeterError(f"{p.name} has a corrupt entry for tensor {k!r}. Download it again.")
    if dtype not in DTYPE_BYTES:
        raise _bad(p, f"tensor {k!r} has the unknown dtype {dtype!r}")
    if len(shape) > _MAX_RANK or any(s < 0 for s in shape):
        raise _bad(p, f"tensor {k!r} has the impossible shape {shape[:_MAX_RANK + 1]}")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise _bad(p, f"tensor {k!r} has reversed or negative offsets [{begin}, {end}]")
    if end > data_len:
        raise WanMeterError(
            f"{p.name} is truncated: tensor {k!r} ends at byte {end} but the file holds "
            f"{data_len} bytes of data. Download it again (the download was probably interrupted)."
        )
    meta = TensorMeta(dtype, tuple(shape), (begin, end))
    if meta.numel * DTYPE_BYTES[dtype] != end - begin:
        raise _bad(p, f"tensor {k!r} is {dtype} {list(shape)} ({meta.numel * DTYPE_BYTES[dtype]} bytes) but its "
                      f"offsets span {end - begin} bytes")
    return meta


def check_finite(t: Any, key: str, path: str | os.PathLike, sample: int = 65536) -> None:
    """Refuse a tensor holding NaN/Inf, naming the file: a strided sample of at most `sample`
    values (every value of small tensors), so the check costs little next to reading the data.
    NaN weights otherwise load silently and sample to an all-NaN latent."""
    import torch

    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
        return
    flat = t.reshape(-1)
    step = max(1, flat.numel() // sample)
    part = flat[::step].float()
    if not bool(torch.isfinite(part).all()):
        raise WanMeterError(f"{Path(path).name} holds NaN/Inf values (tensor {key!r}): the file is corrupt or was saved "
                            "from a diverged model. Download it again.")


def strip_prefix(keys: list[str] | dict[str, Any], prefixes: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.")) -> str:
    """Return the common wrapper prefix used by a checkpoint ('' if none)."""
    names = list(keys)
    for pre in prefixes:
        if names and all(k.startswith(pre) for k in names if not k.startswith("__")):
            return pre
    return ""
