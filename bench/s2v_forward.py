#!/usr/bin/env python3
"""Time one S2V-14B denoising step (cond + uncond forward with CFG) and report peak VRAM.

Full size on a GPU: WanS2VTransformer with random bf16 weights created directly on the device
(no checkpoint needed), one 80-frame clip (20 latent frames) at the given size with reference
and frame-packed motion tokens and 80 frames of wav2vec2 features. Prints one JSON line.

    python bench/s2v_forward.py                       # 832x480, CFG (2 forwards / step), 3 timed steps
    python bench/s2v_forward.py --width 1024 --height 704 --no-cfg --steps 5
    python bench/s2v_forward.py --dry-run             # tiny model on the CPU (used by the tests)

Needs torch (CUDA), diffusers, accelerate, numpy. Run from the repo root.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def build_model(full: bool, device: torch.device, dtype: torch.dtype):
    from wanmeter.s2v.config import S2VConfig
    from wanmeter.s2v.loader import KEEP_FP32, build_empty_s2v
    from wanmeter.tiny.s2v import tiny_s2v_config

    cfg = S2VConfig() if full else tiny_s2v_config()
    model = build_empty_s2v(cfg)  # meta: each parameter is then created on the device in its final dtype
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in list(model.named_parameters()):
            want = torch.float32 if any(m in name.split(".") for m in KEEP_FP32) else dtype
            fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else 1
            std = 0.1 if p.ndim == 1 or "scale_shift" in name or "padding" in name else 1.0 / math.sqrt(fan_in)
            data = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32) * std
            if "norm" in name and p.ndim == 1:
                data += 1.0
            mod_name, _, leaf = name.rpartition(".")
            mod = model.get_submodule(mod_name) if mod_name else model
            mod._parameters[leaf] = torch.nn.Parameter(data.to(want), requires_grad=False)
            del data
    return model.eval().requires_grad_(False)


def run(args) -> dict:
    full = not args.dry_run
    device = torch.device("cuda" if full else "cpu")
    dtype = torch.bfloat16 if full else torch.float32
    width, height = (args.width, args.height) if full else (64, 64)
    t0 = time.perf_counter()
    model = build_model(full, device, dtype)
    build_s = time.perf_counter() - t0
    c = model.config
    h, w = height // 8, width // 8
    f = 20  # 80 frames per clip
    g = torch.Generator(device=device).manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    lat, ref, mot = rnd(1, 16, f, h, w), rnd(1, 16, 1, h, w), rnd(1, 16, 19, h, w)
    ctx, ctx_neg = rnd(1, 512, c.text_dim), rnd(1, 512, c.text_dim)
    audio = rnd(1, c.num_audio_layers, c.audio_dim, 4 * f)
    tokens = f * (h // 2) * (w // 2)
    n_tok = tokens + (h // 2) * (w // 2) + (h // 2) * (w // 2) + (h // 4) * (w // 4) + 4 * (h // 8) * (w // 8)

    def step(t: float):
        tt = torch.tensor([t], device=device)
        v = model(lat, tt, ctx, ref, mot, audio)
        if args.cfg:
            vu = model(lat, tt, ctx_neg, ref, mot, torch.zeros_like(audio))
            v = vu + 4.5 * (v - vu)
        return v

    if full:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        step(999.0)  # warm-up
        if full:
            torch.cuda.synchronize()
        times = []
        for i in range(args.steps):
            s = time.perf_counter()
            out = step(900.0 - i)
            if full:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - s)
    res = {
        "bench": "s2v_forward", "dry_run": not full, "width": width, "height": height, "latent_frames": f,
        "video_tokens": tokens, "total_tokens": n_tok, "cfg": bool(args.cfg), "forwards_per_step": 2 if args.cfg else 1,
        "dtype": str(dtype).replace("torch.", ""), "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "build_s": round(build_s, 2), "s_per_step": round(sum(times) / len(times), 4), "step_times": [round(t, 4) for t in times],
        "out_finite": bool(torch.isfinite(out).all()),
    }
    if full:
        res["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        res["device"] = torch.cuda.get_device_name()
        res["torch"] = torch.__version__
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--no-cfg", dest="cfg", action="store_false", help="one forward per step instead of two")
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run", file=sys.stderr)
        return 2
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
