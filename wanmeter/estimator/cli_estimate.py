"""`estimate` and `gpus` subcommands (plugged into wanmeter/cli.py via add_subcommands, or run
standalone with `python -m wanmeter.estimator ...`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ..errors import WanMeterError
from .gpus import load_gpus

# --price stays as the short spelling of --price-per-hour
SHORT = {"price_per_hour": "--price"}
TYPES = {"int": int, "float": float, "str": str}


def _fmt_s(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _fmt_money(x: float | None) -> str:
    return "n/a" if x is None else (f"${x:.4f}" if x < 0.1 else f"${x:,.2f}")


def format_reply(r: dict) -> str:
    """The reply every surface gets (wanmeter.estimator.reply), as text."""
    g = r["gpu"]
    lines = [f"{r['label']} {r['width']}x{r['height']} {r['frames']}f {r['steps']} steps on {g['name']}"
             f" ({'measured' if g.get('measured') else 'assumed from specs'} efficiencies)",
             f"  plan  {r['plan']}"]
    fit = "fits" if r["fits"] else "DOES NOT FIT"
    lines.append(f"  VRAM  {r['peak_vram_gib']:.1f} GiB peak of {r['budget_gib']:.1f} GiB: {fit}")
    lines.append(f"  RAM   {r['ram_gib']:.1f} GiB")
    t = r["time_parts"]
    lines.append(f"  time  {_fmt_s(r['seconds_per_video'])} per video = text {t['text']:.1f} s + moves "
                 f"{t['transfers']:.1f} s + denoise {_fmt_s(t['denoise'])} + decode {t['decode']:.1f} s  "
                 f"(cold load +{_fmt_s(t['load'])}); {r['seconds_per_step']:.2f} s/step")
    lines.append(f"  cost  {_fmt_money(r['cost_per_video'])} per video at {_fmt_money(r['price_per_hour'])}/h; "
                 f"{r['videos_per_month']} videos/month: {_fmt_money(r['cost_per_month'])}")
    if r.get("suggestion"):
        lines.append(f"  fix   {r['suggestion']}")
    for c in r.get("cheapest") or []:
        lines.append(f"  cheapest: {c['name']}: {_fmt_money(c['cost_per_video'])}/video, {_fmt_s(c['seconds_per_video'])}"
                     f" ({'; '.join(c['changes'])})")
    for n in r.get("notes") or []:
        lines.append(f"  note: {n}")
    for p in r.get("pipelines") or []:
        lines.append(f"  chain {p.get('sampler_id')}: " + (p["error"] if "error" in p else
                     f"{p['label']}: {_fmt_s(p['seconds_per_video'])}, {_fmt_money(p['cost_per_video'])}, "
                     f"{p['peak_vram_gib']:.1f} GiB, {'fits' if p['fits'] else 'does not fit'}"))
    return "\n".join(lines)


def format_ranking(ranked: list[dict]) -> str:
    rows = [f"{'#':>2}  {'GPU':<14} {'$/video':>9} {'time':>9} {'VRAM GiB':>9}  plan"]
    for i, r in enumerate(ranked, 1):
        plan = r["plan"] if r["fits"] else "does not fit"
        rows.append(f"{i:>2}  {r['name']:<14} {_fmt_money(r['cost_per_video']):>9} {_fmt_s(r['seconds_per_video']):>9} "
                    f"{r['peak_vram_gib']:>9.1f}  {plan}")
    return "\n".join(rows)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register `estimate` and `gpus` on the main CLI's subparsers. One flag per setting of the
    settings schema (data/node_schema.json): the same names, defaults and choices as the nodes."""
    from .settings import choices_of, setting_specs

    p = subparsers.add_parser("estimate", help="VRAM / time / cost of a run, and the GPU ranking",
                              description="Estimate peak VRAM, RAM, time and cost of a workflow JSON or of flags: "
                                          "the same estimate (and the same auto plan) the estimator node shows.")
    p.add_argument("workflow", nargs="?", help="workflow JSON (UI format or API prompt) using WanMeter nodes")
    p.add_argument("--sampler", help="node id of the sampler chain to estimate (default: the first)")
    p.add_argument("--gpus", dest="gpus_file", help="extra GPU table JSON (also env WANMETER_GPUS)")
    p.add_argument("--json", action="store_true", help="machine-readable output (the route's reply)")
    p.add_argument("--rank", action="store_true", help="also rank every GPU of the table by cost per video")
    p.add_argument("--no-rank", action="store_true", help=argparse.SUPPRESS)  # old spelling; ranking is opt-in now
    p.add_argument("--cfg", type=float, nargs="+", help="guidance per expert (1 = off)")
    for key, spec in setting_specs().items():
        flag = SHORT.get(key, "--" + key.replace("_", "-"))
        unit = f" [{spec['unit']}]" if spec.get("unit") else ""
        default = spec.get("default")
        help_ = f"{spec.get('help', key)}{unit} (default: {'official' if default is None else default})"
        if spec["type"] == "bool":
            p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_)
            continue
        ch = choices_of(key)
        kw = {"choices": list(ch)} if ch is not None and len(ch) < 40 else {}
        p.add_argument(flag, dest=key, type=TYPES[spec["type"]], default=None, help=help_, **kw)
    p.set_defaults(func=run_estimate)
    g = subparsers.add_parser("gpus", help="list the GPU table (specs and prices)")
    g.add_argument("--gpus", dest="gpus_file", help="extra GPU table JSON (also env WANMETER_GPUS)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=run_gpus)


def _by_name(settings: dict) -> str | None:
    """CLI: no model folders, so variant and precision come from the file names (or --variant)."""
    from .reply import source_from_name

    settings.setdefault("source", source_from_name(settings.get("model")))
    return None


def run_estimate(args: argparse.Namespace) -> int:
    from .reply import estimate_graph, estimate_reply
    from .settings import setting_specs

    gpus = load_gpus(args.gpus_file)
    flags = {k: getattr(args, k) for k in setting_specs() if getattr(args, k, None) is not None}
    if args.cfg:
        flags["cfg"] = list(args.cfg)
    if args.workflow:
        try:
            wf = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
        except OSError as e:
            raise WanMeterError(f"Cannot read {args.workflow}: {e.strerror}.") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise WanMeterError(f"{args.workflow} is not valid JSON ({str(e)[:80]}).") from None
        reply = estimate_graph(wf, overrides=flags, sampler_id=args.sampler, resolve=_by_name, gpus=gpus)
    else:
        if not flags.get("variant") and not flags.get("model"):
            flags["variant"] = "t2v_a14b"
        _by_name(flags)
        reply = estimate_reply(flags, gpus=gpus)
    ranking = []
    if args.rank:
        base = dict(flags)
        if args.workflow:
            from .reply import workload_from_ui_workflow

            _, _, base = workload_from_ui_workflow(wf, variant=flags.get("variant"), sampler_id=args.sampler)
            base.update(flags)
            _by_name(base)
        for key in gpus:
            r = estimate_reply({**base, "gpu": key}, gpus=gpus, rank=False)
            ranking.append({"gpu": key, "name": r["gpu"]["name"], "fits": r["fits"], "plan": r["plan"],
                            "cost_per_video": r["cost_per_video"], "seconds_per_video": r["seconds_per_video"],
                            "peak_vram_gib": r["peak_vram_gib"]})
        ranking.sort(key=lambda x: (not x["fits"], x["cost_per_video"] is None, x["cost_per_video"] or 0.0))
    if args.json:
        print(json.dumps({**reply, "ranking": ranking} if args.rank else reply, indent=1))
        return 0
    print(format_reply(reply))
    if ranking:
        print("\nWhich GPU (by cost per video; the auto plan on each):")
        print(format_ranking(ranking))
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
