"""Parameter names of the Wan VAEs: official checkpoint layout <-> diffusers' AutoencoderKLWan.

The files users have (wan_2.1_vae.safetensors, wan2.2_vae.safetensors) keep the module names of
the official code (wan/modules/vae2_1.py, vae2_2.py). diffusers ships a converter for the Wan2.1
layout only; the Wan2.2 VAE nests its residual blocks one level deeper (`downsamples.i.downsamples.j`,
`upsamples.i.upsamples.j`) and diffusers has no mapping for it. We write the whole table out
explicitly (both families, so the tiny-model writer can invert it and a test can hold our Wan2.1
table against diffusers' converter), generated from the block structure: 4 levels, 2 residual
blocks per encoder level, 3 per decoder level, one resampler between levels.
"""
from __future__ import annotations

from functools import lru_cache

NUM_LEVELS = 4          # len(dim_mult) == len([1, 2, 4, 4])
NUM_RES_BLOCKS = 2      # encoder residual blocks per level; the decoder has one more

# Parameter suffixes of each kind of official module and their diffusers names.
_RESBLOCK = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_ATTENTION = {s: s for s in ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias")}
_RESAMPLE = {s: s for s in ("resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias")}
_CONV = {"weight": "weight", "bias": "bias"}
_NORM = {"gamma": "gamma"}


def _modules(family: str) -> list[tuple[str, str, dict[str, str]]]:
    """(official module prefix, diffusers module prefix, suffix table) for every module."""
    if family not in ("wan21", "wan22"):
        raise ValueError(f"unknown VAE family {family!r}")
    mods: list[tuple[str, str, dict[str, str]]] = [
        ("conv1", "quant_conv", _CONV),
        ("conv2", "post_quant_conv", _CONV),
    ]
    for part in ("encoder", "decoder"):
        mods += [
            (f"{part}.conv1", f"{part}.conv_in", _CONV),
            (f"{part}.middle.0", f"{part}.mid_block.resnets.0", _RESBLOCK),
            (f"{part}.middle.1", f"{part}.mid_block.attentions.0", _ATTENTION),
            (f"{part}.middle.2", f"{part}.mid_block.resnets.1", _RESBLOCK),
            (f"{part}.head.0", f"{part}.norm_out", _NORM),
            (f"{part}.head.2", f"{part}.conv_out", _CONV),
        ]
    last = NUM_LEVELS - 1
    # encoder: NUM_RES_BLOCKS residual blocks per level, then a downsampler except on the last level
    flat = 0
    for i in range(NUM_LEVELS):
        for j in range(NUM_RES_BLOCKS):
            if family == "wan21":  # one flat Sequential, diffusers keeps the flat index
                mods.append((f"encoder.downsamples.{flat}", f"encoder.down_blocks.{flat}", _RESBLOCK))
            else:
                mods.append((f"encoder.downsamples.{i}.downsamples.{j}", f"encoder.down_blocks.{i}.resnets.{j}", _RESBLOCK))
            flat += 1
        if i != last:
            if family == "wan21":
                mods.append((f"encoder.downsamples.{flat}", f"encoder.down_blocks.{flat}", _RESAMPLE))
            else:
                mods.append((f"encoder.downsamples.{i}.downsamples.{NUM_RES_BLOCKS}", f"encoder.down_blocks.{i}.downsampler", _RESAMPLE))
            flat += 1
    # decoder: NUM_RES_BLOCKS + 1 residual blocks per level, then an upsampler except on the last level
    flat = 0
    for i in range(NUM_LEVELS):
        for j in range(NUM_RES_BLOCKS + 1):
            if family == "wan21":
                mods.append((f"decoder.upsamples.{flat}", f"decoder.up_blocks.{i}.resnets.{j}", _RESBLOCK))
            else:
                mods.append((f"decoder.upsamples.{i}.upsamples.{j}", f"decoder.up_blocks.{i}.resnets.{j}", _RESBLOCK))
            flat += 1
        if i != last:
            if family == "wan21":
                mods.append((f"decoder.upsamples.{flat}", f"decoder.up_blocks.{i}.upsamplers.0", _RESAMPLE))
            else:
                mods.append((f"decoder.upsamples.{i}.upsamples.{NUM_RES_BLOCKS + 1}", f"decoder.up_blocks.{i}.upsampler", _RESAMPLE))
            flat += 1
    return mods


@lru_cache(maxsize=None)
def official_to_diffusers_names(family: str) -> dict[str, str]:
    """Every parameter name the official `family` VAE can have -> its AutoencoderKLWan name.

    A superset: e.g. a `shortcut` only exists where a block changes width, `time_conv` only in
    temporal resamplers. Callers check the converted set against the model (strict load).
    """
    table: dict[str, str] = {}
    for off, dif, suffixes in _modules(family):
        for s_off, s_dif in suffixes.items():
            table[f"{off}.{s_off}"] = f"{dif}.{s_dif}"
    return table


@lru_cache(maxsize=None)
def diffusers_to_official_names(family: str) -> dict[str, str]:
    """The inverse table (used to write tiny VAEs in the official layout)."""
    return {v: k for k, v in official_to_diffusers_names(family).items()}


def rename(sd: dict, table: dict[str, str]) -> tuple[dict, list[str]]:
    """Apply a name table; returns (renamed dict, names the table does not know)."""
    out, unknown = {}, []
    for k, v in sd.items():
        if k in table:
            out[table[k]] = v
        else:
            unknown.append(k)
    return out, unknown
