"""Do the chosen files belong together? Answered from headers only, before any weight is loaded.

A VAE of the wrong family, a text encoder that is not umt5-xxl, a wav2vec2 whose states do not
match the S2V model, or two experts of different models otherwise surface after minutes of
loading (or as a raw channel-mismatch error mid-run). Every path that loads a set of parts (the
`generate` CLI / pipeline, the loader nodes through the queued prompt) calls check_parts first.
"""
from __future__ import annotations

import os
from typing import Sequence

from .. import variants
from ..errors import WanMeterError

PathLike = str | os.PathLike


def check_parts(dit: Sequence[PathLike] = (), *, vae: PathLike | None = None, text_encoder: PathLike | None = None,
                audio_encoder: PathLike | None = None, variant: str | None = None) -> str | None:
    """Refuse parts that cannot work together; returns the variant (from the DiT headers, else `variant`).

    dit: the diffusion model file(s): one, or the high- and low-noise experts of an A14B model.
    Each part given is read as a header only (cached), and checked against the variant."""
    from .dit_inspect import inspect_dit
    from .dit_loader import check_expert_pair

    infos = [inspect_dit(p) for p in dit]
    if infos:
        if variant is not None and variant != infos[0].variant:
            raise WanMeterError(f"{infos[0].path.name} is {infos[0].variant}, not {variant}. Pick the {variant} "
                                "diffusion model, or drop the variant override.")
        variant = infos[0].variant
        experts = int(variants.variant(variant)["experts"])
        label = variants.variant(variant)["label"]
        if experts == 2 and len(infos) != 2:
            raise WanMeterError(f"{label} needs two DiT files: the high-noise and the low-noise expert.")
        if experts == 1 and len(infos) != 1:
            raise WanMeterError(f"{label} has one DiT: pass a single diffusion model file.")
        if len(infos) == 2:
            check_expert_pair(infos[0], infos[1])
    if vae is not None:
        from .vae_loader import check_vae_matches, inspect_vae

        family = inspect_vae(vae).family
        if variant is not None:
            check_vae_matches(family, variant)
    if text_encoder is not None:
        from .text_encoder import inspect_text_encoder

        inspect_text_encoder(text_encoder)  # every Wan2.2 variant uses umt5-xxl; raises naming the file
    if audio_encoder is not None:
        _check_audio_encoder(audio_encoder, variant, infos[0] if infos else None)
    return variant


def _check_audio_encoder(path: PathLike, variant: str | None, info) -> None:
    from ..s2v.audio import _normalize_w2v_keys, wav2vec2_config_from_shapes
    from .safetensors_io import read_header

    if variant is not None and variant != "s2v_14b":
        raise WanMeterError(f"an audio encoder drives only Wan2.2 S2V-14B; the diffusion model is "
                            f"{variants.variant(variant)['label']}. Load wan2.2_s2v_14B_*.safetensors, or drop the audio.")
    hdr = read_header(path)
    shapes = {k: tuple(m.shape) for k, m in _normalize_w2v_keys(dict(hdr.tensors)).items()}
    cfg = wav2vec2_config_from_shapes(shapes, hdr.path.name)
    if info is None:
        return
    from ..s2v.config import S2VConfig

    try:
        s2v = S2VConfig.from_shapes({k: m.shape for k, m in info.tensors.items()})
    except (KeyError, IndexError, ValueError, TypeError, WanMeterError):
        return  # the S2V loader names what is wrong with the model file itself
    states = cfg.num_hidden_layers + 1  # the embeddings + every layer's output
    if (states, cfg.hidden_size) != (s2v.num_audio_layers, s2v.audio_dim):
        raise WanMeterError(
            f"{hdr.path.name} gives {states} wav2vec2 states of size {cfg.hidden_size}, but {info.path.name} expects "
            f"{s2v.num_audio_layers} of size {s2v.audio_dim}. Use wav2vec2_large_english_fp16.safetensors.")
