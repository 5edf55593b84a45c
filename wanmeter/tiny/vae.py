"""Tiny random Wan VAEs written in the official file layouts (Wan2.1 and Wan2.2).

They keep the real structure (4 levels, 2/3 residual blocks, causal 3-D convs, the Wan2.2 2x2
patchify and residual up/down shortcuts), the real latent channels (16 / 48) and strides
(4x8x8 / 4x16x16), with narrow layers so they run in milliseconds on a CPU. The weights are drawn
from a seeded generator in sorted-name order, so the files are identical on every machine.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch

from . import register
from .spec import SEED, TINY_VAE

VERSION = "1"

FILE_NAMES = {"wan21": "tiny_wan_2.1_vae.safetensors", "wan22": "tiny_wan2.2_vae.safetensors"}


def _config(family: str) -> dict:
    spec = TINY_VAE[family]
    base = int(spec["base_dim"])
    cfg = dict(base_dim=base, z_dim=int(spec["z_dim"]), temperal_downsample=[False, True, True])
    if family == "wan22":
        # The real Wan2.2 VAE has a wider decoder (256) than encoder (160); keep them different here
        # too, so the loader's decoder_base_dim detection is exercised.
        cfg.update(decoder_base_dim=int(spec.get("decoder_base_dim", base * 3 // 2)), is_residual=True,
                   in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16)
    return cfg


def tiny_vae_state_dict(family: str) -> dict[str, torch.Tensor]:
    """Deterministic random weights for a tiny `family` VAE, in the official key layout (float32)."""
    from diffusers import AutoencoderKLWan

    from ..loader.vae_keys import diffusers_to_official_names

    with torch.device("meta"):
        model = AutoencoderKLWan(**_config(family))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(SEED + (21 if family == "wan21" else 22))
    out: dict[str, torch.Tensor] = {}
    names = diffusers_to_official_names(family)
    for k in sorted(shapes):
        shape = shapes[k]
        if k.endswith("gamma"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif k.endswith("bias"):
            t = 0.05 * torch.randn(shape, generator=gen)
        else:  # conv weights: variance-preserving scale keeps activations in range through ~40 convs
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        out[names[k]] = t
    return out


def write_tiny_vae(dest: str | Path, family: str) -> Path:
    """Write one tiny VAE to exactly `dest` (bf16, like the real files) and return it."""
    from safetensors.torch import save_file

    dest = Path(dest)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in tiny_vae_state_dict(family).items()}
    save_file(sd, str(dest), metadata={"wanmeter_tiny": f"vae/{family}/v{VERSION}"})
    return dest


def fixture_name(family: str) -> str:
    """Registry name: vae_wan21, vae_wan22."""
    return f"vae_{family}"


for _fam in ("wan21", "wan22"):
    register(fixture_name(_fam), partial(write_tiny_vae, family=_fam), f"vae/{FILE_NAMES[_fam]}", version=VERSION)
