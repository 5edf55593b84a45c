"""Start one worker process per GPU and join them: no torchrun.

NVLink multicast (NVLS / symmetric-memory multicast) stays off: the env vars are set in the
parent before spawning so every worker and NCCL inherit them.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any, Callable

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def multicast_off() -> None:
    """Set the env vars that keep NVLink multicast off (before any process group exists)."""
    os.environ.update(MULTICAST_OFF)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the rendezvous of one spawn)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_worker(rank: int, world: int, port: int, backend: str, timeout_s: float = 600.0):
    """Join the process group of one spawn; returns this worker's device (cuda:rank or cpu)."""
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return device


def spawn(fn: Callable[..., Any], world: int, args: tuple = ()) -> None:
    """Run fn(rank, *args) in `world` fresh processes and wait for all of them (raises if one fails).

    fn must be importable by the children (a module-level function)."""
    import torch.multiprocessing as mp

    multicast_off()
    mp.spawn(fn, args=args, nprocs=world, join=True)
