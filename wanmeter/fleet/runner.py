"""`fleet run`: execute a fleet plan on a Ray cluster (Ray schedules and restarts; this module decides
what goes where and records what finished).

- Cluster: an embedded local one by default (this machine; each tier gets `slots` units of its
  resource "tier:<name>"), or `address` for a running cluster whose nodes were started with
  `ray start --resources '{"tier:<name>": <GPUs on the node>}'` or `--labels '{"wanmeter-tier": "<name>"}'`.
- Workers: one long-lived Ray actor per GPU of a tier (`VideoWorker`), holding one unit of the tier's
  resource (and a GPU where the cluster has GPUs); the driver gives each idle worker the next video of
  its tier with the models it already holds, so models load once per run of same-model jobs.
- Failures: a worker that dies (spot reclaim, OOM kill, node loss) costs only the video in flight:
  it goes back to the front of its tier's queue (up to max_attempts) and a new worker replaces the dead
  one. A job that raises (bad image, bad file) fails alone, with its message. Outputs are atomic and the
  manifest (manifest.py) makes a restarted run skip finished videos.
- Report: measured vs estimated seconds and cost per job and per tier, utilisation of the workers.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import WanMeterError
from .jobs import Job, JobList
from .manifest import Manifest
from .planner import FleetPlan, Planner
from .tiers import Tier
from .worker import VideoWorker, atomic_write_text

PKG_DIR = Path(__file__).resolve().parents[1]       # wanmeter/
REPO_ROOT = PKG_DIR.parent


@dataclass
class RunReport:
    plan: FleetPlan
    results: list[dict[str, Any]] = field(default_factory=list)      # runs finished (or adopted) now
    skipped: list[str] = field(default_factory=list)                 # finished by an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)      # (video, why)
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    wall_s: float = 0.0
    workers: dict[str, int] = field(default_factory=dict)
    models: str = "tiny"
    devices: dict[str, str] = field(default_factory=dict)
    started: float = 0.0            # epoch seconds when the workers were asked for (deadlines count from here)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors

    def rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(per job and tier, per tier): measured vs estimated."""
        by: dict[tuple[str, str], list[dict]] = {}
        for r in self.results:
            if not r.get("adopted"):
                by.setdefault((r["job"], r["tier"]), []).append(r)
        tiers = {tp.tier.name: tp.tier for tp in self.plan.tiers}
        jobs = []
        for (jid, tname), rs in sorted(by.items()):
            e = self.plan.estimate_for(jid, tname)
            price = tiers[tname].routing_price() if tname in tiers else None
            meas = sum(r["seconds"] for r in rs) / len(rs)
            loads = [r["load_s"] for r in rs if r["load_s"] > 0]
            batch = e.workload.batch if e else 1
            job = next((a.job for tp in self.plan.tiers for a in tp.assignments if a.job.id == jid), None)
            after = max(r["finished"] for r in rs) - self.started if self.started else None
            jobs.append({"job": jid, "tier": tname, "runs": len(rs), "videos": len(rs) * batch,
                         "deadline_s": None if job is None else job.deadline_s,
                         "finished_after_s": None if after is None else round(after, 2),
                         "deadline_met": None if job is None or job.deadline_s is None or after is None
                         else after <= job.deadline_s,
                         "measured_s_per_run": round(meas, 3), "estimated_s_per_run": None if e is None else round(e.per_video_s, 1),
                         "measured_load_s": round(sum(loads) / len(loads), 3) if loads else None,
                         "estimated_load_s": None if e is None else round(e.load_cold_s, 1),
                         "measured_cost_per_video": None if price is None else round(meas / batch / 3600 * price, 6),
                         "estimated_cost_per_video": None if e is None or price is None else
                         round(e.seconds_per_video / 3600 * price, 6),
                         "ratio_measured_to_estimated": None if e is None or not e.per_video_s else round(meas / e.per_video_s, 4)})
        tier_rows = []
        for tname, n in self.workers.items():
            rs = [r for r in self.results if r["tier"] == tname and not r.get("adopted")]
            busy = sum(r["seconds"] + r["load_s"] for r in rs)
            est = sum((self.plan.estimate_for(r["job"], tname).per_video_s if self.plan.estimate_for(r["job"], tname) else 0)
                      for r in rs)
            tier_rows.append({"tier": tname, "workers": n, "device": self.devices.get(tname, ""), "runs": len(rs),
                              "measured_busy_s": round(busy, 2), "estimated_busy_s": round(est, 1),
                              "utilisation": round(busy / (n * self.wall_s), 3) if n and self.wall_s else None,
                              "retries": sum(1 for r in rs if r["attempt"] > 1)})
        return jobs, tier_rows

    def to_dict(self) -> dict[str, Any]:
        jobs, tiers = self.rows()
        return {"models": self.models, "wall_s": round(self.wall_s, 2), "done_now": len(self.results),
                "already_done": len(self.skipped), "failed": [{"video": v, "error": m} for v, m in self.failed],
                "retries": self.retries, "errors": self.errors, "per_job": jobs, "per_tier": tiers,
                "results": self.results}

    def format(self) -> str:
        jobs, tiers = self.rows()
        lines = [f"fleet run: {len(self.results)} runs done now, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed, {self.retries} retried, {self.wall_s:.1f} s wall"]
        if self.models == "tiny":
            lines.append("models: tiny random weights on this machine; estimates are for the real weights on each "
                         "tier's GPU, so the ratios show the pipeline ran, not the estimator's accuracy")
        lines.append(f"{'job':<22} {'tier':<10} {'runs':>4} {'meas s/run':>10} {'est s/run':>10} {'ratio':>7} "
                     f"{'meas $/vid':>10} {'est $/vid':>10}")
        for j in jobs:
            f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
            lines.append(f"{j['job'][:22]:<22} {j['tier'][:10]:<10} {j['runs']:>4} {f(j['measured_s_per_run']):>10} "
                         f"{f(j['estimated_s_per_run'], 1):>10} {f(j['ratio_measured_to_estimated'], 3):>7} "
                         f"{f(j['measured_cost_per_video'], 4):>10} {f(j['estimated_cost_per_video'], 4):>10}")
        lines.append(f"{'tier':<10} {'workers':>7} {'runs':>5} {'busy s':>9} {'est busy s':>10} {'util':>6}  device")
        for t in tiers:
            u = "-" if t["utilisation"] is None else f"{100 * t['utilisation']:.0f}%"
            lines.append(f"{t['tier'][:10]:<10} {t['workers']:>7} {t['runs']:>5} {t['measured_busy_s']:>9.1f} "
                         f"{t['estimated_busy_s']:>10.1f} {u:>6}  {t['device']}")
        for j in jobs:
            if j["deadline_met"] is False:
                lines.append(f"deadline missed: {j['job']} finished {j['finished_after_s']:.0f} s after the start "
                             f"(deadline {j['deadline_s']:.0f} s)")
        for v, m in self.failed:
            lines.append(f"failed: {v}: {m}")
        for e in self.errors:
            lines.append(f"error: {e}")
        return "\n".join(lines)


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """A clear error before Ray's own retries when host:port does not answer."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise WanMeterError(f"--address {address!r}: give HOST:PORT of the Ray head (e.g. 10.0.0.5:6379), "
                            "ray://HOST:10001, or auto.")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise WanMeterError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): check the address "
                            "(`ray status` on the head node prints it) and the firewall, or leave out --address to "
                            "run on an embedded local cluster.") from None


def connect(tiers: list[Tier], *, address: str | None, slots: int, worker_cpus: float) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, runtime_env={"py_modules": [str(PKG_DIR)]}, configure_logging=False,
                     log_to_driver=False)
        except Exception as e:  # ConnectionError, RuntimeError, TimeoutError from Ray's client
            raise WanMeterError(f"cannot join the Ray cluster at {address} ({type(e).__name__}: {e}). Check the "
                                "address, or leave out --address for a local cluster.") from None
        return True
    # embedded: workers are started by this Ray instance and must import wanmeter from here
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    ray.init(num_cpus=max(1, int(round(slots * len(tiers) * worker_cpus))),
             resources={t.resource: slots for t in tiers}, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    return True


class _Bar:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0 = total, enabled and total > 0, time.perf_counter()

    def show(self, done: int, retries: int, failed: int, end: bool = False) -> None:
        if not self.enabled:
            return
        n = 30
        k = int(n * done / self.total) if self.total else n
        sys.stderr.write(f"\rfleet [{'#' * k}{'.' * (n - k)}] {done}/{self.total} runs  retries {retries}  "
                         f"failed {failed}  {time.perf_counter() - self.t0:.0f} s" + ("\n" if end else ""))
        sys.stderr.flush()


LABEL = "wanmeter-tier"


def tier_capacity(tiers: list[Tier], resources: dict[str, float], nodes: list[dict]) -> dict[str, tuple[int, dict]]:
    """tier -> (workers it can have, actor options that place them) on this cluster.

    A tier is either a custom resource "tier:<name>" (one unit per GPU; what the embedded cluster uses)
    or nodes labelled wanmeter-tier=<name> (one worker per GPU of those nodes, or one per node without
    GPUs), placed with Ray's label selector.
    """
    out: dict[str, tuple[int, dict]] = {}
    for t in tiers:
        units = int(resources.get(t.resource, 0))
        if units >= 1:
            out[t.name] = (units, {"resources": {t.resource: 1}})
            continue
        labelled = [n for n in nodes if n.get("Alive", True) and (n.get("Labels") or {}).get(LABEL) == t.name]
        units = sum(max(1, int((n.get("Resources") or {}).get("GPU", 0))) for n in labelled)
        out[t.name] = (units, {"label_selector": {LABEL: t.name}} if units else {})
    return out


@dataclass
class _Slot:
    tier: str
    handle: Any
    key: str | None = None
    pid: int | None = None


def _tasks(plan: FleetPlan, jobs: list[Job], out: Path, tiny: bool) -> dict[str, deque]:
    """Per tier, the runs to make: deadline jobs first, then same-model jobs next to each other."""
    tier_of = plan.video_tiers()
    order: dict[str, int] = {}
    for j in jobs:
        order.setdefault(j.model_key, len(order))
    queues: dict[str, list] = {}
    for ji, j in enumerate(jobs):
        for i, vid in enumerate(j.video_ids()):
            t = tier_of.get(vid)
            if t is None:
                continue
            e = plan.estimate_for(j.id, t)
            # jobs with deadlines first (earliest first), then same-model jobs together
            due = j.deadline_s if j.deadline_s is not None else float("inf")
            queues.setdefault(t, []).append(((due, order[j.model_key], ji, i), {
                "video": vid, "job": j, "seed": j.seed + i, "attempt": 1, "tier": t, "out_dir": str(out),
                "running_dir": str(out / ".running"), "tiny": tiny, "plan": None if e is None else e.plan}))
    return {t: deque(task for _, task in sorted(q, key=lambda x: x[0])) for t, q in queues.items()}


def run_fleet(jobs: JobList | list[Job], tiers: list[Tier], out_dir: str | Path, *, address: str | None = None,
              tiny: bool | None = None, slots: int = 1, worker_cpus: float = 1.0, device: str = "auto",
              max_attempts: int = 3, progress: bool = True, on_event: Callable[[dict], None] | None = None,
              shutdown: bool = True) -> RunReport:
    """Plan `jobs` over `tiers`, then make every planned video on Ray (see module doc).

    tiny: run on the tiny random models (default: when no job names model files). slots: GPUs per
    tier of the embedded cluster. Joins an already initialised Ray (ray.init) as it is.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

    if address:
        check_reachable(address)   # before anything is planned or written
    jl = jobs if isinstance(jobs, JobList) else JobList(list(jobs))
    if tiny is None:
        tiny = all(j.models is None for j in jl.jobs)
    if not tiny and any(j.models is None for j in jl.jobs):
        raise WanMeterError("jobs " + ", ".join(j.id for j in jl.jobs if j.models is None) + " name no model files: "
                            "add \"models\" to them, or run everything on the tiny models (--tiny).")
    bad = [j for j in jl.jobs if j.workload.variant == "s2v_14b"]
    if bad:
        jl = JobList([j for j in jl.jobs if j not in bad], list(jl.errors), jl.source)
    plan = Planner(tiers).plan(jl, single_tier_alternatives=False)
    report = RunReport(plan, models="tiny" if tiny else "files")
    report.errors += plan.errors + [f"job {j.id!r}: fleet run does not run S2V-14B jobs (they need an audio "
                                    "input); plan them with fleet plan" for j in bad]
    out = Path(out_dir)
    manifest = Manifest(out)
    queues = _tasks(plan, jl.jobs, out, tiny)
    emit = on_event or (lambda ev: None)
    # finished earlier: in the manifest, or written by a worker after the driver died (its sidecar)
    for t, q in queues.items():
        keep = deque()
        for task in q:
            job, vid = task["job"], task["video"]
            if manifest.is_done(vid, job.digest()):
                report.skipped.append(vid)
                continue
            side = manifest.sidecar(vid)
            if side is not None and side.get("digest") == job.digest():
                entry = {**side, "status": "done", "adopted": True}
                manifest.append(entry)
                report.results.append(entry)
                continue
            keep.append(task)
        queues[t] = keep
    total = sum(len(q) for q in queues.values())
    if total == 0:
        return report
    if tiny:
        from .worker import tiny_model_files

        for v in {task["job"].workload.variant for q in queues.values() for task in q}:
            tiny_model_files(v)   # generate once here, not in every worker at the same time
    started = connect([t for t in tiers if t.name in queues], address=address, slots=slots, worker_cpus=worker_cpus)
    bar = _Bar(total, progress)
    t0 = time.perf_counter()
    report.started = time.time()
    try:
        res = ray.cluster_resources()
        use_gpu = device != "cpu" and res.get("GPU", 0) >= 1
        actor_cls = ray.remote(VideoWorker)
        by_name = {t.name: t for t in tiers}
        slots_of: dict[str, list[_Slot]] = {}

        capacity = tier_capacity(tiers, res, ray.nodes())

        def new_slot(tname: str) -> _Slot:
            units, where = capacity[tname]
            h = actor_cls.options(num_cpus=worker_cpus, num_gpus=1 if use_gpu else 0, max_restarts=0, **where).remote(
                tname, "cuda" if use_gpu else "cpu", int(worker_cpus) or 1)
            return _Slot(tname, h)

        for tname, q in list(queues.items()):
            units = capacity.get(tname, (0, {}))[0]
            if units < 1:
                r = by_name[tname].resource
                for task in q:
                    report.failed.append((task["video"], f"the cluster has no GPUs of tier {tname!r} (no Ray resource "
                                          f"'{r}' and no node labelled {LABEL}={tname}): start its nodes with ray start "
                                          f"--resources '{{\"{r}\": <GPUs>}}' or --labels '{{\"{LABEL}\": \"{tname}\"}}'"))
                del queues[tname]
                continue
            limit = by_name[tname].gpu_limit
            n = min(units, len(q), limit if limit else units)
            slots_of[tname] = [new_slot(tname) for _ in range(n)]
            report.workers[tname] = n
        for tname, ss in slots_of.items():
            try:
                report.devices[tname] = ray.get(ss[0].handle.info.remote(), timeout=300)["device"]
            except Exception:  # the device name is only for the report
                pass
        inflight: dict[Any, tuple[_Slot, dict]] = {}
        done_n = 0

        def dispatch() -> None:
            for tname, ss in slots_of.items():
                q = queues.get(tname)
                for s in ss:
                    if not q or any(sl is s for sl, _ in inflight.values()):
                        continue
                    pick = next((i for i, task in enumerate(q) if task["job"].model_key == s.key), 0)
                    task = q[pick]
                    del q[pick]
                    s.key = task["job"].model_key
                    ref = s.handle.run.remote(task)
                    inflight[ref] = (s, task)
                    emit({"event": "dispatched", "video": task["video"], "tier": tname, "attempt": task["attempt"],
                          "running_file": str(Path(task["running_dir"]) / f"{task['video']}.{task['attempt']}")})

        dispatch()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                s, task = inflight.pop(ref)
                try:
                    r = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as e:
                    # the worker died: its video goes back to the front of the queue, a new worker replaces it
                    ray.kill(s.handle, no_restart=True)
                    idx = slots_of[s.tier].index(s)
                    slots_of[s.tier][idx] = new_slot(s.tier)
                    if task["attempt"] >= max_attempts:
                        report.failed.append((task["video"], f"its worker died {task['attempt']} times "
                                                             f"({type(e).__name__})"))
                        emit({"event": "failed", "video": task["video"], "tier": s.tier})
                    else:
                        report.retries += 1
                        queues[s.tier].appendleft({**task, "attempt": task["attempt"] + 1})
                        emit({"event": "retry", "video": task["video"], "tier": s.tier, "attempt": task["attempt"] + 1,
                              "why": type(e).__name__})
                except RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    msg = str(cause) if isinstance(cause, WanMeterError) else f"{type(cause or e).__name__}: {cause or e}"
                    report.failed.append((task["video"], msg))
                    emit({"event": "failed", "video": task["video"], "tier": s.tier, "error": msg})
                else:
                    entry = {**r, "status": "done"}
                    manifest.append(entry)
                    report.results.append(entry)
                    done_n += 1
                    emit({"event": "done", **entry})
                bar.show(done_n, report.retries, len(report.failed))
            dispatch()
        bar.show(done_n, report.retries, len(report.failed), end=True)
    finally:
        report.wall_s = time.perf_counter() - t0
        for ss in (slots_of if "slots_of" in locals() else {}).values():
            for s in ss:   # free the tier's resources for the next run on a shared cluster
                ray.kill(s.handle, no_restart=True)
        if started and shutdown:
            ray.shutdown()
    atomic_write_text(out / "fleet-report.json", json.dumps(report.to_dict(), indent=1))
    return report
