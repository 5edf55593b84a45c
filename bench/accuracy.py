"""How right is the estimator? Measured vs estimated on configurations NOT used for calibration,
and estimated vs the official Wan2.2 timing table.

    python bench/accuracy.py            # GPU: measures >= 12 configurations (< 8 min on one H100)
    python bench/accuracy.py --dry-run  # CPU, tiny sizes: exercises the script; table 2 is exact either way

Table 1: one forward of diffusers' WanTransformer3DModel (full-size random weights built on the
GPU) per configuration, with the attention the runtime applies for the plan (wanmeter.runtime's
apply_attention, as the sampler's placement does: on CUDA our fused-rotary self-attention
processor over the plan's backend, which is what estimate() models with Plan.fused_rotary=True):
seconds and peak VRAM (max_memory_allocated) vs estimate()'s per-forward time and its
sampling-phase tensors. One configuration runs under a
VRAM budget (torch.cuda.set_per_process_memory_fraction) with the plan suggest_fixes() chose.
Table 2: estimate() with the official script's settings vs the official README table.
Both tables print with % errors and go to $OUT (or bench/results)/accuracy_<gpu>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import calibrate as cb  # noqa: E402
from wanmeter.estimator import Plan, Workload, estimate, get_gpu, load_gpus, suggest_fixes  # noqa: E402
from wanmeter.estimator.calibration import load_calibration  # noqa: E402
from wanmeter.estimator.memory import vram_phases  # noqa: E402
from wanmeter.estimator.sizes import GIB, compute_sizes  # noqa: E402
from wanmeter.estimator.timing import forward_time  # noqa: E402
from wanmeter.accel.wan_attention import installed_kind  # noqa: E402
from wanmeter.attention_kernels import runtime_name  # noqa: E402
from wanmeter.runtime.attention import apply_attention  # noqa: E402
from wanmeter.variants import variant  # noqa: E402

# (name, variant, width, height, frames, plan fields). None of these sizes/modes is a calibration point
# (calibration: TI2V-5B 1280x704x121 bf16 + fp8 storage + all-blocks offload, A14B 832x480x81 bf16).
CONFIGS = [
    ("t2v 640x640x81 bf16", "t2v_a14b", 640, 640, 81, {}),
    ("t2v 832x480x49 bf16", "t2v_a14b", 832, 480, 49, {}),
    ("t2v 1024x576x81 bf16", "t2v_a14b", 1024, 576, 81, {}),
    ("t2v 832x480x33 stream 20 blocks", "t2v_a14b", 832, 480, 33, {"offload": "blocks", "blocks_to_stream": 20}),
    ("t2v 960x544x65 fp8 storage", "t2v_a14b", 960, 544, 65, {"weight_dtype": "fp8_e4m3fn"}),
    ("t2v 832x480x81 flash kernel", "t2v_a14b", 832, 480, 81, {"attention": "flash"}),
    ("i2v 960x544x65 bf16", "i2v_a14b", 960, 544, 65, {}),
    ("i2v 480x832x81 efficient kernel", "i2v_a14b", 480, 832, 81, {"attention": "efficient"}),
    ("ti2v 640x352x121 bf16", "ti2v_5b", 640, 352, 121, {}),
    ("ti2v 960x544x121 bf16", "ti2v_5b", 960, 544, 121, {}),
    ("ti2v 1280x704x81 fp8 storage", "ti2v_5b", 1280, 704, 81, {"weight_dtype": "fp8_e4m3fn"}),
    ("ti2v 1280x704x61 stream 15 blocks", "ti2v_5b", 1280, 704, 61, {"offload": "blocks", "blocks_to_stream": 15}),
    ("ti2v 704x1280x121 budget 12 GiB", "ti2v_5b", 704, 1280, 121, {"budget_gib": 12.0}),
]


def pct(est: float, meas: float) -> float | None:
    return None if not meas else 100.0 * (est - meas) / meas


def predicted(w: Workload, p: Plan, gpu) -> tuple[float, float]:
    """(seconds of one forward, GiB of sampling-phase tensors) from the estimator."""
    cal = load_calibration()
    s = compute_sizes(w, p, cal)
    t = forward_time(s, w, p, gpu, cal)
    ph = vram_phases(s, w, p, cal)["sampling"]
    return t.total, sum(ph.values()) / GIB


def apply_plan(model, p: Plan, env: cb.Env) -> None:
    if p.weight_dtype.startswith("fp8"):
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=env.dtype)
    if p.offload == "blocks" and p.blocks_to_stream and not env.dry:
        from diffusers.hooks import apply_group_offloading

        n = min(p.blocks_to_stream, len(model.blocks))
        holder = torch.nn.Module()
        holder.blocks = torch.nn.ModuleList(list(model.blocks)[:n])
        holder.to("cpu")
        apply_group_offloading(holder, onload_device=env.device, offload_device=torch.device("cpu"),
                               offload_type="block_level", num_blocks_per_group=1, use_stream=True)


def config_plan(cfg, gpu) -> tuple[Workload, Plan, str]:
    """The workload and plan a configuration runs with (a budgeted one takes the fastest fix)."""
    name, var, w_, h_, f_, plan_kw = cfg
    budget = plan_kw.get("budget_gib")
    w = Workload(variant=var, width=w_, height=h_, frames=f_)
    p = Plan(**plan_kw)
    desc = p.describe()
    if budget:
        # The fastest fix; only its DiT-side changes (fp8 weights, streamed blocks) act on the sampling
        # phase measured here: text-encoder placement and tiled decode change other phases.
        fixes = suggest_fixes(w, p, gpu)
        if fixes:
            p = fixes[0].plan
            desc = f"budget {budget} GiB -> {', '.join(fixes[0].changes)}"
    return w, p, desc


def recheck(path: str, gpu) -> list[dict]:
    """Today's estimator against measurements saved by an earlier GPU run (no GPU needed): keeps the
    README's accuracy table true when the estimator changes."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    saved = {r["config"]: r for r in data["measured"]}
    fused = bool(data.get("fused_rotary", False))  # runs saved before the fused-rotary processor existed
    rows = []
    for cfg in CONFIGS:
        m = saved.get(cfg[0])
        if m is None or not m.get("meas_s"):
            continue
        w, p, desc = config_plan(cfg, gpu)
        if desc != m.get("plan"):
            # A budgeted configuration whose chosen plan changed since it was measured: it would compare two plans.
            rows.append({"config": cfg[0], "plan": f"measured: {m.get('plan')}; planned today: {desc}",
                         "meas_s": m["meas_s"], "meas_gib": m["meas_gib"], "est_s": None, "est_gib": None,
                         "time_err_pct": None, "vram_err_pct": None, "error": "plan changed: re-measure on a GPU"})
            continue
        est_s, est_gib = predicted(w, replace(p, fused_rotary=fused), gpu)
        rows.append({"config": cfg[0], "plan": desc, "meas_s": m["meas_s"], "meas_gib": m["meas_gib"],
                     "est_s": est_s, "est_gib": est_gib, "time_err_pct": pct(est_s, m["meas_s"]),
                     "vram_err_pct": pct(est_gib, m["meas_gib"])})
    return rows


def run_config(env: cb.Env, cfg, gpu, cache: dict) -> dict:
    name, var, w_, h_, f_, plan_kw = cfg
    budget = plan_kw.get("budget_gib")
    w, p, desc = config_plan(cfg, gpu)
    row = {"config": name, "plan": desc}
    # what runs on CUDA is the fused-rotary processor (Plan.fused_rotary=True, the default); on CPU the stock one
    est_s, est_gib = predicted(w, replace(p, fused_rotary=env.device.type == "cuda"), gpu)
    row.update(est_s=est_s, est_gib=est_gib)
    kw = cb.dit_kwargs(var, env)
    needs_fresh = p.weight_dtype != "bf16" or p.offload == "blocks"
    key = var
    if key not in cache or needs_fresh or cache.get("_dirty_" + key):
        cache.clear()
        cb.free()
        cache[key] = cb.build_dit(kw, env)
    model = cache[key]
    if needs_fresh:
        cache["_dirty_" + key] = True
        try:
            apply_plan(model, p, env)
        except Exception as e:  # a diffusers API change must not sink the other configurations
            row.update(meas_s=None, meas_gib=None, ok=False, error=f"plan not applied: {type(e).__name__}: {e}"[:300],
                       time_err_pct=None, vram_err_pct=None)
            return row
    ballast = None
    if variant(var)["experts"] == 2 and p.offload == "none" and not env.dry:
        # The workload holds both A14B experts on the GPU; one is built, the idle one is represented by an
        # allocation of exactly its bytes (memory does not depend on weight values).
        nbytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        ballast = torch.empty(nbytes, dtype=torch.uint8, device=env.device)
    inputs = cb.dit_inputs(kw, cb.latent_geometry(var, w_, h_, f_, env), env, per_token_t=var == "ti2v_5b")
    fn = cb.forward_fn(model, inputs)
    # the runtime's own attention for this plan (backend + our processor on CUDA), as the sampler applies it
    row["attention_applied"] = apply_attention(model, runtime_name(p.attention), env.device)
    row["processor"] = installed_kind(model) or "diffusers"
    try:
        if budget and not env.dry:
            torch.cuda.set_per_process_memory_fraction(budget * GIB / torch.cuda.get_device_properties(0).total_memory)
        env.reset_peak()
        sec = cb.timed(env, fn)
        row.update(meas_s=sec, meas_gib=env.peak() / GIB, ok=True)
    except torch.cuda.OutOfMemoryError as e:
        row.update(meas_s=None, meas_gib=None, ok=False, error=f"OOM: {str(e).splitlines()[0][:200]}")
    finally:
        if budget and not env.dry:
            torch.cuda.set_per_process_memory_fraction(1.0)
    row["time_err_pct"] = pct(row["est_s"], row.get("meas_s") or 0)
    row["vram_err_pct"] = pct(row["est_gib"], row.get("meas_gib") or 0)
    del ballast
    cb.free(inputs)
    return row


def official_table() -> list[dict]:
    data = json.loads((HERE / "official_timings.json").read_text(encoding="utf-8"))
    gpus = load_gpus()
    rows = []
    for r in data["rows"]:
        g = gpus[r["gpu"]]
        five = r["variant"] == "ti2v_5b"
        for n, (sec, gb) in r["gpus"].items():
            n = int(n)
            w = Workload(variant=r["variant"], width=r["width"], height=r["height"], frames=r["frames"], steps=r["steps"])
            p = Plan(offload="model" if n == 1 else "none", attention="flash_attn_3" if g.arch == "hopper" else "flash",
                     text_encoder_device="cpu" if five and n == 1 else "gpu", vae_dtype="fp32", num_gpus=n,
                     parallel_scheme="ulysses", shard_weights=n > 1,  # the official multi-GPU runs: Ulysses + FSDP
                     text_encoder_dtype="bf16", fused_rotary=False)  # the official code's own rotary
            e = estimate(w, p, g)
            rows.append({"gpu": g.name, "variant": r["variant"], "res": r["res"], "num_gpus": n,
                         "official_s": sec, "est_s": e.per_video_s, "time_err_pct": pct(e.per_video_s, sec),
                         "official_peak_gb": gb, "est_peak_gb": e.vram_peak_gib * GIB / 1e9,
                         "floor_s": e.flop_floor_s})
    return rows


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"))
    ap.add_argument("--gpu", help="GPU table key to estimate for (default: detected; h100_sxm in --dry-run)")
    ap.add_argument("--recheck", metavar="ACCURACY_JSON",
                    help="no GPU: re-estimate the configurations measured in this saved run with today's estimator")
    args = ap.parse_args(argv)
    env = cb.Env(args.dry_run or bool(args.recheck))
    t0 = time.time()
    saved: dict = {}
    if args.recheck:
        saved = json.loads(Path(args.recheck).read_text(encoding="utf-8"))
        gpu = get_gpu(args.gpu or saved.get("estimated_for") or "h200")
        env.gpu_name = f"{saved.get('device')} (saved {Path(args.recheck).name})"
        rows = recheck(args.recheck, gpu)
        env.dry = False  # the rows are real measurements: print the summary line
    else:
        gpu = get_gpu(args.gpu or env.gpu_key or "h100_sxm")
        configs = CONFIGS[:3] + CONFIGS[-2:] if env.dry else CONFIGS
        cache: dict = {}
        rows = []
        for c in configs:
            t = time.time()
            rows.append(run_config(env, c, gpu, cache))
            print(f"[accuracy] {c[0]}: {time.time() - t:.1f} s", flush=True)
        cache.clear()
    print(f"\nTable 1: one forward, measured on {env.gpu_name} vs estimated for {gpu.name}")
    print(f"{'config':<36} {'meas s':>8} {'est s':>8} {'err%':>7} {'meas GiB':>9} {'est GiB':>8} {'err%':>7}  plan")
    for r in rows:
        print(f"{r['config']:<36} {fmt(r.get('meas_s'), '.3f'):>8} {fmt(r['est_s'], '.3f'):>8} {fmt(r['time_err_pct'], '+.1f'):>7}"
              f" {fmt(r.get('meas_gib')):>9} {fmt(r['est_gib']):>8} {fmt(r['vram_err_pct'], '+.1f'):>7}  {r['plan']}"
              + (f"  [{r['error']}]" if r.get("error") else ""))
    errs = [abs(r["time_err_pct"]) for r in rows if r["time_err_pct"] is not None]
    verrs = [abs(r["vram_err_pct"]) for r in rows if r.get("vram_err_pct") is not None]
    if errs and not env.dry:
        print(f"time |err|: median {sorted(errs)[len(errs) // 2]:.1f}%, max {max(errs):.1f}%; "
              f"peak VRAM |err|: median {sorted(verrs)[len(verrs) // 2]:.1f}%, max {max(verrs):.1f}%")
    off = official_table()
    print("\nTable 2: estimate() with the official script's settings vs the official Wan2.2 table (seconds per video)")
    print(f"{'GPU':<10} {'model':<9} {'res':<5} {'GPUs':>4} {'official':>9} {'est':>8} {'err%':>7} {'floor':>7} {'off. GB':>8} {'est GB':>7}")
    for r in off:
        print(f"{r['gpu']:<10} {r['variant']:<9} {r['res']:<5} {r['num_gpus']:>4} {r['official_s']:>9.1f} {r['est_s']:>8.1f}"
              f" {r['time_err_pct']:>+7.1f} {r['floor_s']:>7.1f} {r['official_peak_gb']:>8.1f} {r['est_peak_gb']:>7.1f}")
    e2 = [abs(r["time_err_pct"]) for r in off]
    print(f"official table |err|: median {sorted(e2)[len(e2) // 2]:.1f}%, max {max(e2):.1f}%")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "recheck" if args.recheck else ("dryrun" if env.dry else (env.gpu_key or "gpu"))
    (out / f"accuracy_{tag}.json").write_text(json.dumps(
        {"device": env.gpu_name, "estimated_for": gpu.key, "measured": rows, "official": off,
         "fused_rotary": (saved.get("fused_rotary", False) if args.recheck else not env.dry),
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "seconds": time.time() - t0}, indent=1, default=str), encoding="utf-8")
    print(f"[accuracy] wrote {out}/accuracy_{tag}.json in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
