"""3-D RoPE positions for the S2V token sequence: noisy video, reference image, motion history.

diffusers' WanRotaryPosEmbed only knows one contiguous video grid starting at time 0. S2V
places the reference tokens at time 30, and the frame-packed motion tokens at negative times
with spatial positions spread over the full grid (the compressed grids are sampled with an
integer linspace). We build explicit per-token (t, h, w) positions and turn them into the
(cos, sin) pair diffusers' WanAttnProcessor expects: [1, L, 1, head_dim], each frequency
repeated twice.
"""
from __future__ import annotations

import torch

from .config import FRAMEPACK_BUCKETS, REF_ROPE_TIME


def _lin_int(start: float, stop: float, num: int) -> torch.Tensor:
    """Integer samples of linspace(start, stop, num), truncated toward zero like numpy's astype(int)."""
    if num == 1:
        return torch.tensor([int(start)], dtype=torch.long)
    v = torch.linspace(float(start), float(stop), num, dtype=torch.float64)
    return torch.trunc(v).to(torch.long)


def grid_positions(t_pos: torch.Tensor, h_pos: torch.Tensor, w_pos: torch.Tensor) -> torch.Tensor:
    """All (t, h, w) combinations in t-major order: [len(t)*len(h)*len(w), 3]."""
    t, h, w = torch.meshgrid(t_pos, h_pos, w_pos, indexing="ij")
    return torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=1)


def video_positions(frames: int, h: int, w: int) -> torch.Tensor:
    return grid_positions(torch.arange(frames), torch.arange(h), torch.arange(w))


def ref_positions(h: int, w: int) -> torch.Tensor:
    return grid_positions(torch.tensor([REF_ROPE_TIME]), torch.arange(h), torch.arange(w))


def motion_positions(lat_h: int, lat_w: int) -> torch.Tensor:
    """Positions of the frame packer's tokens (near, mid, far), in that order.

    near: 1 latent frame at time -1, full patch grid. mid: 2 frames packed into 1 token frame
    at time -3, a (lat/4) grid spread over the (lat/2) range. far: 16 frames packed into 4
    token frames at times -19, -14, -9, -4, a (lat/8) grid spread over the (lat/2) range.
    """
    near, mid, far = FRAMEPACK_BUCKETS
    gh, gw = lat_h // 2, lat_w // 2
    parts = []
    # near
    parts.append(grid_positions(torch.tensor([-near]), torch.arange(gh), torch.arange(gw)))
    # mid: one token frame
    start = near + mid
    parts.append(grid_positions(torch.tensor([-start]),
                                _lin_int(0, gh - 1, lat_h // 4), _lin_int(0, gw - 1, lat_w // 4)))
    # far: far//4 token frames, times sampled from -(near+mid+far) up to -(near+mid)-1
    start = near + mid + far
    n_t = far // 4
    t = -_lin_int(start, start - far + 1, n_t)
    parts.append(grid_positions(t, _lin_int(0, gh - 1, lat_h // 8), _lin_int(0, gw - 1, lat_w // 8)))
    return torch.cat(parts, dim=0)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0,
                 device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape [1, L, 1, head_dim] for per-token (t, h, w) positions.

    Same split as Wan (t gets head_dim - 4*(head_dim//6) channels, h and w 2*(head_dim//6)),
    same inverse frequencies, angles computed in float64 like the official code.
    """
    hw = 2 * (head_dim // 6)
    dims = (head_dim - 2 * hw, hw, hw)
    angles = []
    pos = positions.to(torch.float64)
    for i, d in enumerate(dims):
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        angles.append(pos[:, i : i + 1] * inv[None, :])
    ang = torch.cat(angles, dim=1).repeat_interleave(2, dim=1)  # [L, head_dim]
    cos = ang.cos().to(device=device, dtype=dtype)[None, :, None, :]
    sin = ang.sin().to(device=device, dtype=dtype)[None, :, None, :]
    return cos, sin
