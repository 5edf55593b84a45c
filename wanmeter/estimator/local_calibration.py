"""Estimates that hold on the user's own GPU: after each run, keep the measured time per step and peak VRAM
beside the estimate in a small local JSON file (the node keeps it in ComfyUI's user directory); later
estimates on that GPU model are scaled by the measured / estimated ratios of its recent runs.

The correction is one factor for time and one for peak VRAM per GPU model (and runtime, when that runtime
has runs there): the geometric mean of the last runs' ratios. One run is enough to correct a wrong GPU
entry (e.g. a datasheet rate the card never reaches); more runs average out run-to-run noise.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import WanMeterError
from .estimate import Estimate
from .workload import Plan, Workload

VERSION = 1
MAX_RUNS = 200          # kept in the file (oldest dropped)
RECENT = 20             # used for a correction
RATIO_RANGE = (0.1, 10.0)  # a measurement outside this range of the estimate is rejected as not the same run
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Correction:
    time_factor: float = 1.0
    vram_factor: float = 1.0
    runs: int = 0
    scope: str = ""

    @property
    def text(self) -> str:
        if not self.runs:
            return ""
        return (f"calibrated on this GPU: {self.runs} run{'s' if self.runs != 1 else ''}{self.scope} "
                f"(time x{self.time_factor:.2f}, peak VRAM x{self.vram_factor:.2f})")


def steps_of(w: Workload) -> int:
    return max(1, w.steps * (w.s2v_clips if w.variant == "s2v_14b" else 1))


def _read(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            return {"version": VERSION, "runs": []}
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {"version": VERSION, "runs": []}   # missing or damaged: start again (it is only a cache of runs)
    if not isinstance(d, dict) or not isinstance(d.get("runs"), list):
        return {"version": VERSION, "runs": []}
    return d


def _write(path: str | os.PathLike, d: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(p.parent), prefix=".wanmeter_cal_", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(d, f, indent=1)
        os.replace(tmp, p)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WanMeterError(f"Cannot write the local calibration file {p} ({e}): check the folder's permissions.") from None


def record(path: str | os.PathLike, gpu_key: str, workload: Workload, plan: Plan, estimate: Estimate,
           measured: dict[str, float]) -> dict[str, Any]:
    """Keep one run: measured {"s_per_step": seconds per denoising step, "peak_vram_gib": peak} beside the
    estimate's. Returns the stored entry. Estimates must be uncorrected (from estimate())."""
    est_step = estimate.denoise_s / steps_of(workload)
    entry: dict[str, Any] = {
        "gpu": str(gpu_key), "runtime": plan.runtime, "variant": workload.variant,
        "size": [workload.width, workload.height, workload.frames], "steps": workload.steps,
        "plan": plan.describe(), "time": round(time.time(), 1),
        "est_s_per_step": round(est_step, 5), "est_peak_vram_gib": round(estimate.vram_peak_gib, 4),
    }
    for k, est in (("s_per_step", est_step), ("peak_vram_gib", estimate.vram_peak_gib)):
        v = measured.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise WanMeterError(f"measured {k}={v!r} must be a positive number.")
        if not RATIO_RANGE[0] <= v / est <= RATIO_RANGE[1]:
            raise WanMeterError(f"measured {k}={v:g} is {v / est:.2f}x the estimate ({est:g}): not recorded "
                                "(a different run or a unit mistake).")
        entry[f"meas_{k}"] = round(float(v), 5)
    d = _read(path)
    d["version"] = VERSION
    d["runs"] = (d["runs"] + [entry])[-MAX_RUNS:]
    _write(path, d)
    return entry


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else 1.0


def correction(path: str | os.PathLike | None, gpu_key: str, runtime: str | None = None) -> Correction:
    """Factors from the last runs on `gpu_key` (same runtime when it has runs there, else any runtime)."""
    if not path:
        return Correction()
    runs = [r for r in _read(path)["runs"] if isinstance(r, dict) and r.get("gpu") == gpu_key]
    scope = ""
    if runtime is not None and any(r.get("runtime") == runtime for r in runs):
        runs = [r for r in runs if r.get("runtime") == runtime]
        scope = "" if runtime == "wanmeter" else f" of {runtime}"
    runs = runs[-RECENT:]

    def ratios(k: str) -> list[float]:
        out = []
        for r in runs:
            m, e = r.get(f"meas_{k}"), r.get(f"est_{k}")
            if isinstance(m, (int, float)) and isinstance(e, (int, float)) and m > 0 and e > 0:
                out.append(m / e)
        return out

    t, v = ratios("s_per_step"), ratios("peak_vram_gib")
    n = max(len(t), len(v))
    return Correction(_geomean(t), _geomean(v), n, scope) if n else Correction()


def corrected(e: Estimate, c: Correction) -> Estimate:
    """The estimate scaled by a Correction: denoising time and the VRAM peak; notes say so."""
    if not c.runs:
        return e
    from .calibration import load_calibration

    reserve = float(load_calibration().v("overhead.vram_reserve_gib"))
    peak = e.vram_peak_gib * c.vram_factor
    return replace(e, denoise_s=e.denoise_s * c.time_factor, vram_peak_gib=peak,
                   denoise_parts={k: v * c.time_factor for k, v in e.denoise_parts.items()},
                   fits=peak <= e.vram_limit_gib - reserve, notes=[c.text] + list(e.notes))


__all__ = ["Correction", "record", "correction", "corrected", "steps_of"]
