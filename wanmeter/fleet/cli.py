"""`python -m wanmeter fleet plan|run` (plugged into wanmeter/cli.py)."""
from __future__ import annotations

import argparse
import json

from ..errors import WanMeterError
from ..estimator import load_gpus
from .jobs import load_jobs
from .planner import format_plan, plan_fleet
from .tiers import load_tiers

JOBS_HELP = ('a JSONL file, one job a line ({"id", "settings" or "workflow", "prompt", "seed", "count", "deadline", '
             '"tier"}), or a monthly mix such as "300 I2V-A14B 720p + 2000 TI2V-5B drafts"')
TIERS_HELP = ('a tiers JSON file ([{"name", "gpu", "on_demand", "spot", "reserved", "spot_interruption_rate", '
              '"billing", "gpus", "max_gpus", "hours_per_week"}]) or GPU keys such as rtx4090,h100_sxm')


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    fleet = subparsers.add_parser("fleet", help="plan and run many videos across GPU tiers (Ray)",
                                  description="Route video jobs to the cheapest GPU tier that fits them and meets "
                                              "their deadline; cost the month; run them on Ray.")
    sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="plan|run")
    p = sub.add_parser("plan", help="GPUs, GPU-hours, utilisation and monthly cost per tier",
                       description="Plan a month: routing, GPUs, GPU-hours, utilisation and cost per tier, beside the "
                                   "single-tier alternatives. Reserved GPUs are billed 730 h a month, busy or not.")
    p.add_argument("jobs", help=JOBS_HELP)
    p.add_argument("--tiers", required=True, help=TIERS_HELP)
    p.add_argument("--times-per-month", type=float, default=1.0,
                   help="how often the jobs file runs in a month (default 1: the file is a month's work)")
    p.add_argument("--gpus", dest="gpus_file", help="extra GPU table JSON (also env WANMETER_GPUS)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_plan)
    r = sub.add_parser("run", help="make the videos on a Ray cluster (embedded local one by default)",
                       description="Make every planned video on Ray: one worker per GPU, retries when a worker dies, "
                                   "atomic outputs, a manifest that lets a restarted run resume.")
    r.add_argument("jobs", help=JOBS_HELP)
    r.add_argument("--tiers", required=True, help=TIERS_HELP)
    r.add_argument("--out", default="output/fleet", help="output folder (videos, manifest, report)")
    r.add_argument("--address", help="Ray cluster (HOST:PORT, ray://HOST:10001 or auto); default: an embedded local "
                                     "cluster on this machine")
    r.add_argument("--slots", type=int, default=1, help="embedded cluster: GPUs (workers) per tier (default 1)")
    r.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per worker (default 1)")
    r.add_argument("--device", default="auto", choices=["auto", "cpu"], help="cpu: never use a GPU")
    r.add_argument("--tiny", action="store_true", help="run every job on the tiny random models")
    r.add_argument("--max-attempts", type=int, default=3, help="tries per video when workers die (default 3)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--gpus", dest="gpus_file", help="extra GPU table JSON (also env WANMETER_GPUS)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run_run)


def run_plan(args: argparse.Namespace) -> int:
    tiers = load_tiers(args.tiers, load_gpus(args.gpus_file))
    jobs = load_jobs(args.jobs)
    fp = plan_fleet(jobs, tiers, times_per_month=args.times_per_month)
    print(json.dumps(fp.to_dict(), indent=1) if args.json else format_plan(fp))
    return 1 if fp.errors else 0


def run_run(args: argparse.Namespace) -> int:
    from .runner import run_fleet

    if args.slots < 1 or args.max_attempts < 1:
        raise WanMeterError("--slots and --max-attempts must be >= 1.")
    tiers = load_tiers(args.tiers, load_gpus(args.gpus_file))
    jobs = load_jobs(args.jobs)
    rep = run_fleet(jobs, tiers, args.out, address=args.address, tiny=True if args.tiny else None, slots=args.slots,
                    worker_cpus=args.worker_cpus, device=args.device, max_attempts=args.max_attempts,
                    progress=not args.no_progress)
    print(json.dumps(rep.to_dict(), indent=1) if args.json else rep.format())
    print(f"report: {args.out}/fleet-report.json; manifest: {args.out}/fleet-manifest.jsonl")
    return 0 if rep.ok else 1
