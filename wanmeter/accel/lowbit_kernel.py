"""The Triton kernel behind wanmeter.accel.lowbit_attention (imported only where Triton is).

Kept at module level, not built inside a function: torch.compile's Inductor recompiles user
Triton kernels in worker processes from their source module, where nested definitions do not
exist.

One program computes BLOCK_M query rows of one (batch, head) against all keys, FlashAttention-
style (online softmax, K/V tiles streamed). Per tile the work besides the two tensor-core dots
is elementwise over BLOCK_M x BLOCK_N scores, and at 8-bit tensor-core rates that part, not the
dots, sets the speed: a 128x128 tile's dots take about as long as 16K exp2 on the special-
function unit. Hence three constexpr switches, each measured by bench/attention_kernels.py:
  MAGIC_I2F  int32 scores -> fp32 by adding 0x4B400000 and reinterpreting the bits (exact for
             |x| < 2^22; int8 x int8 x 128 channels stays under 2^21), which runs on the
             integer/FMA pipes instead of the conversion unit; the offset folds into the FMA that
             applies the scales and subtracts the running max.
  EXP16      exp2 in half precision, two values per instruction (ex2.approx.f16x2). P is stored
             as fp8 (3 mantissa bits) right after, so fp16's 10 bits lose nothing.
  P x 256    folded into the exponent (+8), so P lands in [0, 256], clear of e4m3's subnormals;
             the row sums carry the same factor and it cancels in the final division.
"""
from __future__ import annotations

import triton
import triton.language as tl

MAGIC_INT = 0x4B400000          # bits of 12582912.0 (1.5 * 2^23)
MAGIC_FLOAT = 12582912.0


@triton.jit
def _exp2_f16(x):
    return tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [x], dtype=tl.float16, is_pure=True, pack=2)


@triton.jit
def _tile(acc, l_i, m_i, q, k, vt, scale, n0, S_KV,
          BLOCK_N: tl.constexpr, QK_INT8: tl.constexpr, MASK: tl.constexpr, PV_IN_DOT: tl.constexpr,
          MAGIC_I2F: tl.constexpr, EXP16: tl.constexpr):
    """One K/V tile: scores, online-softmax update, P.V. k is [BLOCK_N, D], vt is [D, BLOCK_N]."""
    if QK_INT8:
        si = tl.dot(q, tl.trans(k), out_dtype=tl.int32)
        if MAGIC_I2F:
            s = (si + 0x4B400000).to(tl.float32, bitcast=True)
            offset = 12582912.0 * scale
        else:
            s = si.to(tl.float32)
            offset = 0.0
    else:
        s = tl.dot(q, tl.trans(k))
        offset = 0.0
    if MASK:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = tl.where(offs_n[None, :] < S_KV, s, float("-inf"))
    # scale > 0, so the max of the scaled scores is the scaled max of the raw ones
    m_new = tl.maximum(m_i, tl.max(s, 1) * scale - offset)
    alpha = tl.math.exp2(m_i - m_new)
    arg = s * scale - (offset + m_new - 8.0)[:, None]  # one FMA per score; +8 = x256
    if EXP16:
        p = _exp2_f16(arg.to(tl.float16))
    else:
        p = tl.math.exp2(arg)
    l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
    p8 = p.to(tl.float8e4nv)
    if PV_IN_DOT:
        acc = tl.dot(p8, tl.trans(vt), acc * alpha[:, None])
    else:
        acc = acc * alpha[:, None] + tl.dot(p8, tl.trans(vt))
    return acc, l_i, m_new


@triton.jit
def _store_out(acc, l_i, VS, O, b, h, H, offs_m, offs_d, so_b, so_s, so_h, S_Q, HEAD_D: tl.constexpr):
    """Normalize by the row sums, undo V's per-channel scale, store rows < S_Q in [B, S, H, D]."""
    vs = tl.load(VS + (b * H + h) * HEAD_D + offs_d)
    out = acc / l_i[:, None] * vs[None, :]
    o_ptrs = O + b * so_b + h * so_h + offs_m[:, None] * so_s + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < S_Q)


@triton.jit
def attn_fwd(Q, K, VT, QS, KS, VS, O,
             sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_h, sv_d, so_b, so_s, so_h,
             H, NQB, NKB, S_Q, S_KV,
             HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             QK_INT8: tl.constexpr, PV_IN_DOT: tl.constexpr, MAGIC_I2F: tl.constexpr, EXP16: tl.constexpr,
             WS: tl.constexpr):
    """Pointer-based loads (any strides with contiguous channels)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_s + offs_d[None, :])
    q_scale = tl.load(QS + (b * NQB + pid_m) * H + h)
    k_ptrs = K + b * sk_b + h * sk_h + offs_n[:, None] * sk_s + offs_d[None, :]
    v_ptrs = VT + b * sv_b + h * sv_h + offs_d[:, None] * sv_d + offs_n[None, :]
    ks_ptr = KS + b * NKB * H + h
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    n_full = S_KV // BLOCK_N
    for j in tl.range(n_full, warp_specialize=WS):
        scale = q_scale * tl.load(ks_ptr + j * H)
        k = tl.load(k_ptrs + j * BLOCK_N * sk_s)
        vt = tl.load(v_ptrs + j * BLOCK_N)
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k, vt, scale, 0, S_KV,
                              BLOCK_N, QK_INT8, False, PV_IN_DOT, MAGIC_I2F, EXP16)
    if n_full * BLOCK_N < S_KV:
        scale = q_scale * tl.load(ks_ptr + n_full * H)
        k = tl.load(k_ptrs + n_full * BLOCK_N * sk_s)
        vt = tl.load(v_ptrs + n_full * BLOCK_N)
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k, vt, scale, n_full * BLOCK_N, S_KV,
                              BLOCK_N, QK_INT8, True, PV_IN_DOT, MAGIC_I2F, EXP16)
    _store_out(acc, l_i, VS, O, b, h, H, offs_m, offs_d, so_b, so_s, so_h, S_Q, HEAD_D)


@triton.jit
def attn_fwd_tma(desc_q, desc_k, desc_vt, QS, KS, VS, O, so_b, so_s, so_h,
                 H, NQB, NKB, S_Q, S_KV, S_QPAD, S_KPAD,
                 HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 QK_INT8: tl.constexpr, PV_IN_DOT: tl.constexpr, MAGIC_I2F: tl.constexpr, EXP16: tl.constexpr,
                 WS: tl.constexpr):
    """Tensor-memory-accelerator loads (Hopper): q8/k8 as 2-D [B*S_pad, H*D], vt8 as [B*H*D, S_pad]."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    q = desc_q.load([b * S_QPAD + pid_m * BLOCK_M, h * HEAD_D])
    q_scale = tl.load(QS + (b * NQB + pid_m) * H + h)
    ks_ptr = KS + b * NKB * H + h
    row_k = b * S_KPAD
    row_v = (b * H + h) * HEAD_D
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    n_full = S_KV // BLOCK_N
    for j in tl.range(n_full, warp_specialize=WS):
        scale = q_scale * tl.load(ks_ptr + j * H)
        k = desc_k.load([row_k + j * BLOCK_N, h * HEAD_D])
        vt = desc_vt.load([row_v, j * BLOCK_N])
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k, vt, scale, 0, S_KV,
                              BLOCK_N, QK_INT8, False, PV_IN_DOT, MAGIC_I2F, EXP16)
    if n_full * BLOCK_N < S_KV:
        scale = q_scale * tl.load(ks_ptr + n_full * H)
        k = desc_k.load([row_k + n_full * BLOCK_N, h * HEAD_D])
        vt = desc_vt.load([row_v, n_full * BLOCK_N])
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k, vt, scale, n_full * BLOCK_N, S_KV,
                              BLOCK_N, QK_INT8, True, PV_IN_DOT, MAGIC_I2F, EXP16)
    _store_out(acc, l_i, VS, O, b, h, H, offs_m, offs_d, so_b, so_s, so_h, S_Q, HEAD_D)
