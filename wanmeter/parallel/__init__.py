"""One generation on several GPUs of one host: CFG-parallel and Ulysses sequence parallel.

The engine starts and stops its own worker processes (one per GPU, NCCL; gloo on CPU), so a
ComfyUI user never runs torchrun. Ulysses uses diffusers' context parallelism (the `_cp_plan`
of WanTransformer3DModel); CFG-parallel runs the conditional and unconditional forwards on
different GPUs and exchanges the predictions.
"""
from .layout import Layout, choose_layout
from .launch import free_port, init_worker, multicast_off, spawn
from .cfg import guided_prediction
from .groups import Groups, build_groups
from .ulysses import enable_ulysses
from .engine import run_parallel

__all__ = ["Layout", "choose_layout", "free_port", "init_worker", "multicast_off", "spawn",
           "guided_prediction", "Groups", "build_groups", "enable_ulysses", "run_parallel"]
