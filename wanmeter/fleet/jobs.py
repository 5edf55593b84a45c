"""Video jobs for a fleet: a JSONL file (one job a line) or a monthly mix string.

JSONL, one object a line (blank lines and lines starting with # are skipped):
    {"id": "fox", "settings": {"variant": "ti2v_5b", "steps": 30}, "prompt": "a fox", "seed": 1,
     "count": 4, "deadline": "2h"}
    {"id": "hero", "workflow": "wf/i2v.json", "prompt": "...", "image": "hero.png", "tier": "h100"}
Keys: id (default "line<N>"), settings (Workload and Plan fields, flat) or workflow (a UI-format
workflow file, relative to the jobs file), prompt, negative_prompt, seed (video i gets seed + i),
count (videos; a multiple of the batch), deadline (seconds, or "90s" / "30m" / "2h", counted from the
start of the run), tier (pin the job to a tier), models ({"dit": [...], "text_encoder": ..., "vae": ...};
none = the tiny random models), image, source (the DiT file's precision for the memory plan).

A malformed line becomes a LineError with its line number; the other lines are still read.

Mix: "300 I2V-A14B 720p + 2000 TI2V-5B drafts": terms joined by "+", each COUNT VARIANT then
optional 480p/720p, "N steps", "Nf" (frames), "batch N", "on TIER"; other words only name the term.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import WanMeterError
from ..estimator import Plan, Workload, workload_from_ui_workflow
from ..variants import variant, variant_names

KEYS = ("id", "settings", "workflow", "prompt", "negative_prompt", "seed", "count", "deadline", "tier", "models",
        "image", "source")
WORKLOAD_KEYS = tuple(f.name for f in fields(Workload))
PLAN_KEYS = tuple(f.name for f in fields(Plan) if f.name not in ("budget_gib", "ram_gib"))
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$", re.I)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


@dataclass(frozen=True)
class Job:
    """One kind of video, made `count` times (video i with seed + i)."""

    id: str
    workload: Workload
    plan: Plan = field(default_factory=Plan)     # the user's other settings; plan_for picks memory
    source: str = "bf16"                         # precision of the DiT file(s)
    count: int = 1
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    deadline_s: float | None = None
    tier: str | None = None
    models: dict[str, Any] | None = None         # None: the tiny random models
    image: str | None = None
    line: int | None = None
    label: str = ""

    @property
    def runs(self) -> int:
        """Sampler runs: each makes `batch` videos."""
        return self.count // self.workload.batch

    @property
    def model_key(self) -> str:
        """What a worker must have loaded to run this job (jobs with equal keys run back to back)."""
        return json.dumps([self.workload.variant, self.models, self.plan.weight_dtype], sort_keys=True)

    def digest(self) -> str:
        """Hash of everything that decides the outputs (the manifest refuses a changed job's old videos)."""
        d = {"w": repr(self.workload), "p": repr(self.plan), "prompt": self.prompt, "neg": self.negative_prompt,
             "seed": self.seed, "models": self.models, "image": self.image}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def video_ids(self) -> list[str]:
        """One id per sampler run (its `batch` videos are written as <id>_<k>)."""
        return [f"{self.id}-{i:04d}" for i in range(self.runs)]

    def describe(self) -> str:
        w = self.workload
        return self.label or f"{w.facts['label']} {w.width}x{w.height} {w.frames}f {w.steps} steps"


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class JobList:
    jobs: list[Job]
    errors: list[LineError] = field(default_factory=list)
    source: str = ""     # the file or "mix"


def parse_duration(value: Any, what: str = "deadline") -> float:
    """Seconds from 90, "90s", "30m", "2h", "1d"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not m or float(m.group(1)) <= 0:
        raise WanMeterError(f"{what} {value!r} is not a duration: give seconds or e.g. \"90s\", \"30m\", \"2h\".")
    return float(m.group(1)) * _UNIT_S[(m.group(2) or "s").lower()]


def _split_settings(settings: dict[str, Any]) -> tuple[Workload, Plan]:
    unknown = sorted(set(settings) - set(WORKLOAD_KEYS) - set(PLAN_KEYS))
    if unknown:
        raise WanMeterError(f"unknown setting(s) {', '.join(unknown)}; settings are Workload fields "
                            f"({', '.join(WORKLOAD_KEYS)}) and Plan fields ({', '.join(PLAN_KEYS)}).")
    w = {k: v for k, v in settings.items() if k in WORKLOAD_KEYS}
    if isinstance(w.get("cfg"), list):
        w["cfg"] = tuple(w["cfg"])
    try:
        return Workload(**w), Plan(**{k: v for k, v in settings.items() if k in PLAN_KEYS})
    except TypeError as e:
        raise WanMeterError(f"bad settings ({e}).") from None


def job_from_dict(d: Any, *, line: int | None = None, base_dir: Path | None = None) -> Job:
    """A Job from one JSONL object (WanMeterError naming the problem)."""
    if not isinstance(d, dict):
        raise WanMeterError(f"a job must be a JSON object, got {type(d).__name__}.")
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        raise WanMeterError(f"unknown key(s) {', '.join(unknown)}; a job has: {', '.join(KEYS)}.")
    jid = str(d.get("id") or f"line{line or 0}")
    if not _ID.match(jid):
        raise WanMeterError(f"id {jid!r}: use letters, digits, '_', '.', '-' (at most 64, no spaces).")
    if "settings" in d and "workflow" in d:
        raise WanMeterError("give either settings or workflow, not both.")
    if "workflow" in d:
        path = Path(str(d["workflow"]))
        path = path if path.is_absolute() or base_dir is None else base_dir / path
        try:
            wf = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise WanMeterError(f"cannot read the workflow {path} ({e.strerror}).") from None
        except json.JSONDecodeError as e:
            raise WanMeterError(f"the workflow {path} is not valid JSON ({e}).") from None
        workload, plan, _ = workload_from_ui_workflow(wf)
    else:
        s = d.get("settings", {})
        if not isinstance(s, dict):
            raise WanMeterError("settings must be a JSON object of name: value.")
        workload, plan = _split_settings(s)
    count = d.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise WanMeterError(f"count must be a whole number >= 1, got {count!r}.")
    if count % workload.batch:
        raise WanMeterError(f"count {count} is not a multiple of batch {workload.batch}: each run makes "
                            f"{workload.batch} videos.")
    seed = d.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise WanMeterError(f"seed must be a whole number >= 0, got {seed!r}.")
    models = d.get("models")
    if models is not None:
        if not isinstance(models, dict) or not {"dit", "text_encoder", "vae"} <= set(models):
            raise WanMeterError('models must be {"dit": [files], "text_encoder": file, "vae": file}.')
        dit = models["dit"] if isinstance(models["dit"], list) else [models["dit"]]
        fix = (lambda p: str(p if Path(p).is_absolute() or base_dir is None else base_dir / p))
        models = {"dit": [fix(p) for p in dit], "text_encoder": fix(models["text_encoder"]), "vae": fix(models["vae"])}
    image = d.get("image")
    if image is not None and base_dir is not None and not Path(image).is_absolute():
        image = str(base_dir / image)
    for k in ("prompt", "negative_prompt", "tier", "source"):
        if k in d and not isinstance(d[k], str):
            raise WanMeterError(f"{k} must be a string.")
    return Job(id=jid, workload=workload, plan=plan, source=d.get("source", "bf16"), count=count,
               prompt=d.get("prompt", ""), negative_prompt=d.get("negative_prompt", ""), seed=seed,
               deadline_s=None if d.get("deadline") is None else parse_duration(d["deadline"]),
               tier=d.get("tier"), models=models, image=image, line=line)


def read_jobs(path: str | Path) -> JobList:
    """Jobs from a JSONL file; malformed lines are returned as errors with their line numbers."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise WanMeterError(f"cannot read the jobs file {p} ({e.strerror}): give a JSONL file, one job a line, "
                            "or a mix such as \"300 I2V-A14B 720p + 2000 TI2V-5B\".") from None
    return parse_jobs(text, base_dir=p.parent, source=str(p))


def parse_jobs(text: str, *, base_dir: Path | None = None, source: str = "jobs") -> JobList:
    jobs: list[Job] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            errors.append(LineError(n, f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        try:
            job = job_from_dict(d, line=n, base_dir=base_dir)
        except WanMeterError as e:
            errors.append(LineError(n, str(e)))
            continue
        if job.id in seen:
            errors.append(LineError(n, f"id {job.id!r} is already used on line {seen[job.id]}: ids must be unique"))
            continue
        seen[job.id] = n
        jobs.append(job)
    return JobList(jobs, errors, source)


def _variant_of(token: str) -> str | None:
    t = token.lower().replace("-", "_")
    return t if t in variant_names() else None


def _size_for(var: str, p: int) -> tuple[int, int]:
    sizes = [tuple(s) for s in variant(var)["sizes"]]
    for w, h in sizes:   # landscape first, as variants.json lists them
        if abs(min(w, h) - p) <= 32:
            return w, h
    raise WanMeterError(f"{variant(var)['label']} has no {p}p size; its sizes are "
                        f"{', '.join(f'{w}x{h}' for w, h in sizes)}.")


def parse_mix(text: str) -> JobList:
    """Jobs (counts per month) from '300 I2V-A14B 720p + 2000 TI2V-5B drafts' (see module doc)."""
    jobs: list[Job] = []
    for n, term in enumerate(t.strip() for t in text.split("+")):
        m = re.match(r"^(\d[\d,_]*)\s+(\S+)\s*(.*)$", term)
        var = _variant_of(m.group(2)) if m else None
        if not m or var is None:
            raise WanMeterError(f"mix term {term!r}: write COUNT VARIANT [480p|720p] [N steps] [Nf] [batch N] "
                                f"[on TIER], e.g. '300 I2V-A14B 720p'; variants: {', '.join(variant_names())}.")
        count = int(m.group(1).replace(",", "").replace("_", ""))
        rest = m.group(3)
        kw: dict[str, Any] = {"variant": var}
        tier = None
        words = []
        for tok in re.finditer(r"(\d+)p\b|(\d+)\s*steps?\b|(\d+)\s*f(?:rames)?\b|batch\s*(\d+)|on\s+(\S+)|(\S+)", rest, re.I):
            if tok.group(1):
                kw["width"], kw["height"] = _size_for(var, int(tok.group(1)))
            elif tok.group(2):
                kw["steps"] = int(tok.group(2))
            elif tok.group(3):
                kw["frames"] = int(tok.group(3))
            elif tok.group(4):
                kw["batch"] = int(tok.group(4))
            elif tok.group(5):
                tier = tok.group(5)
            else:
                words.append(tok.group(6))
        w = Workload(**kw)
        if count < 1 or count % w.batch:
            raise WanMeterError(f"mix term {term!r}: the count must be >= 1 and a multiple of the batch.")
        res = f"{min(w.width, w.height)}p"
        jid = f"{var}-{res}" + (f"-{words[0].lower()}" if words else "")
        if any(j.id == jid for j in jobs):
            jid += f"-{n}"
        label = f"{w.facts['label']} {w.width}x{w.height} {w.frames}f {w.steps} steps" + (
            f" ({' '.join(words)})" if words else "")
        jobs.append(Job(id=jid, workload=w, count=count, tier=tier, label=label, seed=n * 1_000_000))
    return JobList(jobs, [], "mix")


def load_jobs(spec: str | Path) -> JobList:
    """A JSONL file path, or a mix string when no such file exists and it reads as one."""
    p = Path(str(spec))
    if p.exists() or str(spec).endswith((".jsonl", ".json", ".txt")):
        return read_jobs(p)
    return parse_mix(str(spec))
