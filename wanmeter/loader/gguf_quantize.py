"""Quantize float arrays into GGUF blocks (numpy): Q8_0/Q4_0 via the `gguf` package, K-quants here.

Why this exists: tests and the GPU bench need Wan DiTs in the K-quant types people actually
download (Q4_K_M, Q5_K_M, Q6_K), and the `gguf` Python package can only *dequantize* K types.
The encoders below write blocks in exactly the byte layout that `gguf.quants.dequantize` (and
diffusers' torch port of it) reads, using a simple round-to-nearest search (llama.cpp's
encoder optimises the scales further; the format is the same, only the error is a bit larger).
Correctness is pinned by round trips through gguf's own dequantizer (tests/test_gguf_quants.py).

Layouts (256 weights per super-block, 8 sub-blocks of 32 or 16 groups of 16):
- Q4_K (144 B): f16 d, f16 dmin, 12 B of packed 6-bit scales/mins, 128 B of 4-bit codes;
  w = d*sc[j]*q - dmin*m[j].
- Q5_K (176 B): as Q4_K plus 32 B holding the 5th bit of every code.
- Q6_K (210 B): 128 B low nibbles, 64 B high 2-bit pairs, 16 int8 scales, f16 d;
  w = d*sc[g]*(q-32).
The "_M" files mix types per tensor; `mixed_type` encodes the mix used by our fixtures.
"""
from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
# file type name -> (main tensor type, type of the tensors the mix keeps at higher precision)
MIXES = {"Q4_K_M": ("Q4_K", "Q6_K"), "Q5_K_M": ("Q5_K", "Q6_K"), "Q6_K": ("Q6_K", "Q6_K"),
         "Q8_0": ("Q8_0", "Q8_0"), "Q4_0": ("Q4_0", "Q4_0")}


def mixed_type(file_type: str, key: str) -> str:
    """Tensor type of official key `key` in a file of `file_type`.

    The _M mixes keep the FFN down-projection (`ffn.2`) and the self-attention value projection
    at Q6_K, as llama.cpp's _M recipes do for their down/value projections.
    """
    main, high = MIXES[file_type]
    if key.endswith(("ffn.2.weight", "self_attn.v.weight")):
        return high
    return main


def _round(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _pack_scale_min(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins per block -> the 12-byte packing of Q4_K/Q5_K."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _affine_subblocks(x: np.ndarray, qmax: int) -> tuple[np.ndarray, ...]:
    """Per-sub-block scale/min for codes 0..qmax, the 6-bit quantized scales and mins, and codes.

    x: [n, 8, 32]. Returns (d f16 [n], dmin f16 [n], sc [n,8], mn [n,8], q [n,8,32]).
    """
    lo = np.minimum(x.min(axis=2), 0.0)                  # [n, 8], the mins are stored positive
    hi = x.max(axis=2)
    scale = (hi - lo) / qmax
    mins = -lo
    d = _f16(scale.max(axis=1) / 63.0)
    dmin = _f16(mins.max(axis=1) / 63.0)
    df, dmf = d.astype(np.float32), dmin.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(df[:, None] > 0, np.clip(_round(scale / df[:, None]), 0, 63), 0)
        mn = np.where(dmf[:, None] > 0, np.clip(_round(mins / dmf[:, None]), 0, 63), 0)
        eff_d = (df[:, None] * sc)[:, :, None]
        eff_m = (dmf[:, None] * mn)[:, :, None]
        q = np.where(eff_d > 0, _round((x + eff_m) / eff_d), 0)
    q = np.clip(q, 0, qmax).astype(np.uint8)
    return d, dmin, sc, mn, q


def _blocks(data: np.ndarray) -> np.ndarray:
    a = np.asarray(data, dtype=np.float32)
    if a.shape[-1] % QK_K:
        raise ValueError(f"K-quants need rows that are a multiple of {QK_K} values, got {a.shape[-1]}")
    return a.reshape(-1, QK_K)


def quantize_q4_k(data: np.ndarray) -> np.ndarray:
    x = _blocks(data)
    n = x.shape[0]
    d, dmin, sc, mn, q = _affine_subblocks(x.reshape(n, 8, 32), 15)
    # code j of sub-block 2i+s sits in byte 32i+j, low nibble for s=0, high nibble for s=1
    q = q.reshape(n, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(n, 128)
    out = np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8),
                          _pack_scale_min(sc, mn), qs], axis=1)
    return out.reshape(*np.shape(data)[:-1], -1)


def quantize_q5_k(data: np.ndarray) -> np.ndarray:
    x = _blocks(data)
    n = x.shape[0]
    d, dmin, sc, mn, q = _affine_subblocks(x.reshape(n, 8, 32), 31)
    low = (q & 0x0F).reshape(n, 4, 2, 32)
    qs = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(n, 128)
    high = (q >> 4) & 0x01                                # [n, 8, 32]: bit j of byte l is sub-block j
    qh = np.zeros((n, 32), dtype=np.uint8)
    for j in range(8):
        qh |= (high[:, j, :] << j).astype(np.uint8)
    out = np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8),
                          _pack_scale_min(sc, mn), qh, qs], axis=1)
    return out.reshape(*np.shape(data)[:-1], -1)


def quantize_q6_k(data: np.ndarray) -> np.ndarray:
    x = _blocks(data)
    n = x.shape[0]
    g = x.reshape(n, 16, 16)
    amax = np.abs(g).max(axis=2)                          # [n, 16]
    scale = amax / 31.0
    d = _f16(scale.max(axis=1) / 127.0)
    df = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(df[:, None] > 0, np.clip(_round(scale / df[:, None]), 0, 127), 0)
        eff = (df[:, None] * sc)[:, :, None]
        q = np.where(eff > 0, _round(g / eff), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, QK_K)   # codes 0..63, element order
    # element e = 128h + 64s + b (b < 64): low nibble in ql[64h + b] (nibble s);
    # element e = 128h + 32k + l (l < 32): high 2 bits in qh[32h + l] (bits 2k, 2k+1)
    q4 = q.reshape(n, 2, 2, 64)
    ql = ((q4[:, :, 0, :] & 0x0F) | ((q4[:, :, 1, :] & 0x0F) << 4)).reshape(n, 128)
    hi = (q >> 4).reshape(n, 2, 4, 32)
    qh = (hi[:, :, 0, :] | (hi[:, :, 1, :] << 2) | (hi[:, :, 2, :] << 4) | (hi[:, :, 3, :] << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh.astype(np.uint8), sc.astype(np.int8).view(np.uint8),
                          d.reshape(n, 1).view(np.uint8)], axis=1)
    return out.reshape(*np.shape(data)[:-1], -1)


_K_ENCODERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def quantize(data: np.ndarray, qtype: str) -> np.ndarray:
    """Quantize the last axis of `data` into GGUF blocks of `qtype` (uint8 rows, as GGUF stores them)."""
    if qtype in _K_ENCODERS:
        return _K_ENCODERS[qtype](data)
    import gguf

    return gguf.quants.quantize(np.asarray(data, dtype=np.float32), gguf.GGMLQuantizationType[qtype])


def block_size(qtype: str) -> int:
    """Values per block of a GGUF type (32 for Q8_0/Q4_0, 256 for K-quants, 1 for F16/F32)."""
    import gguf

    return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0])
