"""Key names of Wan DiT checkpoints: official <-> diffusers, and what a foreign file looks like.

Why a module: the inspector, the loader, the tiny-model writer and the S2V loader all need the
same answers to "which diffusers parameter is this official key" and "what is this file if not
a Wan2.2 DiT". The renaming itself is diffusers' `convert_wan_transformer_to_diffusers`; we run
it on key names only (no tensors), so we can plan a load before reading any weight.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "official_keys"
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def official_to_diffusers(keys: Iterable[str]) -> dict[str, str]:
    """Map official (un-prefixed) DiT keys to diffusers names: {diffusers_key: official_key}.

    Uses diffusers' own converter on a {name: name} dict, so the mapping is exactly what
    diffusers would do to the tensors (it only renames for the Wan2.2 base layout).
    """
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    names = list(keys)
    converted = convert_wan_transformer_to_diffusers({k: k for k in names})
    if len(converted) != len(names):
        raise AssertionError("diffusers' Wan key conversion changed the number of keys")
    return converted  # values are the original names


def diffusers_to_official(keys: Iterable[str], num_layers: int) -> dict[str, str]:
    """Inverse of official_to_diffusers for the base Wan layout: {official_key: diffusers_key}.

    Built by converting the official key list (data/official_keys/t2v_a14b.json, cut to
    `num_layers` blocks) and inverting it, so it cannot drift from diffusers' converter.
    """
    forward = official_to_diffusers(official_key_names("t2v_a14b", num_layers))
    inverse = {d: o for d, o in forward.items()}
    out: dict[str, str] = {}
    for k in keys:
        if k not in inverse:
            raise KeyError(k)
        out[inverse[k]] = k
    return out


@lru_cache(maxsize=None)
def official_layout(variant: str) -> dict[str, tuple[int, ...]]:
    """The official checkpoint layout {key: shape} for a variant's real config (tools/dump_official_keys.py)."""
    with open(DATA_DIR / f"{variant}.json", encoding="utf-8") as f:
        return {k: tuple(v) for k, v in json.load(f).items()}


def official_key_names(variant: str, num_layers: int | None = None) -> list[str]:
    """Official key names, optionally cut to the first `num_layers` blocks (for tiny models)."""
    keys = list(official_layout(variant))
    if num_layers is None:
        return keys
    return [k for k in keys if not (_BLOCK.match(k) and int(_BLOCK.match(k).group(1)) >= num_layers)]  # type: ignore[union-attr]


def block_indices(keys: Iterable[str]) -> set[int]:
    return {int(m.group(1)) for k in keys if (m := _BLOCK.match(k))}


def is_diffusers_layout(keys: Iterable[str]) -> bool:
    """diffusers names its blocks' attention attn1/attn2 and the output proj_out."""
    return any(k.startswith("blocks.0.attn1.") or k.startswith("condition_embedder.") for k in keys)


# --- foreign files ---------------------------------------------------------------------------

def _any(keys: list[str], *needles: str) -> bool:
    return any(n in k for k in keys for n in needles)


def _starts(keys: list[str], *prefixes: str) -> bool:
    return any(k.startswith(p) for k in keys for p in prefixes)


def describe_foreign(keys: Iterable[str]) -> str | None:
    """If the key set belongs to something other than a Wan DiT, say what and which loader to use.

    Returns None when nothing is recognised. Order matters: LoRAs first (they carry the base
    model's names), then diffusion-model families (full checkpoints also hold a VAE and text
    encoders), then stand-alone encoders and VAEs.
    """
    ks = [k.removeprefix("model.diffusion_model.").removeprefix("diffusion_model.") for k in keys]
    if _any(ks, "lora_down", "lora_up", "lora_A.", "lora_B.", ".lora.", "lora_unet_"):
        return ("a LoRA, not a diffusion model. Load the Wan2.2 base model as the diffusion model "
                "and apply this file with a LoRA loader")
    if _any(ks, "input_blocks.", "conditioner.embedders", "label_emb."):
        return ("a Stable Diffusion / SDXL UNet checkpoint (input_blocks / conditioner keys), not Wan2.2. "
                "Pick a Wan2.2 diffusion model file, e.g. wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")
    if _starts(ks, "down_blocks.", "mid_block.") and _starts(ks, "conv_in."):
        return ("a diffusers UNet (Stable Diffusion family), not Wan2.2. "
                "Pick a Wan2.2 diffusion model file, e.g. wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")
    if _any(ks, "individual_token_refiner"):
        return ("a HunyuanVideo model (double_blocks / token refiner keys), not Wan2.2. "
                "Pick a Wan2.2 diffusion model file, e.g. wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")
    if _starts(ks, "double_blocks.", "single_blocks.", "single_transformer_blocks."):
        return ("a Flux model (double_blocks / single_blocks keys), not Wan2.2. "
                "Pick a Wan2.2 diffusion model file, e.g. wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")
    if _starts(ks, "joint_blocks."):
        return ("a Stable Diffusion 3 model (joint_blocks keys), not Wan2.2. "
                "Pick a Wan2.2 diffusion model file, e.g. wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")
    if _starts(ks, "adaln_single.", "transformer_blocks.") and not _starts(ks, "blocks."):
        return ("a DiT of another family (LTX-Video / PixArt-like transformer_blocks keys), not Wan2.2. "
                "Pick a Wan2.2 diffusion model file")
    if (_any(ks, "spiece_model", "SelfAttention.q", "encoder.block.0.layer.0") or "shared.weight" in ks
            or _starts(ks, "enc.blk.", "token_embd")):
        return ("a T5/umT5 text encoder, not a diffusion model. Load it with the text encoder loader "
                "(wanmeter.loader.load_text_encoder / models/text_encoders)")
    if _any(ks, "text_model.encoder.", "transformer.resblocks", "token_embedding"):
        return ("a CLIP text encoder, not a Wan2.2 diffusion model. Wan2.2 uses umt5-xxl: load "
                "umt5_xxl_*.safetensors with the text encoder loader")
    if _any(ks, "wav2vec2.", "feature_extractor.conv_layers", "feature_projection."):
        return ("a wav2vec2 audio encoder, not a diffusion model. S2V needs it as the audio encoder "
                "(models/audio_encoders, the audio encoder loader)")
    if _starts(ks, "visual.", "vision_model.", "log_scale"):
        return ("a CLIP vision encoder. Wan2.2 does not use one (Wan2.1 I2V did); "
                "use wan2.2_i2v_high/low_noise_14B files for image-to-video")
    if _starts(ks, "encoder.downsamples", "decoder.upsamples", "encoder.conv1", "decoder.conv1",
               "encoder.down_blocks", "decoder.up_blocks", "first_stage_model.", "quant_conv", "post_quant_conv"):
        return ("a VAE, not a diffusion model. Load it with the VAE loader "
                "(wanmeter.loader.load_vae / models/vae: wan_2.1_vae for A14B and S2V, wan2.2_vae for TI2V-5B)")
    return None


def describe_unsupported_wan(keys: Iterable[str]) -> str | None:
    """Wan-family checkpoints that are not one of the four Wan2.2 variants WanMeter runs."""
    ks = [k.removeprefix("model.diffusion_model.").removeprefix("diffusion_model.") for k in keys]
    if _any(ks, "img_emb.", "k_img", "condition_embedder.image_embedder", "add_k_proj"):
        return ("this is a Wan2.1 I2V/FLF2V model with a CLIP image encoder (img_emb / k_img keys). "
                "WanMeter runs Wan2.2, whose image-to-video needs no CLIP: use "
                "wan2.2_i2v_high_noise_14B_*.safetensors and wan2.2_i2v_low_noise_14B_*.safetensors "
                "(or the 5B wan2.2_ti2v_5B_fp16.safetensors)")
    if _any(ks, "vace_blocks.", "vace_patch_embedding"):
        return ("this is a Wan VACE model (vace_blocks keys), which WanMeter does not run. "
                "Use a Wan2.2 T2V/I2V/TI2V/S2V diffusion model")
    if _any(ks, "face_adapter.", "motion_encoder.", "pose_patch_embedding"):
        return ("this is a Wan2.2 Animate model (face_adapter / motion_encoder keys), which WanMeter does "
                "not run. Use a Wan2.2 T2V/I2V/TI2V/S2V diffusion model")
    return None
