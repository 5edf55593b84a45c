"""Does the automatic memory plan fit 8/12/16/24 GB GPUs, and what does it cost in speed?

Run on the GPU machine (torch 2.11 + CUDA, diffusers, transformers, gguf):
    python bench/budgets.py                                   # both variants, 8/12/16/24 GB (< 9 min on an H100 80GB)
    python bench/budgets.py --variants a14b --budgets 12,24   # split a run
    python bench/budgets.py --variants ti2v --source Q4_K_M   # simulated GGUF weights (quantized random blocks)
    python bench/budgets.py --dry-run                         # CPU, tiny models: checks the script end to end

For each variant (T2V-A14B 832x480x81 with both experts, CFG 4/3; TI2V-5B 1280x704x121, CFG 5) it
first runs unconstrained (the plan for the whole GPU), then for each budget B caps the caching
allocator with torch.cuda.set_per_process_memory_fraction at B minus the measured CUDA context
(a B-GB card holds the context too), asks wanmeter.memplan.plan_for for the fastest plan that fits B
and the free system RAM, applies it (apply_plan -> RuntimeOptions), and runs 2 sampler steps through
WanModelBundle/sample (step 1 on the high-noise expert, step 2 on the low-noise one, so A14B swaps
experts once: with offload=model/blocks the inactive expert waits in CPU RAM), after a 1-step,
no-CFG warm-up. Weights are random, built full-size directly on the GPU in the plan's storage
precision (fp8 = diffusers layerwise casting; GGUF = diffusers GGUFLinear holding quantized random
rows, tiled), then placed by the runtime.

Reported per run: plan, predicted peak (the estimator's sampling phase + whole-run peak), measured
peak (max_memory_allocated, max_memory_reserved, reserved + CUDA context), under budget, seconds per
step (expert swap excluded; swap seconds separately), slowdown vs unconstrained (per step and for a
projected full run), prediction error, peak RSS and pinned host bytes. The text encoder and the VAE
are not run: the comparison is of the sampling phase, the one the plan streams blocks for.
Writes $OUT/budgets_<gpu>.json (or bench/results/). Targets from the issue are checked at the end.
"""
from __future__ import annotations

import os

# As the runtime does on CUDA (wanmeter.runtime.memory): fewer reserved-but-unused bytes between allocations.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from wanmeter.errors import WanMeterError  # noqa: E402
from wanmeter.estimator import Workload, detect_gpu_name, get_gpu, load_gpus  # noqa: E402
from wanmeter.estimator.calibration import load_calibration  # noqa: E402
from wanmeter.memplan import apply_plan, free_ram_bytes, measure_rss, plan_for  # noqa: E402

GIB = 1024 ** 3
VARIANTS = {"a14b": ("t2v_a14b", 832, 480, 81), "ti2v": ("ti2v_5b", 1280, 704, 121)}
DRY_SIZE = (64, 64, 5)          # tiny latent for --dry-run
TARGETS = [("a14b", 24, "slowdown_per_step", 1.25), ("a14b", 12, "slowdown_per_step", 2.0),
           ("ti2v", 8, "under_budget", True), ("*", None, "prediction_error", 0.10)]


# ---------------------------------------------------------------- models

def _fp8(model, compute=torch.bfloat16):
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
    return model


def to_gguf(model, file_type: str, *, tile_rows: int | None = 64):
    """Swap the block linears of a float diffusers Wan model for GGUFLinear with `file_type` weights.

    tile_rows: quantize only the first rows of each weight and repeat them (full-size models: the
    memory and the dequantization work are those of a real file; values do not matter for speed).
    None quantizes every row (tiny models).
    """
    import gguf
    import numpy as np
    from diffusers import GGUFQuantizationConfig
    from diffusers.quantizers.gguf.gguf_quantizer import GGUFQuantizer
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from wanmeter.loader.dit_keys import diffusers_to_official
    from wanmeter.loader.gguf_quantize import mixed_type, quantize

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")]
    official = diffusers_to_official([f"{n}.weight" for n in names], len(model.blocks))
    to_off = {d: o for o, d in official.items()}
    compute = next(p.dtype for n, p in model.named_parameters() if n.endswith("attn1.to_q.weight"))
    compute = torch.bfloat16 if compute in (torch.float8_e4m3fn, torch.float8_e5m2) else compute
    qsd, biases = {}, {}
    for n in names:
        lin = model.get_submodule(n)
        w = lin.weight.detach()
        qtype = mixed_type(file_type, to_off[f"{n}.weight"])
        rows = w.shape[0] if tile_rows is None else min(tile_rows, w.shape[0])
        q = torch.from_numpy(np.ascontiguousarray(quantize(w[:rows].float().cpu().numpy(), qtype)))
        if rows != w.shape[0]:
            q = q.to(w.device).repeat((w.shape[0] + rows - 1) // rows, 1)[: w.shape[0]]
        qsd[f"{n}.weight"] = GGUFParameter(q.to(w.device).contiguous(), quant_type=gguf.GGMLQuantizationType[qtype])
        if lin.bias is not None:
            biases[f"{n}.bias"] = lin.bias.detach().to(compute)
    quantizer = GGUFQuantizer(GGUFQuantizationConfig(compute_dtype=compute))
    quantizer.preprocess_model(model, device_map=None, keep_in_fp32_modules=list(model._keep_in_fp32_modules or ()),
                               state_dict=qsd)
    for n, t in qsd.items():
        quantizer.create_quantized_param(model, t, n, t.device)
    for n, b in biases.items():
        mod, _, leaf = n.rpartition(".")
        model.get_submodule(mod)._parameters[leaf] = torch.nn.Parameter(b, requires_grad=False)
    model.hf_quantizer = quantizer
    return model


def build_expert(variant_name: str, weight_dtype: str, device: torch.device, dry: bool, seed: int):
    from wanmeter.sampler.synthetic import random_dit

    size = "tiny" if dry else "full"
    base = torch.float32 if dry else torch.bfloat16
    if weight_dtype in ("bf16", "fp16"):
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[weight_dtype]
        return random_dit(variant_name, size, device=device, dtype=base if dry else dt, seed=seed)
    if weight_dtype.startswith("fp8"):
        m = random_dit(variant_name, size, device=device, dtype=torch.bfloat16, seed=seed)
        return _fp8(m)
    m = random_dit(variant_name, size, device=device, dtype=base, seed=seed)
    return to_gguf(m, weight_dtype, tile_rows=None if dry else 64)


# ---------------------------------------------------------------- measurement

class Env:
    def __init__(self, dry: bool):
        self.dry = dry or not torch.cuda.is_available()
        self.device = torch.device("cpu" if self.dry else "cuda")
        gpus = load_gpus()
        if self.dry:
            self.gpu_name, self.gpu = "cpu (dry run)", gpus["h100_sxm"]
            self.total = 80 * GIB
            self.context = 0
        else:
            self.gpu_name = torch.cuda.get_device_name()
            key = detect_gpu_name(self.gpu_name, gpus) or "h100_sxm"
            self.gpu = get_gpu(key, gpus)
            torch.zeros(1, device="cuda")
            free, self.total = torch.cuda.mem_get_info()
            self.context = (self.total - free) - torch.cuda.memory_reserved()   # driver + context, outside the allocator

    def set_budget(self, budget_bytes: int | None) -> None:
        if self.dry:
            return
        gc.collect()
        torch.cuda.empty_cache()
        frac = 1.0 if budget_bytes is None else max(0.01, (budget_bytes - self.context) / self.total)
        torch.cuda.set_per_process_memory_fraction(min(1.0, frac))

    def reset_peak(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()


def pinned_bytes(models) -> int:
    n = 0
    for m in models:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.device.type == "cpu" and t.is_pinned():
                n += t.numel() * t.element_size()
    return n


def _boundary_between_steps(variant_name: str, shift: float) -> float | None:
    """A boundary that puts step 1 on the high-noise expert and step 2 on the low-noise one."""
    from wanmeter.sampler.schedule import plan as sched_plan

    ts = sched_plan("unipc", shift, 2, 2, torch.device("cpu"), "official").timesteps_cpu
    return float(ts[0] + ts[1]) / 2000.0


def run_one(env: Env, key: str, budget_gb: float | None, source: str, steps: int,
            ram_gb: float | None = None) -> dict:
    """Plan for the budget, build, place, warm up, run `steps` sampler steps, measure."""
    from wanmeter.sampler import SampleRequest, SampleStats, WanModelBundle, sample

    variant_name, width, height, frames = VARIANTS[key]
    w = Workload(variant_name, width=width, height=height, frames=frames)
    cal = load_calibration()
    budget = None if budget_gb is None else int(budget_gb * GIB)
    free_vram = env.total if budget is None else budget
    if ram_gb is not None:
        ram = int(ram_gb * GIB)           # plan as for a user's machine with this much free RAM
    else:
        ram = 120 * GIB if env.dry else (free_ram_bytes() or 64 * GIB)   # the dry run plans for the GPU machine's RAM
    row: dict = {"variant": variant_name, "budget_gb": budget_gb, "source": source}
    try:
        ap = plan_for(w, free_vram, ram, env.gpu, source=source, cal=cal)
    except WanMeterError as e:
        row.update(status="no plan", error=str(e))
        return row
    e = ap.estimate
    frag = float(cal.v("overhead.fragmentation_fraction"))
    ctx_cal = float(cal.v("overhead.cuda_context_gib"))
    samp_tensors = e.vram_phases_gib["sampling"]
    row.update(plan=ap.description, plan_fields={k: getattr(ap.plan, k) for k in ap.plan.__dataclass_fields__},
               predicted_peak_gib=round(e.vram_peak_gib, 3), predicted_peak_phase=e.vram_peak_phase,
               predicted_sampling_tensors_gib=round(samp_tensors, 3),
               predicted_sampling_peak_gib=round(samp_tensors * (1 + frag) + ctx_cal, 3),
               predicted_ram_gib=round(e.ram_gib, 2), predicted_s_per_step=None,
               predicted_ram_dit_gib=round(sum(v for k, v in e.ram_breakdown.items()
                                               if not k.startswith(("text encoder", "VAE"))), 2))
    fwd_per_step = [2 if c > 1.0 else 1 for c in w.cfg]
    row["predicted_s_per_step"] = round(e.denoise_s / w.steps, 3)
    applied = apply_plan(ap.plan)

    env.set_budget(None)
    t_build = time.perf_counter()
    n_exp = int(w.facts["experts"])
    experts = []
    dry_blocks = None
    for i in range(n_exp):
        m = build_expert(variant_name, ap.plan.weight_dtype, env.device, env.dry, seed=i)
        if applied.offload != "none" and not env.dry:   # parked in RAM, as the runtime would do
            m.to("cpu")
            torch.cuda.empty_cache()
        experts.append(m)
    opts = applied.runtime_options(device=str(env.device))
    if env.dry and opts.offload == "blocks":
        dry_blocks = min(opts.blocks_to_stream, len(experts[0].blocks))
        opts.blocks_to_stream = dry_blocks
    bundle = WanModelBundle(variant_name, experts, runtime=opts)
    with measure_rss() as rss:
        placement = bundle.placement          # applies offload / streaming (pins the streamed blocks)
        row["build_s"] = round(time.perf_counter() - t_build, 1)
        env.set_budget(budget)
        text_dim = experts[0].config.text_dim
        pos = torch.randn(1, 512, text_dim)
        neg = torch.randn(1, 512, text_dim)
        wd, hd, fr = (DRY_SIZE if env.dry else (width, height, frames))
        shift = float(w.facts["default_shift"])
        boundary = _boundary_between_steps(variant_name, shift) if n_exp == 2 else None
        stats = SampleStats()
        try:
            placement.activate(0)
            env.reset_peak()
            sample(bundle, pos, neg, SampleRequest(width=wd, height=hd, frames=fr, steps=1, cfg=1.0, shift=shift,
                                                   boundary=None if n_exp == 1 else 0.0))   # warm-up, high expert
            placement.activate(0)
            env.reset_peak()
            sample(bundle, pos, neg, SampleRequest(width=wd, height=hd, frames=fr, steps=steps, shift=shift,
                                                   boundary=boundary), stats=stats)
            status = "ok"
        except torch.cuda.OutOfMemoryError as oom:
            status = "OOM"
            row["error"] = str(oom).splitlines()[0]
        except Exception as ex:  # keep going: one failing plan must not hide the other budgets
            status = "error"
            row["error"] = f"{type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''}"
        alloc = torch.cuda.max_memory_allocated() if not env.dry else 0
        reserved = torch.cuda.max_memory_reserved() if not env.dry else 0
        row["pinned_host_gib"] = round(pinned_bytes(experts) / GIB, 2)
        if not env.dry and hasattr(torch.cuda, "host_memory_stats"):
            # what the caching host allocator really holds: it rounds every pinned tensor up to a power of two
            hs = torch.cuda.host_memory_stats()
            row["pinned_allocator_gib"] = round(hs.get("allocated_bytes.current", 0) / GIB, 2)
            row["pinned_allocator_peak_gib"] = round(hs.get("allocated_bytes.peak", 0) / GIB, 2)
    env.set_budget(None)
    row["peak_rss_gib"] = round(rss.peak_bytes / GIB, 2)
    row["ram_planned_for_gib"] = round(ram / GIB, 1)
    if not env.dry:   # the estimator's RAM model (DiT + process terms; no text encoder/VAE here) vs peak RSS
        row["ram_error"] = round(row["predicted_ram_dit_gib"] / max(row["peak_rss_gib"], 1e-9) - 1.0, 3)
    row["status"] = status
    if status == "ok":
        compute_s = sum(stats.step_seconds) - stats.swap_seconds
        row.update(step_seconds=[round(s, 3) for s in stats.step_seconds], swap_s=round(stats.swap_seconds, 2),
                   swaps=stats.swaps, s_per_step=round(compute_s / len(stats.step_seconds), 3),
                   experts_per_step=stats.expert_per_step, forwards_per_step=fwd_per_step)
    row.update(max_allocated_gib=round(alloc / GIB, 3), max_reserved_gib=round(reserved / GIB, 3),
               measured_peak_gib=round((reserved + env.context) / GIB, 3), context_gib=round(env.context / GIB, 3),
               under_budget=None if budget is None else bool(status == "ok" and reserved + env.context <= budget))
    if status == "ok" and not env.dry and reserved:
        row["prediction_error"] = round(row["predicted_sampling_peak_gib"] / row["measured_peak_gib"] - 1.0, 3)
        row["prediction_error_allocated"] = round(row["predicted_sampling_tensors_gib"] / row["max_allocated_gib"] - 1.0, 3)
    if dry_blocks is not None:
        row["dry_run_blocks_streamed"] = dry_blocks
    del bundle, placement, experts
    gc.collect()
    if not env.dry:
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()    # give the pinned blocks back, or the next run's RAM is not its own
    return row


# ---------------------------------------------------------------- report

def add_slowdowns(rows: list[dict]) -> None:
    base = {r["variant"]: r for r in rows if r["budget_gb"] is None and r.get("status") == "ok"}
    for r in rows:
        b = base.get(r["variant"])
        if b is None or r.get("status") != "ok" or r is b:
            continue
        r["slowdown_per_step"] = round(r["s_per_step"] / b["s_per_step"], 3)
        full = Workload(r["variant"]).steps
        run = lambda x: full * x["s_per_step"] + x["swap_s"] * (1 if x["swaps"] or x["swap_s"] else 0)  # noqa: E731
        r["slowdown_projected_run"] = round(run(r) / run(b), 3)


def env_dry(rows: list[dict]) -> bool:
    return all(r.get("max_reserved_gib", 0) == 0 for r in rows)


def check_targets(rows: list[dict]) -> list[dict]:
    out = []
    for key, budget, metric, limit in TARGETS:
        variant_name = VARIANTS[key][0] if key != "*" else None
        for r in rows:
            if variant_name and r["variant"] != variant_name:
                continue
            if budget is not None and r["budget_gb"] != budget:
                continue
            v = r.get(metric)
            if v is None and r.get("status") == "ok" and env_dry(rows):
                continue   # not measured in a dry run
            if metric == "prediction_error":
                ok = v is not None and abs(v) <= limit
            elif metric == "under_budget":
                ok = v is True
            else:
                ok = v is not None and v <= limit
            out.append({"variant": r["variant"], "budget_gb": r["budget_gb"], "metric": metric, "value": v,
                        "limit": limit, "pass": bool(ok)})
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'variant':9} {'budget':>6} {'status':7} {'pred':>6} {'alloc':>6} {'resv+ctx':>8} {'err':>6} "
          f"{'s/step':>7} {'slow':>5} {'RSS':>5}  plan")
    for r in rows:
        f = lambda k, fmt="{:.2f}": fmt.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
        print(f"{r['variant']:9} {('max' if r['budget_gb'] is None else str(r['budget_gb'])):>6} {r.get('status', ''):7} "
              f"{f('predicted_sampling_peak_gib'):>6} {f('max_allocated_gib'):>6} {f('measured_peak_gib'):>8} "
              f"{f('prediction_error', '{:+.1%}'):>6} {f('s_per_step', '{:.2f}'):>7} {f('slowdown_per_step'):>5} "
              f"{f('peak_rss_gib', '{:.0f}'):>5}  {r.get('plan', r.get('error', ''))}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="a14b,ti2v", help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--budgets", default="8,12,16,24", help="comma list of GB of VRAM (GiB, as cards are sold: an '8 GB' card has 8 GiB)")
    ap.add_argument("--source", default="bf16", help="weight format of the user's files: bf16 (plans may pick fp8) "
                    "or a GGUF type (Q4_K_M, Q5_K_M, Q6_K, Q8_0: simulated quantized weights)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ram-gb", type=float, default=None, help="plan for this much free system RAM (GiB) instead "
                    "of what this machine has (e.g. 32 or 64, as on a typical 8-16 GB-GPU desktop)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unconstrained run (no slowdowns then)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or bench/results)")
    args = ap.parse_args(argv)
    env = Env(args.dry_run)
    keys = [k.strip() for k in args.variants.split(",") if k.strip()]
    bad = [k for k in keys if k not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; use {list(VARIANTS)}")
    budgets = [float(b) if "." in b else int(b) for b in args.budgets.split(",") if b.strip()]
    t0 = time.perf_counter()
    rows: list[dict] = []
    for key in keys:
        for b in ([] if args.no_baseline else [None]) + budgets:
            t = time.perf_counter()
            r = run_one(env, key, b, args.source, args.steps, args.ram_gb)
            r["wall_s"] = round(time.perf_counter() - t, 1)
            rows.append(r)
            print(f"[{time.perf_counter() - t0:6.1f} s] {key} {b if b is not None else 'unconstrained'}: "
                  f"{r.get('status')} {r.get('plan', r.get('error', ''))}", flush=True)
    add_slowdowns(rows)
    targets = check_targets(rows)
    print_table(rows)
    for t in targets:
        print(f"target {t['variant']} {t['budget_gb']} {t['metric']} {'<=' if t['metric'] != 'under_budget' else '=='} "
              f"{t['limit']}: {t['value']} "
              f"{'PASS' if t['pass'] else 'FAIL'}")
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "dryrun" if env.dry else (env.gpu.key if env.gpu else "gpu")
    path = out_dir / f"budgets_{tag}.json"
    path.write_text(json.dumps({"gpu": env.gpu_name, "gpu_key": env.gpu.key, "torch": torch.__version__,
                                "context_gib": round(env.context / GIB, 3), "source": args.source,
                                "seconds": round(time.perf_counter() - t0, 1), "rows": rows, "targets": targets,
                                "median_abs_prediction_error": statistics.median(
                                    [abs(r["prediction_error"]) for r in rows if r.get("prediction_error") is not None] or [0.0])},
                               indent=1), encoding="utf-8")
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
