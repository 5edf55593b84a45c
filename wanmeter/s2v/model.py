"""WanS2VTransformer: the Wan2.2 S2V-14B DiT built from diffusers' Wan parts plus the S2V modules.

Reused from diffusers: WanTransformerBlock (attention, FFN, norms, parameters), WanAttention,
WanTimeTextImageEmbedding, FP32LayerNorm, AdaLayerNorm. Added here: the audio encoder and
injectors, the frame packer for motion history, the pose encoder, the token-type embedding, the
S2V RoPE layout and the two-segment modulation (noisy tokens use timestep t, reference and
motion tokens use t=0), which the stock block cannot express without materialising a per-token
modulation tensor (gigabytes at 480p).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding, WanTransformerBlock

from .config import MOTION_FRAMES, S2VConfig
from .modules import AudioInjector, CausalAudioEncoder, FramePacker
from .rope import motion_positions, ref_positions, rope_cos_sin, video_positions


class WanS2VTransformerBlock(WanTransformerBlock):
    """diffusers' Wan block with per-segment modulation: tokens [0, seg) get `mods[0]`, the rest `mods[1]`."""

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb, seg: int | None = None):  # type: ignore[override]
        if seg is None:
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        e_a, e_b = temb  # [B, 6, D] each
        ma = (self.scale_shift_table + e_a.float()).chunk(6, dim=1)
        mb = (self.scale_shift_table + e_b.float()).chunk(6, dim=1)

        def modulate(x, shift_i, scale_i):
            x[:, :seg].mul_(1 + ma[scale_i]).add_(ma[shift_i])
            x[:, seg:].mul_(1 + mb[scale_i]).add_(mb[shift_i])
            return x

        def gate(y, i):
            y[:, :seg].mul_(ma[i])
            y[:, seg:].mul_(mb[i])
            return y

        x = hidden_states
        h = modulate(self.norm1(x.float()), 0, 1).type_as(x)
        y = gate(self.attn1(h, None, None, rotary_emb).float(), 2)
        x = (x.float() + y).type_as(x)
        h = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(h, encoder_hidden_states, None, None)
        h = modulate(self.norm3(x.float()), 3, 4).type_as(x)
        y = gate(self.ffn(h).float(), 5)
        return (x.float() + y).type_as(x)


class WanS2VTransformer(nn.Module):
    """Speech-to-video DiT. Inputs are in the official normalised latent space.

    forward(latents, timestep, context, ref_latents, motion_latents, audio, cond_latents=None,
    drop_motion=False) -> velocity with the shape of `latents`. Batch entries share ref /
    motion / pose shapes (CFG stacks cond and uncond along the batch).
    """

    def __init__(self, config: S2VConfig):
        super().__init__()
        c = config
        self.config = c
        self.patch_embedding = nn.Conv3d(c.in_channels, c.dim, c.patch_size, stride=c.patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=c.dim, time_freq_dim=c.freq_dim, time_proj_dim=c.dim * 6, text_embed_dim=c.text_dim)
        self.blocks = nn.ModuleList([
            WanS2VTransformerBlock(c.dim, c.ffn_dim, c.num_heads, "rms_norm_across_heads", True, c.eps)
            for _ in range(c.num_layers)])
        self.norm_out = FP32LayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(c.dim, c.out_channels * 4)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, c.dim) / c.dim**0.5)
        # S2V modules (official names)
        self.cond_encoder = nn.Conv3d(c.cond_dim, c.dim, c.patch_size, stride=c.patch_size)
        self.casual_audio_encoder = CausalAudioEncoder(c.audio_dim, c.dim, c.num_audio_tokens, c.num_audio_layers)
        self.audio_injector = AudioInjector(c.dim, len(c.inject_layers), c.eps)
        self.inject_at = {layer: i for i, layer in enumerate(c.inject_layers)}
        self.trainable_cond_mask = nn.Embedding(3, c.dim)
        self.frame_packer = FramePacker(c.dim, c.in_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def encode_audio_tokens(self, audio: torch.Tensor, lat_motion_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, L, C, T] per video frame -> (global [B, T/4, 1, D], local [B, T/4, n, D]).

        The first frame is repeated MOTION_FRAMES times in front (so the causal convs see a
        history as long as the motion frames) and the tokens of that prefix are dropped.
        """
        audio = torch.cat([audio[..., :1].expand(*audio.shape[:-1], MOTION_FRAMES), audio], dim=-1)
        glo, loc = self.casual_audio_encoder(audio)
        return glo[:, lat_motion_frames:], loc[:, lat_motion_frames:]

    def forward(
        self,
        latents: torch.Tensor,                 # [B, C, F, h, w]
        timestep: torch.Tensor,                # [B] or scalar
        context: torch.Tensor,                 # [B, 512, text_dim]
        ref_latents: torch.Tensor,             # [B or 1, C, 1, h, w]
        motion_latents: torch.Tensor | None,   # [B or 1, C, 19, h, w]
        audio: torch.Tensor,                   # [B, num_audio_layers, audio_dim, frames]
        cond_latents: torch.Tensor | None = None,  # pose [B or 1, cond_dim, F, h, w]
        drop_motion: bool = False,
    ) -> torch.Tensor:
        b, _, f, h, w = latents.shape
        dt = self.dtype
        dev = latents.device
        lat_motion = (MOTION_FRAMES + 3) // 4
        a_glo, a_loc = self.encode_audio_tokens(audio.to(dev), lat_motion)
        if a_loc.shape[1] != f:
            raise ValueError(f"audio gives {a_loc.shape[1]} latent frames, latents have {f}")

        def expand(t: torch.Tensor) -> torch.Tensor:
            return t.expand(b, *t.shape[1:]) if t.shape[0] == 1 and b > 1 else t

        x = self.patch_embedding(latents.to(dt))
        if cond_latents is not None:
            x = x + expand(self.cond_encoder(cond_latents.to(dev, dt)))
        else:  # official passes zeros: only the bias remains
            x = x + self.cond_encoder.bias.view(1, -1, 1, 1, 1).to(x.dtype)
        gf, gh, gw = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        n_video = x.shape[1]
        parts = [x]
        kinds = [0]
        pos = [video_positions(gf, gh, gw)]
        r = self.patch_embedding(ref_latents.to(dev, dt))
        parts.append(expand(r.flatten(2).transpose(1, 2)))
        kinds.append(1)
        pos.append(ref_positions(*r.shape[3:]))
        if motion_latents is not None and not drop_motion:
            parts.append(expand(self.frame_packer(motion_latents.to(dev, dt))))
            kinds.append(2)
            pos.append(motion_positions(h, w))
        lens = [p.shape[1] for p in parts]
        x = torch.cat(parts, dim=1)
        kind_ids = torch.cat([torch.full((n,), k, dtype=torch.long) for n, k in zip(lens, kinds)]).to(dev)
        x = x + self.trainable_cond_mask(kind_ids)[None].to(x.dtype)
        rotary = rope_cos_sin(torch.cat(pos), self.config.head_dim, device=dev, dtype=torch.float32)

        t = timestep.reshape(-1).to(dev)
        if t.numel() == 1 and b > 1:
            t = t.expand(b)
        t_all = torch.cat([t, t.new_zeros(1)])
        temb, tproj, ctx, _ = self.condition_embedder(t_all, context.to(dev, dt))
        tproj = tproj.unflatten(1, (6, -1))
        e_video, e_cond = tproj[:b], tproj[b:].expand(b, -1, -1)
        temb = temb[:b]

        for i, block in enumerate(self.blocks):
            x = block(x, ctx, (e_video, e_cond), rotary, seg=n_video)
            j = self.inject_at.get(i)
            if j is not None:
                res = self.audio_injector(j, x[:, :n_video], a_loc.to(x.dtype), a_glo.to(x.dtype))
                x = torch.cat([x[:, :n_video] + res, x[:, n_video:]], dim=1)

        x = x[:, :n_video]
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.float()[:, None]).chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)
        p_t, p_h, p_w = self.config.patch_size
        x = x.reshape(b, gf, gh, gw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
