"""Wan VAE files -> diffusers.AutoencoderKLWan, wrapped with ComfyUI's IMAGE/LATENT conventions.

Two families exist: the Wan2.1 VAE (z=16, stride 4x8x8; used by T2V/I2V-A14B and S2V-14B) and
the Wan2.2 VAE (z=48, stride 4x16x16 including a 2x2 patchify; used by TI2V-5B). We tell them
apart by shapes, build the AutoencoderKLWan config locally (never from a hub), rename official
keys (Wan2.1 through diffusers' own converter, Wan2.2 through our table in vae_keys.py, which
diffusers lacks) and load strictly, so a wrong or damaged file fails loudly instead of decoding
noise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .. import variants
from ..errors import WanMeterError
from .safetensors_io import check_finite, read_header, strip_prefix
from .vae_keys import official_to_diffusers_names, rename

VAE_FILES = {"wan21": "wan_2.1_vae.safetensors", "wan22": "wan2.2_vae.safetensors"}
_WHICH = (
    "Put wan_2.1_vae.safetensors (T2V-A14B, I2V-A14B, S2V-14B) or wan2.2_vae.safetensors (TI2V-5B) "
    "in models/vae and select it."
)
_PREFIXES = ("first_stage_model.", "vae.", "model.")


def _guess_kind(keys: set[str]) -> str:
    """A short human description of what a non-VAE file probably is."""
    if any(k.endswith("spiece_model") or ".SelfAttention." in k for k in keys):
        return "a text encoder"
    if any("text_model.encoder.layers" in k for k in keys):
        return "a CLIP text encoder"
    if any(".self_attn.q.weight" in k or "patch_embedding.weight" in k for k in keys):
        return "a Wan diffusion model (DiT)"
    if any(k.startswith(("decoder.up.", "encoder.down.")) for k in keys):
        return "an image VAE of another model family (SD/SDXL/Flux)"
    if any("lora" in k.lower() for k in keys):
        return "a LoRA"
    return "a file of no known kind"


@dataclass(frozen=True)
class VaeLayout:
    family: str            # "wan21" | "wan22"
    layout: str            # "official" | "diffusers"
    prefix: str
    config: dict


def inspect_vae(path: str | os.PathLike) -> VaeLayout:
    """Read the header only: family, key layout and the AutoencoderKLWan config from shapes."""
    hdr = read_header(path)
    try:
        return _inspect_vae(hdr)
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise WanMeterError(f"{hdr.path.name} has Wan VAE key names but tensor shapes no Wan VAE has "
                            f"({type(e).__name__}: {e}). {_WHICH}") from None


def _inspect_vae(hdr) -> VaeLayout:
    name = hdr.path.name
    prefix = strip_prefix(list(hdr.tensors), _PREFIXES)
    shapes = {k[len(prefix):]: m.shape for k, m in hdr.tensors.items()}
    keys = set(shapes)
    if "conv2.weight" in keys and "encoder.conv1.weight" in keys and "decoder.conv1.weight" in keys:
        layout, post, enc_in, dec_in = "official", "conv2.weight", "encoder.conv1.weight", "decoder.conv1.weight"
        residual = "decoder.upsamples.0.upsamples.0.residual.2.weight" in keys
    elif "post_quant_conv.weight" in keys and "encoder.conv_in.weight" in keys and "decoder.conv_in.weight" in keys:
        layout, post, enc_in, dec_in = "diffusers", "post_quant_conv.weight", "encoder.conv_in.weight", "decoder.conv_in.weight"
        residual = "decoder.up_blocks.0.resnets.0.conv1.weight" in keys and "decoder.up_blocks.0.upsampler.resample.1.weight" in keys
    else:
        raise WanMeterError(f"{name} is {_guess_kind(keys)}, not a Wan VAE. {_WHICH}")
    if len(shapes[post]) != 5 or len(shapes[enc_in]) != 5:
        raise WanMeterError(f"{name} has 2-D convolutions where a Wan video VAE has 3-D ones: it is an image VAE. {_WHICH}")
    z_dim = shapes[post][0]
    in_ch = shapes[enc_in][1]
    if z_dim == 16 and in_ch == 3 and not residual:
        family = "wan21"
    elif z_dim == 48 and in_ch == 12 and residual:
        family = "wan22"
    else:
        raise WanMeterError(
            f"{name} is a video VAE with {z_dim} latent channels and {in_ch} input channels, which matches neither "
            f"the Wan2.1 VAE (16, 3) nor the Wan2.2 VAE (48, 12). {_WHICH}"
        )
    facts = variants.vae_family(family)
    mean, std = facts.get("latents_mean"), facts.get("latents_std")
    config = dict(
        base_dim=shapes[enc_in][0],
        decoder_base_dim=shapes[dec_in][0] // 4,   # the decoder starts at base * dim_mult[-1] (= 4)
        z_dim=z_dim,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        is_residual=family == "wan22",
        in_channels=in_ch,
        out_channels=in_ch,
        patch_size=2 if family == "wan22" else None,
        scale_factor_temporal=int(facts["stride_t"]),
        scale_factor_spatial=int(facts["stride_s"]),
    )
    if mean and std:
        config.update(latents_mean=list(mean), latents_std=list(std))
    return VaeLayout(family, layout, prefix, config)


def to_diffusers_state_dict(sd: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Rename an official-layout Wan VAE state dict to AutoencoderKLWan's names."""
    if family == "wan21":
        # diffusers' own converter knows the Wan2.1 layout; use it (our table agrees, see tests).
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        return convert_wan_vae_to_diffusers(sd)
    out, unknown = rename(sd, official_to_diffusers_names(family))
    if unknown:
        raise WanMeterError(
            f"The Wan2.2 VAE file has {len(unknown)} unexpected tensors (e.g. {unknown[0]!r}): it is damaged or "
            f"not the official wan2.2_vae.safetensors. Download it again."
        )
    return out


def vae_dtype(requested: torch.dtype, device: str | torch.device) -> torch.dtype:
    """The dtype the VAE runs in: the requested one on a GPU, float32 on the CPU whatever was asked.

    CPUs have no fast bf16/fp16 3-D convolutions: an 80-frame 64x64 decode took over 7 minutes in
    bf16 and 145 s in fp32 on the same 2-core machine (issue 14)."""
    return torch.float32 if torch.device(device).type == "cpu" else requested


class WanVAE:
    """A loaded Wan VAE with ComfyUI conventions.

    IMAGE: float [F, H, W, C] in 0..1, the frames of one video along the first axis.
    LATENT: raw (un-normalized) VAE space [B, z, T, h, w]; normalize()/denormalize() apply the
    family's per-channel mean/std the DiT was trained on.
    """

    def __init__(self, model, family: str, dtype: torch.dtype, device: torch.device):
        self.model = model
        self.family = family
        self.dtype = dtype
        self.device = device
        facts = variants.vae_family(family)
        self.z_dim = int(model.config.z_dim)
        self.stride_t = int(facts["stride_t"])
        self.stride_s = int(facts["stride_s"])
        self._mean = torch.tensor(model.config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(model.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            hint = (" This latent has 48 channels: decode it with wan2.2_vae.safetensors." if z.ndim == 5 and z.shape[1] == 48
                    else " This latent has 16 channels: decode it with wan_2.1_vae.safetensors." if z.ndim == 5 and z.shape[1] == 16
                    else "")
            raise WanMeterError(
                f"The {self.family} VAE expects latents shaped [B, {self.z_dim}, T, h, w]; got {list(z.shape)}.{hint}"
            )

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [F, H, W, C] in 0..1 -> raw latent mean [1, z, (F-1)/4+1, H/s, W/s]."""
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise WanMeterError(f"Expected images shaped [frames, height, width, channels]; got {list(images.shape)}.")
        f, h, w, c = images.shape
        if c == 4:
            images, c = images[..., :3], 3
        if c != 3:
            raise WanMeterError(f"Expected RGB images (3 channels); got {c} channels.")
        if h % self.stride_s or w % self.stride_s:
            raise WanMeterError(
                f"Image size {w}x{h} is not a multiple of {self.stride_s} for the {self.family} VAE. "
                f"Resize or crop to a multiple of {self.stride_s} (e.g. {w // self.stride_s * self.stride_s}x{h // self.stride_s * self.stride_s})."
            )
        if (f - 1) % self.stride_t:
            raise WanMeterError(
                f"{f} frames cannot be encoded: Wan VAEs take 1 + 4k frames (1, 5, 9, ..., 81). "
                f"Use {1 + (f - 1) // 4 * 4} or {1 + ((f - 1) // 4 + 1) * 4} frames."
            )
        x = images.to(self.device, torch.float32).permute(3, 0, 1, 2)[None] * 2.0 - 1.0
        dist = self.model.encode(x.to(self.dtype)).latent_dist
        return dist.mean.float()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, tiled: bool = False, tile_size: int = 256, tile_stride: int = 192,
               check: Callable[[], None] | None = None) -> torch.Tensor:
        """raw latent [B, z, T, h, w] -> images [B*F, H, W, 3] in 0..1 (float32, on the CPU).

        tiled=True decodes spatial tiles of `tile_size` pixels every `tile_stride` pixels and blends
        the overlaps (diffusers' tiled decode): far less memory for large frames, tiny seams.

        check: called before each decoder chunk (diffusers decodes one latent frame at a time, per
        tile when tiled); whatever it raises (ComfyUI's interruption) stops the decode there. The
        decoder's frame cache is dropped and the exception leaves without the decode's frames in
        its traceback, so the partial video is freed as soon as the caller lets go of it.
        """
        self._check_latent(latent)
        m = self.model
        if tiled:
            m.enable_tiling(tile_sample_min_height=tile_size, tile_sample_min_width=tile_size,
                            tile_sample_stride_height=tile_stride, tile_sample_stride_width=tile_stride)
        stopped: list[BaseException] = []

        def before_chunk(_module, _args):
            try:
                check()
            except BaseException as e:
                stopped.append(e)
                raise

        hook = m.decoder.register_forward_pre_hook(before_chunk) if check is not None else None
        try:
            out = m.decode(latent.to(self.device, self.dtype)).sample
        except BaseException as e:
            if not stopped or e is not stopped[0]:
                raise
            m.clear_cache()
            stopped.clear()
            # Re-raised without its traceback: the frames below (diffusers' decode loop) hold the
            # decoded chunks; a traceback kept by the caller would keep them alive.
            raise e.with_traceback(None) from None
        finally:
            if hook is not None:
                hook.remove()
            if tiled:
                m.use_tiling = False
        out = ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        b, c, f, h, w = out.shape
        return out.permute(0, 2, 3, 4, 1).reshape(b * f, h, w, c).cpu()

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw VAE latent -> the normalized space the DiT works in: (x - mean) / std per channel."""
        self._check_latent(raw)
        return (raw - self._mean.to(raw.device, raw.dtype)) / self._std.to(raw.device, raw.dtype)

    def denormalize(self, norm: torch.Tensor) -> torch.Tensor:
        """Inverse of normalize()."""
        self._check_latent(norm)
        return norm * self._std.to(norm.device, norm.dtype) + self._mean.to(norm.device, norm.dtype)


def load_vae(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> WanVAE:
    """Load wan_2.1_vae.safetensors or wan2.2_vae.safetensors (official or diffusers layout).

    On the CPU the VAE is float32 whatever `dtype` says (vae_dtype)."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import load_file

    info = inspect_vae(path)  # the header, fully validated, before any weight is read
    dtype = vae_dtype(dtype, device)
    sd = load_file(str(path))
    for k, v in sd.items():
        check_finite(v, k, path)
    if info.prefix:
        sd = {k[len(info.prefix):]: v for k, v in sd.items() if k.startswith(info.prefix)}
    if info.layout == "official":
        sd = to_diffusers_state_dict(sd, info.family)
    with torch.device("meta"):
        model = AutoencoderKLWan(**info.config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise WanMeterError(
            f"{os.path.basename(path)} looks like a {info.family} VAE but its tensors do not match ({what}). "
            f"The file is damaged or a modified VAE: download {VAE_FILES[info.family]} again."
        )
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as e:
        raise WanMeterError(
            f"{os.path.basename(path)}: tensor shapes do not match a {info.family} VAE ({str(e).splitlines()[-1].strip()}). "
            f"Download {VAE_FILES[info.family]} again."
        ) from None
    dev = torch.device(device)
    model = model.to(device=dev).eval().requires_grad_(False)  # already in dtype (no diffusers cast warning)
    return WanVAE(model, info.family, dtype, dev)


def check_vae_matches(vae_family: str, variant: str) -> None:
    """Raise a WanMeterError when the VAE family cannot serve the model variant."""
    need = variants.variant(variant)["vae"]
    if vae_family != need:
        label = variants.variant(variant)["label"]
        raise WanMeterError(
            f"{label} needs {VAE_FILES[need]}, but the selected VAE is {VAE_FILES.get(vae_family, vae_family)}. "
            "TI2V-5B needs wan2.2_vae.safetensors; the A14B and S2V models need wan_2.1_vae.safetensors."
        )
