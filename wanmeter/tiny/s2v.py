"""Tiny random S2V checkpoint (official key layout) and tiny wav2vec2 (ComfyUI layout).

The S2V file has exactly the official key names of data/official_keys/s2v_14b.json, cut to the
tiny block count and the injectors a 2-block model has; dims come from TINY_DIT. The wav2vec2
keeps the real conv feature extractor geometry (so it runs at 50 Hz on 16 kHz audio) with tiny
widths. Weights are deterministic and scaled so activations stay O(1): parity tests then
compare meaningful numbers, not zeros.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import register
from .spec import SEED, TINY_DIT

TINY_WAV2VEC2 = {
    "hidden_size": 64,        # 1 head of 64
    "num_hidden_layers": 24,  # -> 25 hidden states, as the S2V audio encoder's layer weights expect
    "intermediate_size": 128,
    "conv_dim": 16,
    "pos_kernel": 128,       # real geometry
    "pos_groups": 16,
}


def tiny_s2v_config():
    from ..s2v.config import S2VConfig, official_inject_layers

    return S2VConfig(dim=TINY_DIT["dim"], ffn_dim=TINY_DIT["ffn_dim"], num_layers=TINY_DIT["num_layers"],
                     text_dim=TINY_DIT["text_dim"], freq_dim=TINY_DIT["freq_dim"],
                     audio_dim=TINY_WAV2VEC2["hidden_size"],
                     num_audio_layers=TINY_WAV2VEC2["num_hidden_layers"] + 1,
                     inject_layers=official_inject_layers(TINY_DIT["num_layers"]))


def _fill(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name and leaf == "weight" and len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if leaf in ("modulation", "scale_shift_table", "padding_tokens", "weights") or len(shape) == 1:
        return 0.1 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


def tiny_s2v_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Official-layout state dict of the tiny S2V model (float32)."""
    from ..s2v.keys import official_to_ours
    from ..s2v.loader import build_empty_s2v
    from ..loader import dit_keys

    cfg = tiny_s2v_config()
    shapes = {n: tuple(p.shape) for n, p in build_empty_s2v(cfg).named_parameters()}
    n_inj = len(cfg.inject_layers)
    keys = []
    for k in dit_keys.official_key_names("s2v_14b", cfg.num_layers):
        if k.startswith("audio_injector.") and int(k.split(".")[2]) >= n_inj:
            continue
        keys.append(k)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k in sorted(keys):
        ours = official_to_ours(k)
        if ours not in shapes:
            raise AssertionError(f"official key {k} has no tiny counterpart")
        sd[k] = _fill(k, shapes[ours], g).contiguous()
    if len(sd) != len(shapes):
        raise AssertionError("tiny S2V keys do not cover the model")
    return sd


def tiny_wav2vec2_state_dict(seed: int = SEED + 7) -> dict[str, torch.Tensor]:
    """ComfyUI-layout (HF names) state dict of a tiny wav2vec2-large-style model."""
    from transformers import Wav2Vec2Model

    from ..s2v.audio import wav2vec2_config_from_shapes

    t = TINY_WAV2VEC2
    h, c = t["hidden_size"], t["conv_dim"]
    shapes = {
        "encoder.layer_norm.weight": (h,), "feature_projection.projection.weight": (h, c),
        "feature_extractor.conv_layers.0.conv.weight": (c, 1, 10),
        "feature_extractor.conv_layers.1.layer_norm.weight": (c,),
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1": (h, h // t["pos_groups"], t["pos_kernel"]),
        "encoder.layers.0.feed_forward.intermediate_dense.weight": (t["intermediate_size"], h),
    }
    for i in range(t["num_hidden_layers"]):
        shapes[f"encoder.layers.{i}.layer_norm.weight"] = (h,)
    model = Wav2Vec2Model(wav2vec2_config_from_shapes(shapes, "tiny"))
    g = torch.Generator().manual_seed(seed)
    return {k: _fill(k, tuple(v.shape), g).contiguous() for k, v in model.state_dict().items()}


def write_tiny_s2v(path: str | Path, *, fp8_scaled: bool = False, prefix: str = "") -> Path:
    from safetensors.torch import save_file

    from ..loader.fp8_scaled import quantize_scaled_fp8

    sd = tiny_s2v_state_dict()
    if fp8_scaled:
        sd = quantize_scaled_fp8(sd, lambda k, v: v.ndim == 2 and k.startswith(("blocks.", "audio_injector.")))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v for k, v in sd.items()}, str(p))
    return p


def write_tiny_wav2vec2(path: str | Path) -> Path:
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_wav2vec2_state_dict(), str(p))
    return p


VERSION = "1"
NAMES = {"s2v": "s2v_14b", "s2v_fp8": "s2v_14b_fp8_scaled", "wav2vec2": "wav2vec2_large"}


def ensure_tiny_s2v(root: str | Path | None = None) -> dict[str, Path]:
    """Generate (once) and return {'s2v', 's2v_fp8', 'wav2vec2'} tiny files (see wanmeter.tiny registry)."""
    from . import ensure_tiny_models

    paths = ensure_tiny_models(root, names=list(NAMES.values()))
    return {k: paths[v] for k, v in NAMES.items()}


register(NAMES["s2v"], lambda d: write_tiny_s2v(d), "diffusion_models/tiny_wan2.2_s2v_14B_fp32.safetensors",
         version=VERSION)
register(NAMES["s2v_fp8"], lambda d: write_tiny_s2v(d, fp8_scaled=True, prefix="model.diffusion_model."),
         "diffusion_models/tiny_wan2.2_s2v_14B_fp8_scaled.safetensors", version=VERSION)
register(NAMES["wav2vec2"], lambda d: write_tiny_wav2vec2(d), "audio_encoders/tiny_wav2vec2_large_english_fp32.safetensors",
         version=VERSION)
