"""`python -m wanmeter <command>`: demo, generate, and the subcommands other areas plug in.

Plug-in contract: a module listed in PLUGINS defines `add_subcommands(subparsers)` that adds its
parsers and sets `func=<callable(args) -> int>` on each (argparse's set_defaults). cli.py
imports it lazily, so a missing optional area never breaks `demo`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .errors import WanMeterError

# modules (relative to this package) with add_subcommands(subparsers)
PLUGINS: list[str] = [".estimator.cli_estimate", ".fleet.cli", ".loader.audit"]

_DEMO_PROMPT = "a red fox walks slowly through a snowy forest at dawn"
_DEMO_SIZE = (64, 64)      # tiny VAEs decode slowly on CPU: keep the demo at seconds
_DEMO_FRAMES = 9
_DEMO_STEPS = 4


def _demo_image(width: int, height: int):
    """A deterministic start image for the I2V / TI2V demos (a colour gradient with a disc)."""
    import torch

    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    disc = (((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.06).float()
    return torch.stack([x, y, 1 - x * 0.5], dim=-1) * (1 - disc[..., None]) + disc[..., None] * 0.9


def _load_image(path: str):
    import numpy as np
    import torch
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB")
    except (OSError, ValueError) as e:
        raise WanMeterError(f"Cannot read the image {path!r} ({e}); give a PNG or JPEG file.") from None
    return torch.from_numpy(np.asarray(img).astype("float32") / 255.0)


def _runtime(args: argparse.Namespace):
    from .runtime.options import RuntimeOptions

    return RuntimeOptions(device=args.device, offload=args.offload, blocks_to_stream=args.blocks_to_stream,
                          attention=args.attention, compute_dtype=args.compute_dtype)


def _add_runtime_args(p: argparse.ArgumentParser, device: str) -> None:
    from .attention_kernels import kernels   # not .runtime: building the parser must not import torch

    ATTENTION_CHOICES, OFFLOAD_MODES = list(kernels()), ["none", "model", "blocks"]
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=device, help=f"auto | cpu | cuda (default {device})")
    g.add_argument("--offload", default="none", choices=OFFLOAD_MODES)
    g.add_argument("--blocks-to-stream", type=int, default=0, help="with --offload blocks")
    g.add_argument("--attention", default="auto", choices=ATTENTION_CHOICES)
    g.add_argument("--compute-dtype", default=None, choices=["bf16", "fp16", "fp32"])


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    from . import schema   # the node's scheduler choices; not .sampler: building the parser must not import torch

    SCHEDULERS = schema.widget("WanMeterSampler", "scheduler")["choices"]

    g = p.add_argument_group("sampling")
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--frames", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--cfg", type=float, nargs="+", help="one value, or high and low for A14B")
    g.add_argument("--shift", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--scheduler", default="unipc", choices=SCHEDULERS)
    g.add_argument("--sigma-grid", default="official", choices=["official", "diffusers"])
    g.add_argument("--boundary", type=float, help="A14B expert switch (t >= boundary*1000: high-noise)")


def _request(args: argparse.Namespace, variant_name: str, size: tuple[int, int] | None = None, frames: int | None = None):
    from .sampler import SampleRequest
    from .variants import variant

    f = variant(variant_name)
    w, h = size or tuple(f["sizes"][0])
    cfg = None if not args.cfg else (args.cfg[0] if len(args.cfg) == 1 else tuple(args.cfg))
    return SampleRequest(width=args.width or w, height=args.height or h, frames=args.frames or frames or f["default_frames"],
                         steps=args.steps, cfg=cfg, shift=args.shift, seed=args.seed, batch_size=args.batch_size,
                         scheduler=args.scheduler, sigma_grid=args.sigma_grid, boundary=args.boundary)


def _write_outputs(result, out_dir: Path, stem: str, fps: int | None) -> list[Path]:
    from .video import write_video

    paths = []
    for i, video in enumerate(result.frames):
        name = stem if len(result.frames) == 1 else f"{stem}_{i}"
        paths.append(write_video(video, out_dir / f"{name}.mp4", fps=fps or result.fps))
    return paths


def _print_result(result, paths: list[Path], total_s: float) -> None:
    print(result.report())
    print(f"  {'total':<11} {total_s:7.2f} s")
    _, f, h, w, _ = result.frames.shape
    for p in paths:
        print(f"wrote {p} ({f} frames, {w}x{h}, {result.fps} fps)")


# -- demo ------------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    from .pipeline import generate_from_files
    from .tiny import ensure_tiny_models
    from .variants import variant

    name = args.variant
    f = variant(name)
    fixtures = {"t2v_a14b": ["dit_t2v_high", "dit_t2v_low"], "i2v_a14b": ["dit_i2v_high", "dit_i2v_low"],
                "ti2v_5b": ["dit_ti2v"]}[name]
    t0 = time.perf_counter()
    paths = ensure_tiny_models(names=fixtures + ["umt5_fp16", f"vae_{f['vae']}"])
    req = _request(args, name, _DEMO_SIZE, frames=_DEMO_FRAMES)
    if args.steps is None:
        req.steps = _DEMO_STEPS
    image = None
    if name != "t2v_a14b":
        image = _load_image(args.image) if args.image else _demo_image(req.width, req.height)
    print(f"WanMeter demo: {f['label']} on tiny random weights (the video is noise; every stage is real)")
    print(f"  {req.width}x{req.height}, {req.frames} frames, {req.steps} steps ({req.scheduler}), "
          f"{args.device}, offload {args.offload}")
    result = generate_from_files(
        dit=[paths[n] for n in fixtures], text_encoder=paths["umt5_fp16"], vae=paths[f"vae_{f['vae']}"],
        prompt=args.prompt, req=req, image=image, variant_name=name, runtime=_runtime(args), weight_dtype="fp32")
    out = _write_outputs(result, Path(args.out), f"wanmeter_demo_{name}", None)
    _print_result(result, out, time.perf_counter() - t0)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the whole chain on tiny random models (CPU, seconds)",
                       description="Text encoder -> sampler -> VAE decode -> video file, on tiny random models.")
    p.add_argument("--variant", default="t2v_a14b", choices=["t2v_a14b", "i2v_a14b", "ti2v_5b"])
    p.add_argument("--out", default="output", help="output folder (default: output/)")
    p.add_argument("--prompt", default=_DEMO_PROMPT)
    p.add_argument("--image", help="start image for i2v_a14b / ti2v_5b (default: a generated one)")
    _add_sampling_args(p)
    _add_runtime_args(p, device="cpu")
    p.set_defaults(func=run_demo)


# -- generate --------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> int:
    from .loader import inspect_dit
    from .pipeline import generate_from_files

    info = inspect_dit(args.dit[0])
    name = args.variant or info.variant
    req = _request(args, name)
    image = _load_image(args.image) if args.image else None
    t0 = time.perf_counter()

    def progress(step: int, total: int, _latent) -> None:
        print(f"\r  step {step}/{total}", end="" if step < total else "\n", flush=True)

    result = generate_from_files(
        dit=args.dit, text_encoder=args.text_encoder, vae=args.vae, prompt=args.prompt,
        negative_prompt=args.negative_prompt, req=req, image=image, variant_name=name, runtime=_runtime(args),
        weight_dtype=args.weight_dtype, text_encoder_device=args.text_encoder_device,
        tiled_decode=args.tiled_decode, callback=progress)
    out = _write_outputs(result, Path(args.out), args.name, args.fps)
    _print_result(result, out, time.perf_counter() - t0)
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from real Wan2.2 files",
                       description="Generate a video with real model files (ComfyUI's repackaged files work).")
    p.add_argument("--dit", nargs="+", required=True, help="DiT file(s): HIGH LOW for A14B, one file for TI2V-5B")
    p.add_argument("--text-encoder", required=True, help="umt5_xxl_*.safetensors")
    p.add_argument("--vae", required=True, help="wan_2.1_vae.safetensors (A14B) or wan2.2_vae.safetensors (5B)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--image", help="start image (I2V-A14B: required; TI2V-5B: optional)")
    p.add_argument("--variant", help="override the variant detected from the DiT file")
    p.add_argument("--weight-dtype", default="bf16", help="bf16 | fp16 | fp32 | fp8_e4m3fn | fp8_e5m2")
    p.add_argument("--text-encoder-device", default="cpu")
    p.add_argument("--tiled-decode", action="store_true", help="less VAE memory, tiny seams")
    p.add_argument("--out", default="output")
    p.add_argument("--name", default="wanmeter")
    p.add_argument("--fps", type=int, help="default: the variant's (16, or 24 for TI2V-5B)")
    _add_sampling_args(p)
    _add_runtime_args(p, device="auto")
    p.set_defaults(func=run_generate)


BUILTIN: list[Callable] = [_add_demo, _add_generate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wanmeter", description="WanMeter: run Wan2.2 and meter it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in BUILTIN:
        add(sub)
    for mod in PLUGINS:
        try:
            plugin = importlib.import_module(mod, __package__)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(__package__ + mod.rsplit(".", 1)[0]):
                continue  # that area is not installed
            raise
        plugin.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WanMeterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
