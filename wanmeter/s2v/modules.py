"""The S2V-only parts of the transformer (diffusers has none of them).

Parameter names follow the official checkpoint (`casual_audio_encoder.*`, `frame_packer.*`,
`audio_injector.injector_adain_layers.*`) so those keys load unchanged; the audio cross-
attention reuses diffusers' `WanAttention` and `AdaLayerNorm`, so its keys are renamed like the
main blocks' (q -> to_q, o -> to_out.0).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention import AdaLayerNorm
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from .config import FRAMEPACK_BUCKETS, HEAD_DIM


class CausalConv1d(nn.Module):
    """Conv1d that only looks back: left-pads (kernel-1) samples by replicating the first one."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.pad = kernel - 1
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        return self.conv(F.pad(x, (self.pad, 0), mode="replicate"))


class AudioTokenEncoder(nn.Module):
    """wav2vec2 features per video frame -> audio tokens per latent frame (4x time reduction).

    Local branch: `heads` token streams of dim/4 each, downsampled by two stride-2 causal convs
    to `dim`, plus one learned padding token -> heads+1 tokens per latent frame. Global branch:
    one token per latent frame through the same downsampling convs and a final linear; it drives
    the injectors' AdaLN. (Official module name: MotionEncoder_tc.)
    """

    def __init__(self, in_dim: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        q = dim // 4
        self.conv1_local = CausalConv1d(in_dim, q * heads, 3, 1)
        self.conv1_global = CausalConv1d(in_dim, q, 3, 1)
        self.conv2 = CausalConv1d(q, dim // 2, 3, 2)
        self.conv3 = CausalConv1d(dim // 2, dim, 3, 2)
        self.final_linear = nn.Linear(dim, dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, dim/4] (after conv1) -> [N, T/4, dim]: norm/act/conv twice, then norm/act."""
        x = F.silu(F.layer_norm(x, x.shape[-1:], eps=1e-6))
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = F.silu(F.layer_norm(x, x.shape[-1:], eps=1e-6))
        x = self.conv3(x.transpose(1, 2)).transpose(1, 2)
        return F.silu(F.layer_norm(x, x.shape[-1:], eps=1e-6))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, T, in_dim] -> (global [B, T', 1, dim], local [B, T', heads+1, dim])."""
        b = feats.shape[0]
        x = feats.transpose(1, 2)  # [B, C, T]
        loc = self.conv1_local(x)  # [B, heads*q, T]
        loc = loc.unflatten(1, (self.heads, -1)).flatten(0, 1).transpose(1, 2)  # [B*heads, T, q]
        loc = self._down(loc)  # [B*heads, T', dim]
        loc = loc.unflatten(0, (b, self.heads)).permute(0, 2, 1, 3)  # [B, T', heads, dim]
        pad = self.padding_tokens.expand(b, loc.shape[1], 1, -1).to(loc.dtype)
        loc = torch.cat([loc, pad], dim=2)
        glo = self.conv1_global(x).transpose(1, 2)  # [B, T, q]
        glo = self.final_linear(self._down(glo))  # [B, T', dim]
        return glo[:, :, None, :], loc


class CausalAudioEncoder(nn.Module):
    """Learned softmax-free layer weighting of the wav2vec2 hidden states, then the token encoder.

    The weights go through SiLU and are normalised by their sum (official behaviour), so the
    mix is a weighted mean over the `num_layers` hidden states. Runs in float32.
    """

    def __init__(self, in_dim: int, dim: int, heads: int, num_layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))
        self.encoder = AudioTokenEncoder(in_dim, dim, heads)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, num_layers, in_dim, T] -> (global, local) tokens (see AudioTokenEncoder)."""
        dtype = self.encoder.conv2.conv.weight.dtype
        w = F.silu(self.weights.float())
        mixed = ((audio.float() * w) / w.sum(dim=1, keepdim=True)).sum(dim=1)  # [B, in_dim, T]
        return self.encoder(mixed.transpose(1, 2).to(dtype))


class FramePacker(nn.Module):
    """Motion history (19 latent frames) -> tokens: far 16 frames at 4x8x8, mid 2 at 2x4x4, near 1 at 1x2x2.

    Older history is compressed harder. Histories shorter than 19 frames are left-padded with
    zeros (official "padd" mode); the caller drops the tokens when there is no history yet.
    """

    def __init__(self, dim: int, in_channels: int = 16):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, (1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(in_channels, dim, (2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(in_channels, dim, (4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        """motion [B, C, T, h, w] -> tokens [B, N, dim] ordered near, mid, far."""
        near, mid, far = FRAMEPACK_BUCKETS
        total = near + mid + far
        b, c, t, h, w = motion.shape
        if t < total:
            motion = torch.cat([motion.new_zeros(b, c, total - t, h, w), motion], dim=2)
        motion = motion[:, :, -total:]
        m_far, m_mid, m_near = motion.split([far, mid, near], dim=2)
        toks = [self.proj(m_near), self.proj_2x(m_mid), self.proj_4x(m_far)]
        return torch.cat([x.flatten(2).transpose(1, 2) for x in toks], dim=1)


class AudioInjector(nn.Module):
    """Per-latent-frame cross-attention from video tokens to that frame's audio tokens.

    `injector[i]` is a diffusers WanAttention (RMS q/k norm); `injector_adain_layers[i]` is the
    diffusers AdaLayerNorm the official code uses (shift/scale from the frame's global audio token).
    """

    def __init__(self, dim: int, num_injectors: int, eps: float = 1e-6):
        super().__init__()
        heads = dim // HEAD_DIM
        self.injector = nn.ModuleList([
            WanAttention(dim=dim, heads=heads, dim_head=HEAD_DIM, eps=eps,
                         cross_attention_dim_head=HEAD_DIM, processor=WanAttnProcessor())
            for _ in range(num_injectors)])
        self.injector_adain_layers = nn.ModuleList([
            AdaLayerNorm(embedding_dim=dim, output_dim=2 * dim, chunk_dim=1) for _ in range(num_injectors)])

    def forward(self, idx: int, video: torch.Tensor, audio_local: torch.Tensor, audio_global: torch.Tensor) -> torch.Tensor:
        """video [B, F*hw, D], audio_local [B, F, n, D], audio_global [B, F, 1, D] -> residual [B, F*hw, D]."""
        b, f = audio_local.shape[:2]
        x = video.reshape(b * f, -1, video.shape[-1])
        x = self.injector_adain_layers[idx](x, temb=audio_global.flatten(0, 1)[:, 0].to(x.dtype))
        out = self.injector[idx](x, audio_local.flatten(0, 1).to(x.dtype))
        return out.reshape(b, -1, video.shape[-1])
