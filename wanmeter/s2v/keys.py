"""Explicit key map: official / ComfyUI S2V checkpoint names -> WanS2VTransformer parameter names.

The base-transformer renames are the ones diffusers applies to Wan checkpoints (the tests check
this table against diffusers' own converter); the audio injectors' attention follows the same
scheme because it is a diffusers WanAttention; every other S2V module keeps its official name.
"""
from __future__ import annotations

import re

# (official regex, our template); first match wins, anchored at both ends.
_RULES: list[tuple[re.Pattern[str], str]] = [(re.compile(p), r) for p, r in [
    (r"patch_embedding\.(weight|bias)", r"patch_embedding.\1"),
    (r"text_embedding\.0\.(weight|bias)", r"condition_embedder.text_embedder.linear_1.\1"),
    (r"text_embedding\.2\.(weight|bias)", r"condition_embedder.text_embedder.linear_2.\1"),
    (r"time_embedding\.0\.(weight|bias)", r"condition_embedder.time_embedder.linear_1.\1"),
    (r"time_embedding\.2\.(weight|bias)", r"condition_embedder.time_embedder.linear_2.\1"),
    (r"time_projection\.1\.(weight|bias)", r"condition_embedder.time_proj.\1"),
    (r"head\.head\.(weight|bias)", r"proj_out.\1"),
    (r"head\.modulation", r"scale_shift_table"),
    (r"blocks\.(\d+)\.self_attn\.([qkv])\.(weight|bias)", r"blocks.\1.attn1.to_\2.\3"),
    (r"blocks\.(\d+)\.self_attn\.o\.(weight|bias)", r"blocks.\1.attn1.to_out.0.\2"),
    (r"blocks\.(\d+)\.self_attn\.norm_([qk])\.weight", r"blocks.\1.attn1.norm_\2.weight"),
    (r"blocks\.(\d+)\.cross_attn\.([qkv])\.(weight|bias)", r"blocks.\1.attn2.to_\2.\3"),
    (r"blocks\.(\d+)\.cross_attn\.o\.(weight|bias)", r"blocks.\1.attn2.to_out.0.\2"),
    (r"blocks\.(\d+)\.cross_attn\.norm_([qk])\.weight", r"blocks.\1.attn2.norm_\2.weight"),
    (r"blocks\.(\d+)\.norm3\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"blocks\.(\d+)\.ffn\.0\.(weight|bias)", r"blocks.\1.ffn.net.0.proj.\2"),
    (r"blocks\.(\d+)\.ffn\.2\.(weight|bias)", r"blocks.\1.ffn.net.2.\2"),
    (r"blocks\.(\d+)\.modulation", r"blocks.\1.scale_shift_table"),
    (r"audio_injector\.injector\.(\d+)\.([qkv])\.(weight|bias)", r"audio_injector.injector.\1.to_\2.\3"),
    (r"audio_injector\.injector\.(\d+)\.o\.(weight|bias)", r"audio_injector.injector.\1.to_out.0.\2"),
    (r"audio_injector\.injector\.(\d+)\.norm_([qk])\.weight", r"audio_injector.injector.\1.norm_\2.weight"),
    (r"audio_injector\.injector_adain_layers\.(\d+)\.linear\.(weight|bias)",
     r"audio_injector.injector_adain_layers.\1.linear.\2"),
    (r"casual_audio_encoder\.weights", r"casual_audio_encoder.weights"),
    (r"casual_audio_encoder\.encoder\.(conv1_local|conv1_global|conv2|conv3)\.conv\.(weight|bias)",
     r"casual_audio_encoder.encoder.\1.conv.\2"),
    (r"casual_audio_encoder\.encoder\.final_linear\.(weight|bias)", r"casual_audio_encoder.encoder.final_linear.\1"),
    (r"casual_audio_encoder\.encoder\.padding_tokens", r"casual_audio_encoder.encoder.padding_tokens"),
    (r"cond_encoder\.(weight|bias)", r"cond_encoder.\1"),
    (r"frame_packer\.(proj|proj_2x|proj_4x)\.(weight|bias)", r"frame_packer.\1.\2"),
    (r"trainable_cond_mask\.weight", r"trainable_cond_mask.weight"),
]]


def official_to_ours(key: str) -> str | None:
    """Our parameter name for an official key, or None when the key is not part of the S2V model."""
    for pat, repl in _RULES:
        m = pat.fullmatch(key)
        if m:
            return m.expand(repl)
    return None


def map_keys(keys) -> tuple[dict[str, str], list[str]]:
    """({our_name: official_key}, [official keys with no mapping])."""
    out: dict[str, str] = {}
    unknown: list[str] = []
    for k in keys:
        o = official_to_ours(k)
        if o is None:
            unknown.append(k)
        else:
            out[o] = k
    return out, unknown
