"""WanMeter VAE Decode / Encode: raw-space LATENT <-> IMAGE (ComfyUI conventions both ways)."""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c

TILED_CHOICES = ["auto", "enable", "disable"]


def _check_vae(vae) -> None:
    if vae is None or not hasattr(vae, "decode"):
        raise WanMeterError("vae is not a WanMeter VAE. Connect WanMeter VAE Loader.")


def _tiled(vae, choice: str) -> bool:
    if choice == "enable":
        return True
    if choice == "disable":
        return False
    return bool(getattr(vae, "tiled_default", False))


class WanMeterVAEDecode:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterVAEDecode")

    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("Frames as IMAGE [frames, H, W, 3] in 0..1; several videos are concatenated.",)
    FUNCTION = "decode"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Decode a Wan latent video into frames."

    def decode(self, samples: dict, vae, tiled: str = "auto"):
        import torch

        _check_vae(vae)
        lat = samples["samples"] if isinstance(samples, dict) else samples
        if lat.dim() == 4:
            lat = lat.unsqueeze(0)
        if lat.dim() != 5:
            raise WanMeterError(f"samples has shape {tuple(lat.shape)}; a Wan video latent is [B, C, T, H, W].")
        z = getattr(vae, "z_dim", None)
        if z is not None and lat.shape[1] != z:
            raise WanMeterError(
                f"The latent has {lat.shape[1]} channels but this VAE expects {z}. TI2V-5B uses "
                "wan2.2_vae.safetensors (48), A14B and S2V use wan_2.1_vae.safetensors (16)."
            )
        frames = []
        try:
            for b in range(lat.shape[0]):
                c.check_interrupt()
                with torch.inference_mode():
                    img = vae.decode(lat[b:b + 1], tiled=_tiled(vae, tiled), check=c.check_interrupt)
                frames.append(img.to(device="cpu", dtype=torch.float32))
        finally:
            c.release_memory()
        return (torch.cat(frames, dim=0),)


class WanMeterVAEEncode:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterVAEEncode")

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("Raw latent {'samples': [1, C, T, H, W]} (ComfyUI convention).",)
    FUNCTION = "encode"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Encode frames into a Wan latent video (e.g. to start sampling from an existing video)."

    def encode(self, pixels, vae):
        import torch

        _check_vae(vae)
        if pixels.dim() != 4 or pixels.shape[-1] not in (3, 4):
            raise WanMeterError(f"pixels has shape {tuple(pixels.shape)}; IMAGE is [frames, H, W, 3].")
        try:
            with torch.inference_mode():
                lat = vae.encode(pixels[..., :3])
        finally:
            c.release_memory()
        if lat.dim() == 4:
            lat = lat.unsqueeze(0)
        return ({"samples": lat.to(device="cpu", dtype=torch.float32)},)


NODE_CLASS_MAPPINGS = {"WanMeterVAEDecode": WanMeterVAEDecode, "WanMeterVAEEncode": WanMeterVAEEncode}
NODE_DISPLAY_NAME_MAPPINGS = c.display_names("WanMeterVAEDecode", "WanMeterVAEEncode")
