"""Flow-matching schedulers from diffusers, and the slice of the schedule a run executes.

"unipc" is the official default (flow UniPC, order 2, bh2 corrector, x0 prediction from a flow
prediction); "euler" is plain flow Euler. Both shift sigmas by s*sig/(1+(s-1)*sig).

Two sigma grids before the shift:
- "official": linspace(0.999, 0, N+1)[:-1], as Wan2.2's FlowUniPCMultistepScheduler (default;
  the test suite checks identical timesteps and sigmas against the official class);
- "diffusers": linspace(1, 0.001, N+1)[:-1], what diffusers' WanPipeline gets from
  UniPCMultistepScheduler.set_timesteps(N). The two differ by up to ~7 timestep units near
  the end of a 40-step schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import WanMeterError


def make_scheduler(name: str, shift: float):
    """A fresh diffusers scheduler (they are stateful: one per run)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=float(shift), solver_order=2, solver_type="bh2", predict_x0=True,
            lower_order_final=True, final_sigmas_type="zero",
        )
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=float(shift))
    raise WanMeterError(f"Unknown scheduler {name!r}; use 'unipc' or 'euler'.")


@dataclass
class Schedule:
    scheduler: object
    timesteps: torch.Tensor      # on the compute device, only the steps to run
    timesteps_cpu: list[float]   # same, as floats, for host-side decisions (no device sync)
    start_sigma: float           # sigma the initial latent must be at
    start_index: int


SIGMA_GRIDS = ("official", "diffusers")


def plan(name: str, shift: float, steps: int, total_steps: int, device: torch.device,
         grid: str = "official") -> Schedule:
    """Schedule for `total_steps`, of which the last `steps` run (ComfyUI-style partial denoise)."""
    sch = make_scheduler(name, shift)
    if grid == "official":
        sch.set_timesteps(sigmas=np.linspace(0.999, 0.0, total_steps + 1)[:-1].copy(), device=device)
    elif grid == "diffusers":
        sch.set_timesteps(total_steps, device=device)
    else:
        raise WanMeterError(f"Unknown sigma grid {grid!r}; use one of {', '.join(SIGMA_GRIDS)}.")
    start = total_steps - steps
    order = int(getattr(sch, "order", 1))
    ts = sch.timesteps[start * order:]
    sch.set_begin_index(start * order)
    return Schedule(sch, ts, [float(t) for t in ts.cpu()], float(sch.sigmas[start * order]), start)
