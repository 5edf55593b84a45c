"""Start image -> the image latent the sampler takes (I2V-A14B, TI2V-5B image mode).

Follows the official preprocessing (facts from Wan2.2 image2video.py / textimage2video.py):
- I2V-A14B: the output size keeps the image's aspect at the area width*height, each side a
  multiple of 16 (VAE stride 8 x patch 2); the image is resized (bicubic) to it and encoded
  followed by frames-1 mid-gray frames (0 in [-1, 1]) -> latent [1, 16, T, h, w].
- TI2V-5B: the size of area width*height closest to the image's aspect with sides multiples
  of 32; the image is scaled to cover it and center-cropped -> encoded alone [1, 48, 1, h, w].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..wanmeter.errors import WanMeterError


def i2v_size(img_w: int, img_h: int, area: int, multiple: int = 16) -> tuple[int, int]:
    """(w, h) with the image's aspect, about `area` pixels, sides rounded down to `multiple`."""
    aspect = img_h / img_w
    h = int(math.sqrt(area * aspect) // multiple) * multiple
    w = int(math.sqrt(area / aspect) // multiple) * multiple
    return max(w, multiple), max(h, multiple)


def ti2v_size(img_w: int, img_h: int, area: int, multiple: int = 32) -> tuple[int, int]:
    """(w, h), sides multiples of `multiple`, area <= `area`, aspect closest to the image's.

    Two candidates: round the width down first, or the height first; keep the better aspect."""
    ratio = img_w / img_h
    w_f = math.sqrt(area * ratio)
    h_f = area / w_f
    cands = []
    w1 = max(multiple, int(w_f // multiple) * multiple)
    cands.append((w1, max(multiple, int(area / w1 // multiple) * multiple)))
    h2 = max(multiple, int(h_f // multiple) * multiple)
    cands.append((max(multiple, int(area / h2 // multiple) * multiple), h2))

    def err(wh):
        r = wh[0] / wh[1]
        return max(ratio / r, r / ratio)

    return min(cands, key=err)


def _first_frame(image: torch.Tensor) -> torch.Tensor:
    if image.dim() != 4 or image.shape[-1] not in (3, 4):
        raise WanMeterError(f"start_image has shape {tuple(image.shape)}; connect an IMAGE [frames, H, W, 3].")
    return image[0, :, :, :3].float().clamp(0, 1)  # [H, W, 3]


def _resize(img_hw3: torch.Tensor, w: int, h: int, mode: str) -> torch.Tensor:
    x = img_hw3.permute(2, 0, 1)[None]
    kw = {"align_corners": False} if mode in ("bicubic", "bilinear") else {}
    if mode == "area-or-bicubic":
        mode = "area" if (w < x.shape[-1] and h < x.shape[-2]) else "bicubic"
        kw = {} if mode == "area" else {"align_corners": False}
    y = F.interpolate(x, size=(h, w), mode=mode, **kw)
    return y[0].permute(1, 2, 0).clamp(0, 1)


def encode_start_image(variant: str, image: torch.Tensor, vae, width: int, height: int,
                       frames: int) -> tuple[torch.Tensor, int, int]:
    """(image_latent, width, height): the latent the sampler needs and the size it implies."""
    if vae is None or not hasattr(vae, "encode"):
        raise WanMeterError("start_image needs the vae input: connect WanMeter VAE Loader to the sampler's vae.")
    img = _first_frame(image)
    ih, iw = img.shape[0], img.shape[1]
    area = int(width) * int(height)
    with torch.inference_mode():
        if variant == "i2v_a14b":
            w, h = i2v_size(iw, ih, area)
            first = _resize(img, w, h, "bicubic")
            gray = torch.full((frames - 1, h, w, 3), 0.5, dtype=first.dtype)
            lat = vae.encode(torch.cat([first[None], gray], dim=0))
        elif variant == "ti2v_5b":
            w, h = ti2v_size(iw, ih, area)
            scale = max(w / iw, h / ih)
            sw, sh = max(w, round(iw * scale)), max(h, round(ih * scale))
            scaled = _resize(img, sw, sh, "area-or-bicubic")
            x0, y0 = (sw - w) // 2, (sh - h) // 2
            crop = scaled[y0:y0 + h, x0:x0 + w]
            lat = vae.encode(crop[None])
        else:
            raise WanMeterError(f"{variant} takes no start image.")
    return lat.float().cpu(), w, h
