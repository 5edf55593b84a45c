"""One GPU's worker: keeps its models loaded and makes videos, writing each output atomically.

Plain Python (no Ray import): runner.py wraps the class as a Ray actor, one per GPU. A worker loads
the models of the first job it gets and keeps them while the next jobs use the same models (the
driver hands it same-model jobs in a row); a job of other models replaces them.

Atomic outputs: each video is written into out/.tmp/ and renamed into place (os.replace), then its
sidecar <video id>.json (job digest, paths, timings) is written the same way. A video file at its
final name is therefore complete, and a sidecar means the whole run (all its batch videos) is.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import WanMeterError
from .jobs import Job

# the tiny random fixtures per variant, as `python -m wanmeter demo` uses them
TINY_DITS = {"t2v_a14b": ["dit_t2v_high", "dit_t2v_low"], "i2v_a14b": ["dit_i2v_high", "dit_i2v_low"],
             "ti2v_5b": ["dit_ti2v"]}


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tiny_model_files(variant: str) -> dict[str, Any]:
    """{"dit": [...], "text_encoder": ..., "vae": ...} of the tiny random models (generated on first use)."""
    from ..tiny import ensure_tiny_models
    from ..variants import variant as facts

    if variant not in TINY_DITS:
        raise WanMeterError(f"fleet run has no tiny models for {variant}: use t2v_a14b, i2v_a14b or ti2v_5b.")
    vae = f"vae_{facts(variant)['vae']}"
    paths = ensure_tiny_models(names=TINY_DITS[variant] + ["umt5_fp16", vae])
    return {"dit": [str(paths[n]) for n in TINY_DITS[variant]], "text_encoder": str(paths["umt5_fp16"]),
            "vae": str(paths[vae])}


def start_image(width: int, height: int):
    """The demo's deterministic start image (for I2V jobs that name no image)."""
    from ..cli import _demo_image

    return _demo_image(width, height)


class VideoWorker:
    """Makes videos on one device; `run(task)` -> result dict (see runner.py for the task)."""

    def __init__(self, tier: str, device: str = "auto", threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.tier, self.device = tier, device
        self.key: str | None = None
        self.pipe = None
        self.loads = 0

    def pid(self) -> int:
        return os.getpid()

    def info(self) -> dict[str, Any]:
        import socket

        import torch

        dev = "cpu"
        if self.device != "cpu" and torch.cuda.is_available():
            dev = torch.cuda.get_device_name(0)
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": dev, "tier": self.tier}

    def _load(self, job: Job, plan, tiny: bool) -> float:
        """Load the job's models unless they are the ones held; returns the seconds spent loading."""
        if self.pipe is not None and self.key == job.model_key:
            return 0.0
        import torch

        from ..loader import load_dit
        from ..loader.text_encoder import load_text_encoder
        from ..loader.vae_loader import load_vae
        from ..pipeline import WanPipeline
        from ..runtime.options import RuntimeOptions
        from ..sampler import WanModelBundle

        self.pipe = None
        self.key = None
        t0 = time.perf_counter()
        files = tiny_model_files(job.workload.variant) if tiny or job.models is None else job.models
        on_gpu = self.device != "cpu" and torch.cuda.is_available()
        te_on_cpu = False
        if not on_gpu or plan is None:
            # CPU (or no plan): fp32 as the demo runs; the tier's memory plan is for its GPU
            runtime, kw, te_dtype, vae_dtype = RuntimeOptions(device="cuda" if on_gpu else "cpu"), \
                {"weight_dtype": "fp32"}, torch.float32, torch.float32
        else:
            from ..memplan import apply_plan

            ap = apply_plan(plan)   # the plan the estimate was made for: the run is what was estimated
            runtime, kw = ap.runtime_options("cuda"), ap.loader_kwargs()
            te_on_cpu = ap.text_encoder_device == "cpu"
            te_dtype = torch.float32 if te_on_cpu else torch.bfloat16
            vae_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(ap.vae_dtype, torch.float32)
        dev = runtime.torch_device()
        load_dev = dev if runtime.offload == "none" else torch.device("cpu")
        dits = [load_dit(p, device=load_dev, **kw) for p in files["dit"]]
        vae = load_vae(files["vae"], dtype=vae_dtype, device=dev)
        te = load_text_encoder(files["text_encoder"], device=torch.device("cpu") if te_on_cpu else dev, dtype=te_dtype)
        bundle = WanModelBundle.from_loaded(job.workload.variant, *dits, vae=vae, runtime=runtime)
        bundle.placement  # place now, inside the load time
        self.pipe, self.key = WanPipeline(bundle, te, vae), job.model_key
        self.loads += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """Make the videos of one sampler run and write them; returns timings and paths."""
        from ..cli import _load_image
        from ..sampler import SampleRequest
        from ..video import write_video

        job: Job = task["job"]
        out = Path(task["out_dir"])
        vid = task["video"]
        running = Path(task["running_dir"]) / f"{vid}.{task['attempt']}"
        running.parent.mkdir(parents=True, exist_ok=True)
        running.write_text(str(os.getpid()), encoding="utf-8")   # lets a test or an operator see it started
        t_load = self._load(job, task.get("plan"), task.get("tiny", True))
        w = job.workload
        req = SampleRequest(width=w.width, height=w.height, frames=w.frames, steps=w.steps, cfg=w.cfg, shift=w.shift,
                            seed=int(task["seed"]), batch_size=w.batch, boundary=w.boundary or None)
        image = None
        if w.variant in ("i2v_a14b", "ti2v_5b"):
            image = _load_image(job.image) if job.image else (start_image(w.width, w.height) if w.variant == "i2v_a14b"
                                                              else None)
        t0 = time.perf_counter()
        result = self.pipe(job.prompt, req, negative_prompt=job.negative_prompt, image=image)
        gen_s = time.perf_counter() - t0
        tmp = out / ".tmp" / f"{vid}-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, frames in enumerate(result.frames):
            name = vid if len(result.frames) == 1 else f"{vid}_{k}"
            written = write_video(frames, tmp / f"{name}.mp4", fps=result.fps)
            final = out / written.name
            os.replace(written, final)
            paths.append(final.name)
        shutil.rmtree(tmp, ignore_errors=True)
        res = {"video": vid, "job": job.id, "digest": job.digest(), "paths": paths, "tier": self.tier,
               "seconds": gen_s, "load_s": t_load, "attempt": task["attempt"], "pid": os.getpid(),
               "stages": {s.name: round(s.seconds, 3) for s in result.stages},
               "peak_bytes": result.peak_bytes, "finished": time.time()}
        atomic_write_text(out / f"{vid}.json", json.dumps(res, indent=1))
        running.unlink(missing_ok=True)
        return res
