"""Per-variant conditioning: what goes into the DiT besides the noisy latent, and its timesteps.

- T2V-A14B: the latent alone, one timestep per video.
- I2V-A14B: 36 channels = 16 noisy + 4 mask (1 on the first latent frame, which holds the
  image's 4 pixel-frame slots, 0 elsewhere) + 16 normalized latent of [image, gray frames].
- TI2V-5B: per-token timesteps. Text mode: every token gets t. Image mode: the first latent
  frame is replaced by the image latent before every forward and at the end, and its tokens get
  t = 0 (the official textimage2video.py and diffusers' expand_timesteps do the same).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioner:
    mode: str
    cond: torch.Tensor | None = None         # i2v: [B,20,T,h,w]; ti2v_image: [B,48,1,h,w] (normalized)
    keep_mask: torch.Tensor | None = None    # ti2v: [1,1,T,h,w], 0 where the image latent is kept
    token_mask: torch.Tensor | None = None   # ti2v: [seq] per-token timestep multiplier

    def model_input(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.mode == "i2v":
            return torch.cat([latents, self.cond], dim=1).to(dtype)
        if self.mode == "ti2v_image":
            return ((1 - self.keep_mask) * self.cond + self.keep_mask * latents).to(dtype)
        return latents.to(dtype)

    def timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        if self.token_mask is None:
            return t.expand(batch)
        return (self.token_mask * t).unsqueeze(0).expand(batch, -1)

    def finalize(self, latents: torch.Tensor) -> torch.Tensor:
        if self.mode == "ti2v_image":
            return (1 - self.keep_mask) * self.cond + self.keep_mask * latents
        return latents

    def clear(self) -> None:
        self.cond = self.keep_mask = self.token_mask = None


def build(mode: str, shape: tuple[int, ...], image_norm: torch.Tensor | None, patch: tuple[int, int, int],
          device: torch.device) -> Conditioner:
    """Conditioning tensors for `mode`; `image_norm` is the normalized image latent (batch-expanded)."""
    b, _, t, h, w = shape
    if mode == "t2v":
        return Conditioner(mode)
    if mode == "i2v":
        mask = torch.zeros(b, 4, t, h, w, dtype=torch.float32, device=device)
        mask[:, :, 0] = 1.0
        return Conditioner(mode, cond=torch.cat([mask, image_norm], dim=1))
    keep = torch.ones(1, 1, t, h, w, dtype=torch.float32, device=device)
    if mode == "ti2v_image":
        keep[:, :, 0] = 0.0
    tokens = keep[0, 0][:: patch[0], :: patch[1], :: patch[2]].flatten()
    if mode == "ti2v_image":
        return Conditioner(mode, cond=image_norm[:, :, :1], keep_mask=keep, token_mask=tokens)
    return Conditioner(mode, token_mask=tokens)
