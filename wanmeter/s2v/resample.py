"""Band-limited resampling in plain torch (torchaudio is not available everywhere).

wav2vec2 wants 16 kHz; users bring 8-96 kHz. This is the standard windowed-sinc polyphase
method: for each of the `new` output phases a low-pass sinc kernel (Hann-squared window,
cut-off at 99% of the lower Nyquist) is applied with stride `orig` after reducing the ratio
by the gcd. Quality matches common library defaults for speech.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _kernel(orig: int, new: int, zeros: int, rolloff: float, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig
    t = (idx - torch.arange(new, dtype=torch.float64)[:, None] / new) * base
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    k = sinc * window * (base / orig)
    return k.to(dtype)[:, None, :], width


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int, *, zeros: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """Resample the last dimension of `wave` from orig_sr to new_sr (any leading shape)."""
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError("sample rates must be positive")
    if orig_sr == new_sr:
        return wave
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    dtype = wave.dtype if wave.is_floating_point() else torch.float32
    shape = wave.shape
    x = wave.reshape(-1, 1, shape[-1]).to(dtype)
    kern, width = _kernel(orig, new, zeros, rolloff, dtype)
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x, kern.to(x.device), stride=orig)  # [N, new, frames]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    n_out = math.ceil(new * shape[-1] / orig)
    return y[:, :n_out].reshape(*shape[:-1], n_out)
