"""`estimate` and `gpus` subcommands (plugged into wanmeter/cli.py via add_subcommands, or run
standalone with `python -m wanmeter.estimator ...`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ..errors import WanMeterError
from .estimate import Estimate, Prices, estimate
from .fixes import rank_gpus, suggest_fixes
from .gpus import get_gpu, load_gpus
from .settings import validate_settings, workload_from_settings, workload_from_ui_workflow

FLAG_KEYS = ("variant", "width", "height", "frames", "steps", "weight_dtype", "compute", "offload", "blocks_to_stream",
             "attention", "text_encoder_device", "text_encoder_dtype", "vae_dtype", "num_gpus", "loras", "lora_rank",
             "s2v_clips", "batch", "shift", "budget_gb", "ram_gb", "videos_per_month")


def _fmt_s(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _fmt_money(x: float | None) -> str:
    return "n/a" if x is None else (f"${x:.4f}" if x < 0.1 else f"${x:,.2f}")


def format_estimate(e: Estimate) -> str:
    """Short human summary of one estimate."""
    w = e.workload
    lines = [f"{w.facts['label']} {w.width}x{w.height} {w.frames}f {w.steps} steps on {e.gpu.name}"
             f"{f' x{e.plan.num_gpus}' if e.plan.num_gpus > 1 else ''} ({e.plan.describe()})"]
    fit = "fits" if e.fits else "DOES NOT FIT"
    lines.append(f"  VRAM  {e.vram_peak_gib:.1f} GiB peak ({e.vram_peak_phase}) of {e.vram_limit_gib:.1f}: {fit}")
    lines.append("        " + ", ".join(f"{k} {v:.1f}" for k, v in e.vram_breakdown.items() if v >= 0.05))
    lines.append(f"  RAM   {e.ram_gib:.1f} GiB: " + ", ".join(f"{k} {v:.1f}" for k, v in e.ram_breakdown.items()))
    parts = e.denoise_parts
    lines.append(f"  time  {_fmt_s(e.per_video_s)} per video = text {e.text_encode_s:.1f} s + moves {e.transfers_s:.1f} s"
                 f" + denoise {_fmt_s(e.denoise_s)} + decode {e.decode_s:.1f} s  (cold load +{_fmt_s(e.load_cold_s)})")
    lines.append("        denoise: " + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items() if v >= 0.5)
                 + f"; {e.forwards} forwards, {e.flops_total / 1e15:.0f} PFLOP, floor {_fmt_s(e.flop_floor_s)}")
    m = e.monthly()
    lines.append(f"  cost  {_fmt_money(e.cost_per_video)} per video at {_fmt_money(e.prices.on_demand)}/h; "
                 f"{e.videos_per_month} videos/month: on-demand {_fmt_money(m['on_demand'])}, spot {_fmt_money(m['spot'])}, "
                 f"reserved {_fmt_money(m['reserved'])}")
    for n in e.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def format_ranking(ranked) -> str:
    rows = [f"{'#':>2}  {'GPU':<14} {'$/video':>9} {'time':>9} {'VRAM GiB':>9}  plan changes"]
    for i, r in enumerate(ranked, 1):
        e = r.estimate
        change = "; ".join(r.changes) if r.changes else ("-" if r.fits else "does not fit")
        rows.append(f"{i:>2}  {r.gpu.name:<14} {_fmt_money(r.cost_per_video):>9} {_fmt_s(e.per_video_s):>9} "
                    f"{e.vram_peak_gib:>9.1f}  {change}")
    return "\n".join(rows)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register `estimate` and `gpus` on the main CLI's subparsers."""
    p = subparsers.add_parser("estimate", help="VRAM / time / cost of a run, and the GPU ranking",
                              description="Estimate peak VRAM, RAM, time and cost for a workflow JSON or flags.")
    p.add_argument("workflow", nargs="?", help="UI-format workflow JSON using WanMeter nodes")
    p.add_argument("--gpu", help="GPU key or name (see `gpus`); default: the workflow's, else H100 SXM")
    p.add_argument("--price", type=float, help="your on-demand $/GPU-hour")
    p.add_argument("--gpus", dest="gpus_file", help="extra GPU table JSON (also env WANMETER_GPUS)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-rank", action="store_true", help="skip the GPU ranking table")
    p.add_argument("--cfg", type=float, nargs="+", help="guidance per expert (1 = off)")
    p.add_argument("--vae-tiled", action="store_true")
    for k in FLAG_KEYS:
        typ = float if k in ("shift", "budget_gb", "ram_gb") else int if k in (
            "width", "height", "frames", "steps", "blocks_to_stream", "num_gpus", "loras", "lora_rank", "s2v_clips",
            "batch", "videos_per_month") else str
        p.add_argument("--" + k.replace("_", "-"), dest=k, type=typ)
    p.set_defaults(func=run_estimate)
    g = subparsers.add_parser("gpus", help="list the GPU table (specs and prices)")
    g.add_argument("--gpus", dest="gpus_file", help="extra GPU table JSON (also env WANMETER_GPUS)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=run_gpus)


def run_estimate(args: argparse.Namespace) -> int:
    gpus = load_gpus(args.gpus_file)
    if args.workflow:
        try:
            wf = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
        except OSError as e:
            raise WanMeterError(f"Cannot read {args.workflow}: {e.strerror}.") from None
        except json.JSONDecodeError as e:
            raise WanMeterError(f"{args.workflow} is not valid JSON ({e}).") from None
        _, _, settings = workload_from_ui_workflow(wf, variant=args.variant)
    else:
        settings = {}
    for k in FLAG_KEYS:
        v = getattr(args, k)
        if v is not None:
            settings[k] = v
    if args.cfg:
        settings["cfg"] = list(args.cfg)
    if args.vae_tiled:
        settings["vae_tiled"] = True
    if args.price is not None:
        settings["price_per_hour"] = args.price
    settings = validate_settings(settings, gpus)
    w, plan = workload_from_settings(settings)
    gpu_key = args.gpu or (settings.get("gpu") if settings.get("gpu") not in (None, "", "auto") else "h100_sxm")
    gpu = get_gpu(gpu_key, gpus)
    prices = Prices(on_demand=args.price) if args.price is not None else None
    vpm = int(settings.get("videos_per_month") or 1000)
    e = estimate(w, plan, gpu, prices, videos_per_month=vpm)
    fixes = [] if e.fits else suggest_fixes(w, plan, gpu, prices, videos_per_month=vpm)
    ranked = [] if args.no_rank else rank_gpus(w, plan, gpus=gpus, prices={gpu.key: prices} if prices else None,
                                                videos_per_month=vpm)
    if args.json:
        out = {"estimate": e.to_dict(),
               "fixes": [{"changes": f.changes, "estimate": f.estimate.to_dict()} for f in fixes],
               "ranking": [{"gpu": r.gpu.key, "fits": r.fits, "changes": r.changes, "cost_per_video": r.cost_per_video,
                            "seconds_per_video": round(r.estimate.per_video_s, 1),
                            "vram_peak_gib": round(r.estimate.vram_peak_gib, 2)} for r in ranked]}
        print(json.dumps(out, indent=1))
        return 0
    print(format_estimate(e))
    if fixes:
        print("\nTo make it fit (fastest first):")
        for f in fixes:
            print(f"  - {', '.join(f.changes)}: {f.estimate.vram_peak_gib:.1f} GiB, {_fmt_s(f.estimate.per_video_s)}")
    if ranked:
        print("\nWhich GPU (by cost per video; plan changed where needed to fit):")
        print(format_ranking(ranked))
    return 0


def run_gpus(args: argparse.Namespace) -> int:
    gpus = load_gpus(args.gpus_file)
    if args.json:
        print(json.dumps({k: {f: getattr(g, f) for f in g.__dataclass_fields__} for k, g in gpus.items()}, indent=1))
        return 0
    print(f"{'key':<11} {'name':<14} {'VRAM':>5} {'BW GB/s':>8} {'bf16 TF':>8} {'fp8 TF':>7} {'link':>5} "
          f"{'$/h':>6} {'spot':>6}")
    for k, g in gpus.items():
        fp8 = f"{g.fp8_tflops:.0f}" if g.fp8_tflops else "-"
        od = f"{g.on_demand_per_hour:.2f}" if g.on_demand_per_hour is not None else "-"
        sp = f"{g.spot_per_hour:.2f}" if g.spot_per_hour is not None else "-"
        print(f"{k:<11} {g.name:<14} {g.vram_gb:>5.0f} {g.mem_bw_gbps:>8.0f} {g.bf16_tflops:>8.0f} {fp8:>7} "
              f"{g.host_link_gbps:>5.0f} {od:>6} {sp:>6}")
    print("Prices: $/GPU-hour from public 2026 price pages (see wanmeter/data/gpus.json); set yours with --price or a "
          "--gpus file.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanmeter.estimator",
                                     description="WanMeter VRAM / time / cost estimator")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WanMeterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
