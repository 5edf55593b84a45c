"""The S2V-14B transformer's configuration, read from checkpoint shapes.

Why shapes: users hand us single safetensors files (official names, ComfyUI repackaged, fp8
scaled) with no config.json, and the tests use tiny random models of the same layout. Every
size the model needs is visible in some tensor's shape; only the audio-injection block list is
not, and it is derived from the official list exactly as the official code does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..errors import WanMeterError

# Blocks after which the official S2V-14B injects audio (wan/configs/wan_s2v_14B.py). The
# official model creates one injector per existing block whose name matches an entry; for
# fewer layers (tiny models) that is the entries below num_layers.
OFFICIAL_INJECT_LAYERS: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
MOTION_FRAMES = 73          # pixel frames of motion history (official transformer.motion_frames)
FRAMEPACK_BUCKETS = (1, 2, 16)  # near / mid / far latent frames of the frame packer
REF_ROPE_TIME = 30          # RoPE time position of the reference-image tokens
HEAD_DIM = 128

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_INJ = re.compile(r"^audio_injector\.injector\.(\d+)\.")


def official_inject_layers(num_layers: int, candidates: Sequence[int] = OFFICIAL_INJECT_LAYERS) -> tuple[int, ...]:
    """Injection blocks for a model of `num_layers` blocks, the official way.

    The official AudioInjector walks the model's blocks in order and, for each block, adds an
    injector for every configured layer id whose name `transformer_blocks.<id>` is a substring
    of the block's module name. We reproduce that rule (including its substring quirk) so a
    tiny 2-layer model gets exactly the injectors the official code would build.
    """
    out: list[int] = []
    for b in range(num_layers):
        name = f"root.transformer_blocks.{b}"
        for i in candidates:
            if f"transformer_blocks.{i}" in name:
                out.append(i)
    return tuple(out)


@dataclass(frozen=True)
class S2VConfig:
    dim: int = 5120
    ffn_dim: int = 13824
    num_layers: int = 40
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    audio_dim: int = 1024          # wav2vec2 hidden size
    num_audio_layers: int = 25     # wav2vec2 hidden states used (embeddings + every layer)
    num_audio_tokens: int = 4      # local audio heads per latent frame (+1 learned padding token)
    cond_dim: int = 16             # pose latent channels
    inject_layers: tuple[int, ...] = field(default=OFFICIAL_INJECT_LAYERS)
    patch_size: tuple[int, int, int] = (1, 2, 2)

    @property
    def num_heads(self) -> int:
        return self.dim // HEAD_DIM

    @property
    def head_dim(self) -> int:
        return HEAD_DIM

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]]) -> "S2VConfig":
        """Build the config from {official key: shape}. Raises WanMeterError if not an S2V DiT."""
        def need(k: str) -> tuple[int, ...]:
            if k not in shapes:
                raise WanMeterError(
                    f"This file has no tensor {k!r}, so it is not a Wan2.2 S2V-14B diffusion model. "
                    "Use wan2.2_s2v_14B_*.safetensors (e.g. the fp8_scaled or bf16 release).")
            return tuple(int(s) for s in shapes[k])

        pe = need("patch_embedding.weight")
        dim, in_ch = pe[0], pe[1]
        if dim % HEAD_DIM:
            raise WanMeterError(f"S2V model dim {dim} is not a multiple of 128; the file is not a Wan2.2 S2V model.")
        layers = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))}
        num_layers = len(layers)
        if layers != set(range(num_layers)) or num_layers == 0:
            raise WanMeterError("The S2V file's transformer blocks are not numbered 0..N-1: the file is damaged. Download it again.")
        n_inj = len({int(m.group(1)) for k in shapes if (m := _INJ.match(k))})
        inject = official_inject_layers(num_layers)
        if n_inj != len(inject):
            raise WanMeterError(
                f"The S2V file has {n_inj} audio injectors but a {num_layers}-block S2V model has "
                f"{len(inject)}; the file is not an official Wan2.2 S2V checkpoint. Use wan2.2_s2v_14B_*.safetensors.")
        local = need("casual_audio_encoder.encoder.conv1_local.conv.weight")
        glob = need("casual_audio_encoder.encoder.conv1_global.conv.weight")
        return cls(
            dim=dim,
            ffn_dim=need("blocks.0.ffn.0.weight")[0],
            num_layers=num_layers,
            in_channels=in_ch,
            out_channels=need("head.head.weight")[0] // 4,
            text_dim=need("text_embedding.0.weight")[1],
            freq_dim=need("time_embedding.0.weight")[1],
            audio_dim=local[1],
            num_audio_layers=need("casual_audio_encoder.weights")[1],
            num_audio_tokens=local[0] // glob[0],
            cond_dim=need("cond_encoder.weight")[1],
            inject_layers=inject,
        )
