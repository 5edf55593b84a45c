"""run_parallel: one generation on N GPUs of this host, workers started and stopped here.

Each worker builds its own bundle on its GPU (bundle_factory(device) -> WanModelBundle; it must
be picklable: a module-level function or functools.partial of one, typically loading the DiT
files with wanmeter.loader). Ulysses goes in through diffusers' context parallelism on every
expert, CFG-parallel through a forward wrapper (cfg_pair); the denoising loop itself is
wanmeter.sampler.sample, unchanged, on every rank (identical predictions -> identical latents).
Rank 0 streams progress to this process, which runs `callback`; if the callback raises, all
ranks stop at the same step (a flag all-reduced once per step).
"""
from __future__ import annotations

import os
import queue as queue_mod
import tempfile
import traceback
from typing import Any, Callable

import torch

from ..errors import WanMeterError
from .layout import choose_layout
from .launch import free_port, multicast_off

Callback = Callable[[int, int, torch.Tensor], None]


class _Stop(Exception):
    """Raised on every rank when the parent asked to interrupt."""


def _worker(rank: int, world: int, port: int, backend: str, factory: Callable, positive: torch.Tensor,
            negative: torch.Tensor | None, request: Any, scheme: str, progress: Any, stop: Any, out_dir: str) -> None:
    import torch.distributed as dist

    from ..sampler import sample
    from ..sampler.request import resolve
    from . import cfg_pair
    from .groups import build_groups
    from .launch import init_worker
    from .ulysses import enable_ulysses

    device = init_worker(rank, world, port, backend)
    try:
        bundle = factory(device)
        r = resolve(bundle, request, positive, negative)
        guided = [c != 1.0 for c in r.cfg]
        tokens = r.latent_shape[2] * (r.latent_shape[3] // 2) * (r.latent_shape[4] // 2)
        heads = int(bundle.any_expert.config.num_attention_heads)
        layout = choose_layout(world, guidance=any(guided), heads=heads, tokens=tokens, scheme=scheme)
        if layout.world != world:
            raise WanMeterError(f"layout {layout.name} uses {layout.world} GPUs, not {world}")
        if layout.cfg > 1 and bundle.runtime.step_cache:
            raise WanMeterError("step_cache cannot be combined with CFG-parallel; turn it off or use scheme 'ulysses'.")
        groups = build_groups(layout, device.type)
        placement = bundle.placement  # applies attention/precision first: CP checks the backend in use
        neg_dev = None
        if negative is not None:
            neg_dev = (negative if negative.shape[0] == r.batch else negative.expand(r.batch, *negative.shape[1:]))
        for e_idx, e in enumerate(bundle.experts):
            if e is None:
                continue
            if layout.ulysses > 1:
                enable_ulysses(e, groups.cp_mesh, layout.ulysses, device.type)
            if layout.cfg > 1:
                cfg_pair.install(e, groups.cfg_group, groups.cfg_rank, neg_dev, guided[e_idx])
        del placement

        def cb(step: int, total: int, latent: torch.Tensor) -> None:
            if rank == 0:
                progress.put((step, total, latent.detach().float().cpu().numpy()))  # by value: rank 0 may exit first
            flag = torch.tensor([1.0 if stop.is_set() else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0:
                raise _Stop()

        try:
            out = sample(bundle, positive, negative, request, callback=cb)
        except _Stop:
            return
        if rank == 0:
            torch.save(out, os.path.join(out_dir, "latent.pt"))
    except BaseException as e:
        # W: a user-facing WanMeterError (re-raised as such in the parent), X: anything else
        msg = str(e) if isinstance(e, WanMeterError) else f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        with open(os.path.join(out_dir, f"error{rank}.txt"), "w") as f:
            f.write(("W" if isinstance(e, WanMeterError) else "X") + msg)
        raise
    finally:
        dist.destroy_process_group()


def run_parallel(bundle_factory: Callable[[torch.device], Any], positive: torch.Tensor,
                 negative: torch.Tensor | None, request: Any, num_gpus: int, scheme: str = "auto",
                 callback: Callback | None = None, *, backend: str | None = None,
                 variant: str | None = None) -> torch.Tensor:
    """Denoise `request` on `num_gpus` GPUs and return the raw latent (CPU, float32), like sample().

    scheme: "auto" (CFG pair first, Ulysses over the rest), "cfg" (2 GPUs), "ulysses", "cfg_ulysses".
    backend: "nccl" (default with CUDA) or "gloo" (CPU processes: tests).
    variant: when given, the request is validated here before any worker starts.
    The parent process loads nothing: each worker loads its own copy of the weights.
    """
    import torch.multiprocessing as mp

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and torch.cuda.device_count() < num_gpus:
        raise WanMeterError(f"num_gpus={num_gpus} but this machine has {torch.cuda.device_count()} GPU(s); lower num_gpus.")
    if variant is not None:
        from ..sampler.request import check_request

        check_request(variant, request)
    choose_layout(num_gpus, scheme=scheme)  # fail fast on a bad scheme / count before starting anything
    multicast_off()
    ctx = mp.get_context("spawn")
    progress, stop = ctx.Queue(), ctx.Event()
    cb_error: BaseException | None = None
    with tempfile.TemporaryDirectory() as out_dir:
        procs = mp.start_processes(_worker, args=(num_gpus, free_port(), backend, bundle_factory, positive.cpu(),
                                                  None if negative is None else negative.cpu(), request, scheme,
                                                  progress, stop, out_dir),
                                   nprocs=num_gpus, join=False, start_method="spawn")
        failed: BaseException | None = None

        def drain() -> None:
            nonlocal cb_error
            while True:
                try:
                    step, total, latent = progress.get_nowait()
                except queue_mod.Empty:
                    return
                if callback is not None and cb_error is None:
                    try:
                        callback(step, total, torch.from_numpy(latent))
                    except BaseException as e:  # interrupt: tell the workers, re-raise once they stopped
                        cb_error = e
                        stop.set()

        while True:
            try:
                done = procs.join(timeout=0.2)
            except Exception as e:
                failed = e
                break
            drain()
            if done:
                break
        drain()
        if cb_error is not None:
            raise cb_error
        texts = [open(os.path.join(out_dir, f)).read() for f in sorted(os.listdir(out_dir)) if f.startswith("error")]
        if texts:
            text = next((t for t in texts if t[0] == "W"), texts[0])
            if text[0] == "W":
                raise WanMeterError(text[1:])
            raise RuntimeError(f"multi-GPU worker failed: {text[1:]}")
        if failed is not None:
            raise RuntimeError(f"multi-GPU worker failed: {failed}") from failed
        return torch.load(os.path.join(out_dir, "latent.pt"), weights_only=True)
