"""Process groups of a layout: the CFG pair and the Ulysses mesh inside it.

Ranks are laid out cfg-major (rank = cfg_index * ulysses + ulysses_index), so a Ulysses group is
a run of neighbouring GPUs and the CFG exchange crosses groups once per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .layout import Layout


@dataclass
class Groups:
    layout: Layout
    cfg_group: Any = None     # ProcessGroup over the cfg dimension (None when cfg == 1)
    cfg_rank: int = 0         # 0 runs the conditional forward, 1 the unconditional one
    cp_mesh: Any = None       # DeviceMesh ("ring", "ulysses") for diffusers' ContextParallelConfig


def build_groups(layout: Layout, device_type: str) -> Groups:
    """Build the device mesh for `layout` over the initialised default process group."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if layout.world == 1:
        return Groups(layout)
    if dist.get_world_size() != layout.world:
        raise RuntimeError(f"layout {layout.name} needs {layout.world} processes, group has {dist.get_world_size()}")
    mesh = init_device_mesh(device_type, (layout.cfg, 1, layout.ulysses), mesh_dim_names=("cfg", "ring", "ulysses"))
    g = Groups(layout)
    if layout.cfg > 1:
        g.cfg_group = mesh["cfg"].get_group()
        g.cfg_rank = mesh["cfg"].get_local_rank()
    if layout.ulysses > 1:
        g.cp_mesh = mesh["ring", "ulysses"]
    return g
