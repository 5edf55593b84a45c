#!/usr/bin/env python3
"""Draft then final on the GPU: seconds per step of a 480p draft, a 720p partial-denoise
refinement and a direct 720p run of T2V-A14B, projected to the official 40 steps.

ONE full-size 14B expert is built directly on the GPU in bf16 with random weights (speed does
not depend on values; the high-noise expert has the same shape, hence the same cost) and used
for all three runs through OUR sampler, with CFG, after one small warm-up run:
  (a) draft       832x480x81, full denoise;
  (b) refinement  1280x720x81, denoise 0.3, random init latent (only the low-noise expert runs:
                  checked from the sampler's per-step expert record);
  (c) full final  1280x720x81, full denoise.
Each is timed for --steps steps (2). The projection for the official schedule is
draft 40 steps + refine round(40*0.3)=12 steps vs full 40 steps (denoising only), next to
wanmeter.draft.draft_final_cost's estimate of the same (denoising and whole video).

    python3 bench/draft_final.py             # GPU (one H100/H200, ~2-3 min)
    python3 bench/draft_final.py --dry-run   # tiny model on CPU (checks the script)

Writes a table to stdout and JSON to $OUT/draft_final.json when $OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from wanmeter.draft import draft_final_cost, refine_steps  # noqa: E402
from wanmeter.estimator import Plan, Workload, detect_gpu_name  # noqa: E402
from wanmeter.runtime import RuntimeOptions  # noqa: E402
from wanmeter.sampler import SampleRequest, SampleStats, WanModelBundle, sample  # noqa: E402
from wanmeter.sampler.synthetic import dit_config, random_dit  # noqa: E402
from wanmeter.variants import vae_family, variant  # noqa: E402

V = "t2v_a14b"
FULL = {"draft": (832, 480, 81), "final": (1280, 720, 81), "warm": (256, 256, 5)}
TINY = {"draft": (32, 32, 5), "final": (64, 64, 5), "warm": (16, 16, 5)}


def _tokens(w: int, h: int, f: int) -> int:
    fam = vae_family(variant(V)["vae"])
    s = int(fam["stride_s"]) * 2
    return ((f - 1) // int(fam["stride_t"]) + 1) * (h // s) * (w // s)


def measure(args, device: torch.device, size: str) -> dict:
    facts, fam = variant(V), vae_family(variant(V)["vae"])
    sizes = TINY if size == "tiny" else FULL
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    t0 = time.perf_counter()
    low = random_dit(V, size, device=device, dtype=dtype, seed=1)
    build_s = time.perf_counter() - t0
    # (None, low): the high-noise expert is never built. boundary=1.0 sends every step of the full-denoise
    # runs to the low-noise expert (same shape and cost as the high-noise one); the refinement keeps the
    # official boundary, so its expert record shows which expert a real refinement would use.
    bundle = WanModelBundle(V, (None, low), runtime=RuntimeOptions(device=str(device), offload="none",
                                                                   attention=args.attention),
                            latents_mean=fam["latents_mean"], latents_std=fam["latents_std"])
    text_dim = dit_config(V, size)["text_dim"]
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 512, text_dim, generator=g).to(dtype)
    neg = torch.randn(1, 512, text_dim, generator=g).to(dtype)
    z, st, ss = int(fam["z_dim"]), int(fam["stride_t"]), int(fam["stride_s"])
    cfg = tuple(facts["default_cfg"])

    def req(key: str, steps: int, denoise: float = 1.0) -> SampleRequest:
        w, h, f = sizes[key]
        init = torch.randn(1, z, (f - 1) // st + 1, h // ss, w // ss, generator=g) if denoise < 1 else None
        return SampleRequest(w, h, f, steps=steps, cfg=cfg, seed=1, denoise=denoise, init_latent=init,
                             boundary=None if denoise < 1 else 1.0)

    tw = time.perf_counter()
    sample(bundle, pos, neg, req("warm", 1))
    warm_s = time.perf_counter() - tw
    runs = {}
    for name, key, denoise in (("draft", "draft", 1.0), ("refine", "final", args.denoise), ("full", "final", 1.0)):
        stats = SampleStats()
        sample(bundle, pos, neg, req(key, args.steps, denoise), stats=stats)
        w, h, f = sizes[key]
        runs[name] = {"size": f"{w}x{h}", "frames": f, "tokens": _tokens(w, h, f), "denoise": denoise,
                      "step_seconds": [round(s, 4) for s in stats.step_seconds],
                      "experts_per_step": stats.expert_per_step, "seconds_per_step": round(stats.seconds_per_step, 4),
                      "peak_memory_gib": round(stats.peak_memory_bytes / 2**30, 2)}
        print(f"  {name}: {stats.summary()}", flush=True)
    if any(e != 1 for e in runs["refine"]["experts_per_step"]):
        raise RuntimeError(f"the refinement reached the high-noise expert: {runs['refine']['experts_per_step']}")
    return {"runs": runs, "build_seconds": round(build_s, 2), "warmup_seconds": round(warm_s, 2),
            "attention": bundle.placement.describe()["attention"], "cfg": list(cfg)}


def project(runs: dict, total_steps: int, denoise: float, gpu_key: str) -> dict:
    n_ref = refine_steps(total_steps, denoise)
    draft = runs["draft"]["seconds_per_step"] * total_steps
    refine = runs["refine"]["seconds_per_step"] * n_ref
    full = runs["full"]["seconds_per_step"] * total_steps
    w, h, f = FULL["final"]
    est = draft_final_cost(Workload(V, w, h, f, steps=total_steps), draft_size=FULL["draft"][:2],
                           refine_denoise=denoise, steps=total_steps, gpu=gpu_key, plan=Plan())
    est_den = est.draft.denoise_s + est.refine.denoise_s
    return {
        "steps": total_steps, "refine_steps": n_ref, "denoise": denoise,
        "measured_denoise_s": {"draft": round(draft, 1), "refine": round(refine, 1), "combined": round(draft + refine, 1),
                               "full": round(full, 1), "ratio": round((draft + refine) / full, 3) if full else None},
        "estimator_gpu": gpu_key,
        "estimated_denoise_s": {"draft": round(est.draft.denoise_s, 1), "refine": round(est.refine.denoise_s, 1),
                                "combined": round(est_den, 1), "full": round(est.full.denoise_s, 1),
                                "ratio": round(est_den / est.full.denoise_s, 3)},
        "estimated_whole_video": est.to_dict(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per run")
    ap.add_argument("--total-steps", type=int, default=40, help="the schedule to project to (official: 40)")
    ap.add_argument("--denoise", type=float, default=0.3)
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--dry-run", action="store_true", help="tiny model on CPU: checks the script, not speed")
    args = ap.parse_args(argv)
    if args.dry_run:
        device, size = torch.device("cpu"), "tiny"
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU visible: use --dry-run to check the script on CPU", file=sys.stderr)
            return 2
        device, size = torch.device("cuda"), "full"
    import diffusers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    gpu_key = detect_gpu_name(name) or "h200"
    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
           "device": name, "size": size}
    print(f"# draft then final, T2V-A14B at {'real' if size == 'full' else 'tiny (dry run)'} scale on {name} "
          f"(torch {env['torch']}, diffusers {env['diffusers']})", flush=True)
    t = time.perf_counter()
    m = measure(args, device, size)
    p = project(m["runs"], args.total_steps, args.denoise, gpu_key)
    m["wall_seconds"] = round(time.perf_counter() - t, 1)
    print(f"{'run':<7} {'size':>9} {'tokens':>7} {'s/step':>8} {'experts':>10} {'peak GiB':>9}")
    for k, r in m["runs"].items():
        print(f"{k:<7} {r['size']:>9} {r['tokens']:>7} {r['seconds_per_step']:>8.3f} "
              f"{''.join(map(str, r['experts_per_step'])):>10} {r['peak_memory_gib']:>9.2f}")
    me, es = p["measured_denoise_s"], p["estimated_denoise_s"]
    print(f"projected denoising for {args.total_steps} steps (draft {args.total_steps} + refine {p['refine_steps']} "
          f"at denoise {args.denoise} vs full {args.total_steps}):")
    print(f"  measured : draft {me['draft']:.1f} s + refine {me['refine']:.1f} s = {me['combined']:.1f} s "
          f"vs full {me['full']:.1f} s (ratio {me['ratio']})")
    print(f"  estimator ({gpu_key}): draft {es['draft']:.1f} s + refine {es['refine']:.1f} s = {es['combined']:.1f} s "
          f"vs full {es['full']:.1f} s (ratio {es['ratio']}); whole video incl. VAE "
          f"{p['estimated_whole_video']['combined_s']} s vs {p['estimated_whole_video']['full_s']} s")
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "draft_final.json").write_text(json.dumps({"env": env, "measured": m, "projection": p}, indent=2))
        print(f"wrote {Path(out) / 'draft_final.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
