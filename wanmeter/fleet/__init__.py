"""Fleet: plan and run many Wan2.2 videos across GPU tiers (Ray), routed by cost.

Public API (the CLI `python -m wanmeter fleet plan|run` uses exactly these):
    load_jobs(path_or_mix) -> JobList          JSONL jobs file, or "300 I2V-A14B 720p + 2000 TI2V-5B"
    load_tiers(path_or_keys) -> [Tier]         tiers JSON, or "rtx4090,h100_sxm"
    plan_fleet(jobs, tiers, times_per_month=1) -> FleetPlan      routing, GPUs, GPU-hours, bills
    format_plan(plan) -> str; FleetPlan.to_dict()
    run_fleet(jobs, tiers, out_dir, address=None, ...) -> RunReport    executes on Ray (runner.py)
"""
from .jobs import Job, JobList, LineError, load_jobs, parse_jobs, parse_mix, read_jobs
from .planner import FleetPlan, Planner, TierPlan, format_plan, plan_fleet
from .tiers import Tier, load_tiers

__all__ = ["Job", "JobList", "LineError", "load_jobs", "parse_jobs", "parse_mix", "read_jobs", "FleetPlan",
           "Planner", "TierPlan", "format_plan", "plan_fleet", "Tier", "load_tiers", "run_fleet"]


def run_fleet(*args, **kwargs):
    """See wanmeter.fleet.runner.run_fleet (imported on use: Ray and torch load only for a run)."""
    from .runner import run_fleet as _run

    return _run(*args, **kwargs)
