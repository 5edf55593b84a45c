"""Route jobs to tiers and cost the month: GPUs, GPU-hours, utilisation, bill per tier.

Routing: each job goes to the tier where a video costs least (the estimator's seconds per video under
the fastest memory plan that fits the tier, plan_for, x the tier's price) among the tiers that fit it
and meet its deadline; when a tier's GPUs are limited (gpus / max_gpus / hours_per_week), the videos
that do not fit its remaining hours go to the next cheapest tier. Jobs with deadlines are routed first.

Costing per tier: busy GPU-hours = runs x seconds per run (+ one model load per model per GPU per
batch); GPUs = enough for the hours (730 h a month each, or the tier's schedule) and for the deadlines.
Bills: on-demand and spot pay busy hours (or the scheduled hours with hours_per_week), spot plus the
work lost to interruptions; reserved pays GPUs x 730 h, busy or not. The single-tier alternatives run
the same routing with one tier, unlimited, so "tiered saves X%" is computed for the user's own mix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import WanMeterError
from ..estimator import Estimate, load_gpus
from ..estimator.estimate import HOURS_PER_MONTH, gpus_for_hours
from ..memplan import plan_for
from .jobs import Job, JobList, LineError
from .tiers import Tier

_BILL_NAMES = {"on_demand": "on-demand", "spot": "spot", "reserved": "reserved"}


@dataclass(frozen=True)
class Option:
    """One job on one tier: the plan that fits and its estimate, or why not."""

    tier: Tier
    estimate: Estimate | None
    plan_text: str = ""
    error: str | None = None

    @property
    def run_s(self) -> float:
        return self.estimate.per_video_s

    @property
    def load_s(self) -> float:
        return self.estimate.load_cold_s

    def spot_factor(self) -> float:
        """Billed hours per busy hour on spot: each reclaim loses half a run and a model load on average."""
        r = self.tier.spot_interruption_rate
        return 1.0 + r * (self.run_s / 2 + self.load_s) / 3600.0

    def cost_per_video(self) -> float:
        price = self.tier.routing_price()
        if self.tier.options()[0] == "spot":   # routed at the spot price: add the work reclaims redo
            price *= self.spot_factor()
        return self.estimate.seconds_per_video / 3600.0 * price


@dataclass
class Assignment:
    job: Job
    option: Option
    runs: int

    @property
    def videos(self) -> int:
        return self.runs * self.job.workload.batch

    @property
    def work_s(self) -> float:
        return self.runs * self.option.run_s


@dataclass
class TierPlan:
    tier: Tier
    assignments: list[Assignment] = field(default_factory=list)
    gpus: int = 0
    work_gpu_hours: float = 0.0        # generating
    load_gpu_hours: float = 0.0        # loading models
    billed_gpu_hours: float = 0.0      # under the chosen billing
    bills: dict[str, float | None] = field(default_factory=dict)
    billing: str = ""
    cost: float = 0.0
    arithmetic: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def busy_gpu_hours(self) -> float:
        return self.work_gpu_hours + self.load_gpu_hours

    @property
    def utilisation(self) -> float:
        return self.work_gpu_hours / self.billed_gpu_hours if self.billed_gpu_hours else 0.0

    @property
    def videos(self) -> int:
        return sum(a.videos for a in self.assignments)


@dataclass
class Alternative:
    tier: str
    cost: float | None
    billing: str = ""
    gpus: int = 0
    reason: str = ""          # why it is not possible


@dataclass
class FleetPlan:
    tiers: list[TierPlan]
    rejected: list[tuple[Job | None, str]] = field(default_factory=list)
    line_errors: list[LineError] = field(default_factory=list)
    alternatives: list[Alternative] = field(default_factory=list)
    times_per_month: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def cost(self) -> float:
        return sum(t.cost for t in self.tiers)

    @property
    def errors(self) -> list[str]:
        return [str(e) for e in self.line_errors] + [m for _, m in self.rejected]

    def tier_of(self) -> dict[str, list[tuple[str, int]]]:
        """job id -> [(tier name, runs)] in routing order (the runner follows this)."""
        out: dict[str, list[tuple[str, int]]] = {}
        for tp in self.tiers:
            for a in tp.assignments:
                out.setdefault(a.job.id, []).append((tp.tier.name, a.runs))
        return out

    def video_tiers(self) -> dict[str, str]:
        """video id -> tier: a job's runs in order fill its tiers in routing order."""
        jobs = {a.job.id: a.job for tp in self.tiers for a in tp.assignments}
        out: dict[str, str] = {}
        for jid, parts in self.tier_of().items():
            ids = iter(jobs[jid].video_ids())
            for tier, runs in parts:
                for _ in range(runs):
                    out[next(ids)] = tier
        return out

    def estimate_for(self, job_id: str, tier: str) -> Estimate | None:
        for tp in self.tiers:
            if tp.tier.name == tier:
                for a in tp.assignments:
                    if a.job.id == job_id:
                        return a.option.estimate
        return None

    def savings(self) -> tuple[Alternative, float] | None:
        """The cheapest possible single-tier alternative and the tiered plan's saving against it (fraction)."""
        ok = [a for a in self.alternatives if a.cost is not None]
        if not ok or not self.tiers:
            return None
        best = min(ok, key=lambda a: a.cost)
        return best, (1.0 - self.cost / best.cost) if best.cost else 0.0

    def to_dict(self) -> dict[str, Any]:
        r = lambda x, n=2: None if x is None else round(float(x), n)  # noqa: E731
        s = self.savings()
        return {
            "times_per_month": self.times_per_month, "hours_per_month": HOURS_PER_MONTH,
            "monthly_cost": r(self.cost),
            "tiers": [{
                "name": t.tier.name, "gpu": t.tier.gpu.key, "gpus": t.gpus, "billing": t.billing,
                "prices_per_hour": {k: getattr(t.tier.prices, k) for k in ("on_demand", "spot", "reserved")},
                "videos_per_month": t.videos * self.times_per_month,
                "work_gpu_hours": r(t.work_gpu_hours), "load_gpu_hours": r(t.load_gpu_hours),
                "billed_gpu_hours": r(t.billed_gpu_hours), "utilisation": r(t.utilisation, 3),
                "bills": {k: r(v) for k, v in t.bills.items()}, "monthly_cost": r(t.cost), "arithmetic": t.arithmetic,
                "jobs": [{"id": a.job.id, "videos": a.videos, "runs": a.runs, "plan": a.option.plan_text,
                          "seconds_per_video": r(a.option.estimate.seconds_per_video, 1),
                          "seconds_per_run": r(a.option.run_s, 1), "load_s": r(a.option.load_s, 1),
                          "cost_per_video": r(a.option.cost_per_video(), 4)} for a in t.assignments],
                "notes": t.notes} for t in self.tiers],
            "single_tier_alternatives": [{"tier": a.tier, "monthly_cost": r(a.cost), "billing": a.billing,
                                          "gpus": a.gpus, "not_possible": a.reason or None} for a in self.alternatives],
            "saving_vs_cheapest_single_tier": None if s is None else {"tier": s[0].tier, "fraction": r(s[1], 4)},
            "errors": self.errors, "notes": self.notes,
        }


def _money(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.2f}"


def _h(x: float) -> str:
    return f"{x:,.1f}" if x >= 1 or x == 0 else f"{x:.3f}"


class Planner:
    """Caches one plan_for per (job settings, tier); plan() routes and costs."""

    def __init__(self, tiers: list[Tier], *, times_per_month: float = 1.0):
        if not tiers:
            raise WanMeterError("no tiers: give at least one GPU tier (--tiers).")
        if times_per_month <= 0:
            raise WanMeterError(f"times per month must be > 0, got {times_per_month}.")
        self.tiers = tiers
        self.by_name = {t.name: t for t in tiers}
        self.times = float(times_per_month)
        self._cache: dict[tuple, Option] = {}

    # -- one job on one tier --------------------------------------------------------------------
    def option(self, job: Job, tier: Tier) -> Option:
        key = (job.workload, job.plan, job.source, tier)
        if key not in self._cache:
            try:
                ap = plan_for(job.workload, tier.vram_bytes, tier.ram_bytes, tier.gpu, source=job.source, base=job.plan)
                self._cache[key] = Option(tier, ap.estimate, ap.description)
            except WanMeterError as err:
                self._cache[key] = Option(tier, None, error=str(err))
        return self._cache[key]

    def smallest_gpu(self, job: Job) -> str | None:
        """The GPU of the table with the least memory on which the job fits (None: none does)."""
        gpus = sorted(load_gpus().values(), key=lambda g: (g.usable_gib, g.key))

        def fits(g) -> bool:
            try:
                plan_for(job.workload, g.usable_gib * (1 << 30), None, g, source=job.source, base=job.plan)
                return True
            except WanMeterError:
                return False

        lo, hi = 0, len(gpus)            # fit grows with memory: binary search the first GPU that fits
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(gpus[mid]):
                hi = mid
            else:
                lo = mid + 1
        if lo == len(gpus):
            return None
        g = gpus[lo]
        return f"{g.name} ({g.vram_gb:.0f} GB, `{g.key}`)"

    # -- routing ----------------------------------------------------------------------------------
    def _candidates(self, job: Job, tiers: list[Tier]) -> tuple[list[Option], str | None]:
        where = f"job {job.id!r}" + (f" (line {job.line})" if job.line else "")
        if job.tier is not None:
            if job.tier not in self.by_name:
                return [], (f"{where}: unknown tier {job.tier!r}; the tiers are {', '.join(self.by_name)}. "
                            "Fix the job's \"tier\" or add that tier.")
            tiers = [t for t in tiers if t.name == job.tier] or [self.by_name[job.tier]]
        opts = [self.option(job, t) for t in tiers]
        fit = [o for o in opts if o.estimate is not None]
        if not fit:
            small = self.smallest_gpu(job)
            have = ", ".join(f"{t.name}: {t.gpu.name} {t.vram_bytes / (1 << 30):.0f} GiB" for t in tiers)
            biggest = max(opts, key=lambda o: o.tier.vram_bytes)
            return [], (f"{where}: {job.describe()} fits no tier ({have}). On {biggest.tier.name}: {biggest.error} "
                        + (f"The smallest GPU it fits is {small}: add a tier with it." if small else
                           "It fits no GPU of the table: lower the resolution or frames."))
        if job.deadline_s is not None:
            meet = [o for o in fit if o.run_s + o.load_s <= job.deadline_s]
            if not meet:
                fast = min(fit, key=lambda o: o.run_s + o.load_s)
                return [], (f"{where}: deadline {job.deadline_s:.0f} s is met by no tier: the fastest, {fast.tier.name} "
                            f"({fast.tier.gpu.name}), needs {fast.run_s:.0f} s per run + {fast.load_s:.0f} s to load "
                            "the models. Relax the deadline or add a faster tier.")
            fit = meet
        fit.sort(key=lambda o: (o.cost_per_video(), o.run_s))
        return fit, None

    def plan(self, jobs: JobList | list[Job], *, single_tier_alternatives: bool = True) -> FleetPlan:
        jl = jobs if isinstance(jobs, JobList) else JobList(list(jobs))
        fp = self._route(jl.jobs, self.tiers)
        fp.line_errors = list(jl.errors)
        if single_tier_alternatives and len(self.tiers) > 1:
            for t in self.tiers:
                free = replace(t, gpus=None, max_gpus=None, hours_per_week=None)
                placed = {id(j) for j, _ in fp.rejected}
                unpinned = [replace(j, tier=None) for j in jl.jobs if id(j) not in placed]   # the tiered plan's jobs
                alt = Planner([free], times_per_month=self.times)
                alt._cache = {k[:3] + (free,): replace(v, tier=free) for k, v in self._cache.items() if k[3] == t}
                ap = alt._route(unpinned, [free])
                if ap.rejected:
                    fp.alternatives.append(Alternative(t.name, None, reason=ap.rejected[0][1]))
                else:
                    tp = ap.tiers[0] if ap.tiers else None
                    fp.alternatives.append(Alternative(t.name, ap.cost, tp.billing if tp else "", tp.gpus if tp else 0))
        return fp

    def _route(self, jobs: list[Job], tiers: list[Tier]) -> FleetPlan:
        plans = {t.name: TierPlan(t) for t in tiers}
        left_h = {t.name: (math.inf if t.gpu_limit is None else t.gpu_limit * t.hours_per_gpu) for t in tiers}
        rejected: list[tuple[Job | None, str]] = []
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i].deadline_s is None, jobs[i].deadline_s or 0, i))
        for i in order:
            job = jobs[i]
            opts, err = self._candidates(job, tiers)
            if err:
                rejected.append((job, err))
                continue
            runs = job.runs
            for o in opts:
                if runs == 0:
                    break
                tname = o.tier.name
                cap = left_h[tname] * 3600.0 / self.times
                if job.deadline_s is not None and o.tier.gpu_limit is not None:
                    per_gpu = max(0, math.floor((job.deadline_s - o.load_s) / o.run_s))
                    earlier = sum(a.work_s for a in plans[tname].assignments if a.job.deadline_s is not None)
                    cap = min(cap, o.tier.gpu_limit * (job.deadline_s - o.load_s) - earlier,
                              o.tier.gpu_limit * per_gpu * o.run_s)
                take = runs if cap == math.inf else max(0, min(runs, math.floor(cap / o.run_s + 1e-9)))
                if take:
                    plans[tname].assignments.append(Assignment(job, o, take))
                    left_h[tname] -= take * o.run_s * self.times / 3600.0
                    runs -= take
            if runs:
                where = f"job {job.id!r}" + (f" (line {job.line})" if job.line else "")
                rejected.append((job, f"{where}: {runs * job.workload.batch} of {job.count} videos do not fit the "
                                      f"tiers' GPU limits ({', '.join(o.tier.name for o in opts)}" +
                                      (" within the deadline" if job.deadline_s else "") +
                                      "): raise max_gpus / gpus / hours_per_week or add a tier."))
        fp = FleetPlan([self._cost(tp) for tp in plans.values() if tp.assignments], rejected,
                       times_per_month=self.times)
        return fp

    # -- costing ----------------------------------------------------------------------------------
    def _cost(self, tp: TierPlan) -> TierPlan:
        t, k = tp.tier, self.times
        work_h = sum(a.work_s for a in tp.assignments) * k / 3600.0
        need = gpus_for_hours(work_h, t.hours_per_gpu)
        dl = sorted((a for a in tp.assignments if a.job.deadline_s is not None), key=lambda a: a.job.deadline_s)
        acc = 0.0
        for a in dl:   # enough GPUs that the work due by each deadline fits before it
            acc += a.work_s
            window = a.job.deadline_s - a.option.load_s
            per_gpu = max(1, math.floor(window / a.option.run_s))
            need = max(need, math.ceil(acc / window - 1e-9), math.ceil(a.runs / per_gpu))
        gpus = t.gpus if t.gpus is not None else need
        if t.gpus is not None and need > t.gpus:
            tp.notes.append(f"needs {need} GPUs for this work; the tier has {t.gpus}")
        # one model load per model per GPU that runs it, per batch of jobs
        groups: dict[str, tuple[int, float]] = {}
        for a in tp.assignments:
            runs, load = groups.get(a.job.model_key, (0, 0.0))
            groups[a.job.model_key] = (runs + a.runs, max(load, a.option.load_s))
        load_h = sum(min(gpus, r) * s for r, s in groups.values()) * k / 3600.0
        busy_h = work_h + load_h
        spot_extra = sum(a.work_s * (a.option.spot_factor() - 1.0) for a in tp.assignments) * k / 3600.0
        on_h = gpus * t.hours_per_gpu if t.hours_per_week is not None else busy_h
        spot_h = gpus * t.hours_per_gpu if t.hours_per_week is not None else busy_h + spot_extra
        p = t.prices
        bills = {"on_demand": None if p.on_demand is None else on_h * p.on_demand,
                 "spot": None if p.spot is None else spot_h * p.spot,
                 "reserved": None if p.reserved is None else gpus * HOURS_PER_MONTH * p.reserved}
        opts = t.options()
        billing = opts[0] if t.billing != "auto" else min(opts, key=lambda b: bills[b])
        billed = {"on_demand": on_h, "spot": spot_h, "reserved": gpus * HOURS_PER_MONTH}[billing]
        price = getattr(p, billing)
        g = f"{gpus} GPU{'s' if gpus != 1 else ''}"
        if billing == "reserved":
            arith = (f"{g} x {HOURS_PER_MONTH:.0f} h x ${price:.2f} = {_money(bills['reserved'])} (reserved: billed every "
                     f"hour of the month, busy or not; the busy {_h(busy_h)} GPU-h alone would be "
                     f"{_money(busy_h * price)}, which is not what a reserved GPU costs)")
        elif t.hours_per_week is not None:
            arith = (f"{g} x {t.hours_per_week:g} h/week x {HOURS_PER_MONTH:.0f}/168 weeks x ${price:.2f} = "
                     f"{_money(bills[billing])} ({_BILL_NAMES[billing]}, switched on {_h(t.hours_per_gpu)} h a month per GPU)")
        else:
            extra = f" (+{_h(spot_extra)} h redone after reclaims)" if billing == "spot" and spot_extra else ""
            arith = (f"{_h(billed)} GPU-h x ${price:.2f} = {_money(bills[billing])} ({_BILL_NAMES[billing]}: "
                     f"{_h(work_h)} h generating + {_h(load_h)} h loading models{extra}; stopped when idle)")
        if busy_h > gpus * t.hours_per_gpu + 1e-6:
            tp.notes.append(f"{_h(busy_h)} busy GPU-h exceed the {_h(gpus * t.hours_per_gpu)} h the tier's GPUs are on")
        for b in ("on_demand", "reserved"):
            if b != billing and bills.get(b) is not None and bills[b] < bills[billing] - 0.005:
                tp.notes.append(f"{_BILL_NAMES[b]} would cost {_money(bills[b])} a month")
        tp.gpus, tp.work_gpu_hours, tp.load_gpu_hours, tp.billed_gpu_hours = gpus, work_h, load_h, billed
        tp.bills, tp.billing, tp.cost, tp.arithmetic = bills, billing, float(bills[billing]), arith
        return tp


def plan_fleet(jobs: JobList | list[Job], tiers: list[Tier], *, times_per_month: float = 1.0,
               single_tier_alternatives: bool = True) -> FleetPlan:
    """Route `jobs` over `tiers` and cost a month of them (see module doc)."""
    return Planner(tiers, times_per_month=times_per_month).plan(jobs, single_tier_alternatives=single_tier_alternatives)


def format_plan(fp: FleetPlan) -> str:
    """The plan as text: one block per tier with its arithmetic, then alternatives and errors."""
    lines = []
    for tp in fp.tiers:
        t = tp.tier
        lines.append(f"{t.name}: {tp.gpus} x {t.gpu.name}, {tp.videos * fp.times_per_month:,.0f} videos a month, "
                     f"{_h(tp.busy_gpu_hours)} busy GPU-h, utilisation {100 * tp.utilisation:.0f}% of billed hours")
        lines.append(f"  {_BILL_NAMES[tp.billing]}: {tp.arithmetic}")
        for a in tp.assignments:
            e = a.option.estimate
            lines.append(f"  - {a.job.id}: {a.videos * fp.times_per_month:,.0f} x {a.job.describe()}: "
                         f"{e.seconds_per_video:,.0f} s/video (+{a.option.load_s:.0f} s load), "
                         f"${a.option.cost_per_video():.4f}/video; {a.option.plan_text.split(':')[0]}")
        for n in tp.notes:
            lines.append(f"  note: {n}")
    lines.append(f"Monthly total: {_money(fp.cost)}")
    if fp.alternatives:
        lines.append("Single-tier alternatives (same jobs, one tier, as many GPUs as needed):")
        for a in fp.alternatives:
            lines.append(f"  all on {a.tier}: " + (f"{_money(a.cost)} ({a.gpus} GPU{'s' if a.gpus != 1 else ''}, {_BILL_NAMES.get(a.billing, a.billing)})"
                                                   if a.cost is not None else f"not possible: {a.reason}"))
        s = fp.savings()
        if s is not None:
            best, frac = s
            lines.append(f"Tiered vs all on {best.tier}: {_money(fp.cost)} vs {_money(best.cost)} "
                         f"({'saves' if frac >= 0 else 'costs'} {abs(100 * frac):.0f}%"
                         + (")" if frac >= 0 else " more: one tier is cheaper for this mix)"))
    for n in fp.notes:
        lines.append(f"note: {n}")
    for e in fp.errors:
        lines.append(f"error: {e}")
    return "\n".join(lines)
