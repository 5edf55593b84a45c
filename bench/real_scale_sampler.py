#!/usr/bin/env python3
"""Seconds per step and peak VRAM of WanMeter's sampler at real model sizes (random weights).

For each variant, full-size diffusers WanTransformer3DModel(s) are built directly on the GPU in
bf16 with random weights (speed does not depend on values), and OUR sampler runs 2 steps with
CFG at 832x480 (81 frames for the A14B variants, 121 for TI2V-5B, as 832x480 is a multiple of
32). A14B runs with offload="model" by default: only the active expert on the GPU (two bf16
experts are 57 GB), swapped at the boundary, which is set to 0.95 so step 1 uses the
high-noise expert and step 2 the low-noise one (the swap is timed separately).

    python3 bench/real_scale_sampler.py --variants all            # GPU, ~2-4 minutes on an H100
    python3 bench/real_scale_sampler.py --variants all --dry-run  # tiny models on CPU (checks the script)

Writes a table to stdout and JSON to $OUT/real_scale_sampler.json when $OUT is set.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from wanmeter.runtime import RuntimeOptions  # noqa: E402
from wanmeter.sampler import SampleRequest, SampleStats, WanModelBundle, sample  # noqa: E402
from wanmeter.sampler.synthetic import dit_config, random_dit  # noqa: E402
from wanmeter.variants import vae_family, variant  # noqa: E402

VARIANTS = ("t2v_a14b", "i2v_a14b", "ti2v_5b")
FULL = {"t2v_a14b": (832, 480, 81), "i2v_a14b": (832, 480, 81), "ti2v_5b": (832, 480, 121)}
TINY = {"t2v_a14b": (64, 64, 5), "i2v_a14b": (64, 64, 5), "ti2v_5b": (64, 64, 5)}


def _tokens(v: str, w: int, h: int, f: int) -> int:
    fam = vae_family(variant(v)["vae"])
    s = int(fam["stride_s"]) * 2
    return ((f - 1) // int(fam["stride_t"]) + 1) * (h // s) * (w // s)


def run_variant(v: str, args, device: torch.device, size: str) -> dict:
    facts = variant(v)
    fam = vae_family(facts["vae"])
    w, h, f = (TINY if size == "tiny" else FULL)[v]
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    offload = args.a14b_offload if facts["experts"] == 2 else args.offload_5b
    t0 = time.perf_counter()
    experts = []
    for i in range(facts["experts"]):
        m = random_dit(v, size, device=device, dtype=dtype, seed=i)
        if offload != "none" and facts["experts"] == 2:
            m.to("cpu")  # built on the GPU (fast init), parked in CPU memory
            if device.type == "cuda":
                torch.cuda.empty_cache()
        experts.append(m)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in experts[0].parameters())
    runtime = RuntimeOptions(device=str(device), offload=offload, attention=args.attention,
                             blocks_to_stream=min(args.blocks_to_stream, len(experts[0].blocks)) if offload == "blocks" else 0)
    mean = fam["latents_mean"] or [0.0] * int(fam["z_dim"])
    std = fam["latents_std"] or [1.0] * int(fam["z_dim"])
    bundle = WanModelBundle(v, experts, runtime=runtime, latents_mean=mean, latents_std=std)
    text_dim = dit_config(v, size)["text_dim"]
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 512, text_dim, generator=g).to(dtype)
    neg = torch.randn(1, 512, text_dim, generator=g).to(dtype)
    z, st, ss = int(fam["z_dim"]), int(fam["stride_t"]), int(fam["stride_s"])
    boundary = 0.95 if facts["experts"] == 2 else None

    def request(width, height, frames, steps):
        img = None
        if v == "i2v_a14b":
            img = torch.randn(1, z, (frames - 1) // st + 1, height // ss, width // ss, generator=g)
        return SampleRequest(width, height, frames, steps=steps, cfg=facts["default_cfg"], seed=1,
                             boundary=boundary, image_latent=img)

    # warm-up at a small size: CUDA context, cuBLAS handles, kernels (high-noise expert only)
    tw = time.perf_counter()
    sample(bundle, pos, neg, request(256, 256, 5, 1))
    warm_s = time.perf_counter() - tw
    stats = SampleStats()
    sample(bundle, pos, neg, request(w, h, f, args.steps), stats=stats)
    placement = bundle.placement.describe()
    res = {
        "variant": v, "size": f"{w}x{h}", "frames": f, "tokens": _tokens(v, w, h, f), "steps": args.steps,
        "cfg": facts["default_cfg"], "offload": offload, "attention": placement["attention"],
        "dtype": placement["compute_dtype"], "params": params, "experts": facts["experts"],
        "step_seconds": [round(s, 4) for s in stats.step_seconds], "experts_per_step": stats.expert_per_step,
        "swaps": stats.swaps, "swap_seconds": round(stats.swap_seconds, 3),
        "seconds_per_step": round(stats.seconds_per_step, 4),
        "seconds_per_step_excluding_swaps": round((sum(stats.step_seconds) - stats.swap_seconds) / max(1, len(stats.step_seconds)), 4),
        "peak_memory_gib": round(stats.peak_memory_bytes / 2**30, 2), "memory_kind": stats.memory_kind,
        "build_seconds": round(build_s, 2), "warmup_seconds": round(warm_s, 2),
    }
    if device.type == "cuda":
        res["max_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    del bundle, experts, stats  # no teardown: moving 28 GB back to the CPU only to free it wastes seconds
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="all", help="all or a comma list of " + ",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--a14b-offload", default="model", choices=["none", "model", "blocks"])
    ap.add_argument("--offload-5b", default="none", choices=["none", "model", "blocks"])
    ap.add_argument("--blocks-to-stream", type=int, default=20, help="with an offload of 'blocks'")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on CPU: checks the script, not speed")
    args = ap.parse_args(argv)
    names = VARIANTS if args.variants == "all" else tuple(args.variants.split(","))
    for n in names:
        variant(n)
    if args.dry_run:
        device, size = torch.device("cpu"), "tiny"
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU visible: use --dry-run to check the script on CPU", file=sys.stderr)
            return 2
        device, size = torch.device("cuda"), "full"
    import diffusers

    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "size": size}
    print(f"# WanMeter sampler at {'real' if size == 'full' else 'tiny (dry run)'} scale on {env['device']} "
          f"(torch {env['torch']}, diffusers {env['diffusers']})")
    results = []
    for n in names:
        t = time.perf_counter()
        try:
            r = run_variant(n, args, device, size)
        except Exception as e:  # keep the other variants' numbers
            r = {"variant": n, "error": f"{type(e).__name__}: {e}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        r["wall_seconds"] = round(time.perf_counter() - t, 1)
        results.append(r)
        print(f"  {n}: done in {r['wall_seconds']} s" + (f" ({r['error']})" if "error" in r else ""), flush=True)
    hdr = f"{'variant':<10} {'size':>8} {'frames':>6} {'tokens':>7} {'offload':>7} {'attention':>13} {'s/step':>8} " \
          f"{'s/step-swap':>11} {'swap s':>7} {'steps (s)':>18} {'peak GiB':>9}"
    print(hdr)
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<10} ERROR {r['error']}")
            continue
        steps = ", ".join(f"{s:.2f}" for s in r["step_seconds"])
        print(f"{r['variant']:<10} {r['size']:>8} {r['frames']:>6} {r['tokens']:>7} {r['offload']:>7} {r['attention']:>13} "
              f"{r['seconds_per_step']:>8.3f} {r['seconds_per_step_excluding_swaps']:>11.3f} {r['swap_seconds']:>7.2f} "
              f"{steps:>18} {r['peak_memory_gib']:>9.2f}")
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "real_scale_sampler.json").write_text(json.dumps({"env": env, "results": results}, indent=2))
        print(f"wrote {Path(out) / 'real_scale_sampler.json'}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
