"""GPU tiers on offer: which GPU, its prices, how it is billed, how many there may be.

A tiers file is JSON, {"tiers": [...]} or a list, each tier:
    {"name": "draft", "gpu": "rtx6000ada", "on_demand": 1.91, "spot": 0.9, "reserved": 1.2,
     "spot_interruption_rate": 0.05, "billing": "auto", "gpus": null, "max_gpus": 8,
     "hours_per_week": null, "vram_gib": null, "ram_gib": 64}
gpu: a key or name of the GPU table (python -m wanmeter gpus); prices ($/GPU-hour) default to the
table's. billing: "on_demand" / "spot" / "reserved" / "auto" (the cheapest of the three for the work
routed to the tier). reserved = billed every hour of the month (730 h), busy or not.
spot_interruption_rate: reclaims per GPU-hour; each costs the video in flight (half a video on
average) and a model reload. gpus: a fixed number (e.g. one resident card); max_gpus: an upper bound.
hours_per_week: the tier is switched on only this long (a schedule): each GPU is billed and
available 730/168 x that many hours a month. On a Ray cluster the tier is the custom resource
"tier:<name>" (one unit per GPU of that tier on a node).

`--tiers rtx4090,h100_sxm` (GPU keys, comma-separated) makes one on-demand tier per GPU at table prices.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WanMeterError
from ..estimator import GpuSpec, Prices, get_gpu, load_gpus
from ..estimator.estimate import HOURS_PER_MONTH
from ..estimator.sizes import GIB

BILLING = ("auto", "on_demand", "spot", "reserved")
KEYS = ("name", "gpu", "on_demand", "spot", "reserved", "spot_interruption_rate", "billing", "gpus", "max_gpus",
        "hours_per_week", "vram_gib", "ram_gib")
WEEKS_PER_MONTH = HOURS_PER_MONTH / 168.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
RESOURCE_PREFIX = "tier:"


@dataclass(frozen=True)
class Tier:
    name: str
    gpu: GpuSpec
    prices: Prices
    billing: str = "auto"
    spot_interruption_rate: float = 0.0
    gpus: int | None = None
    max_gpus: int | None = None
    hours_per_week: float | None = None
    vram_gib: float | None = None
    ram_gib: float | None = None

    @property
    def resource(self) -> str:
        """The Ray custom resource that marks this tier's GPUs (one unit per GPU)."""
        return RESOURCE_PREFIX + self.name

    @property
    def hours_per_gpu(self) -> float:
        """Hours a month one GPU of this tier is on (and billed, unless it stops when idle)."""
        return HOURS_PER_MONTH if self.hours_per_week is None else self.hours_per_week * WEEKS_PER_MONTH

    @property
    def gpu_limit(self) -> int | None:
        return self.gpus if self.gpus is not None else self.max_gpus

    @property
    def vram_bytes(self) -> float:
        return (self.vram_gib if self.vram_gib is not None else self.gpu.usable_gib) * GIB

    @property
    def ram_bytes(self) -> float | None:
        return None if self.ram_gib is None else self.ram_gib * GIB

    def options(self) -> list[str]:
        """The billings this tier can use (those with a price)."""
        allowed = [self.billing] if self.billing != "auto" else ["on_demand", "spot", "reserved"]
        return [b for b in allowed if getattr(self.prices, b) is not None]

    def routing_price(self) -> float:
        """$/GPU-hour used to compare tiers when routing a job: the price of the tier's billing
        (auto: on-demand, else spot, else reserved)."""
        opts = self.options()
        order = [b for b in ("on_demand", "spot", "reserved") if b in opts]
        return float(getattr(self.prices, order[0]))

    def describe(self) -> str:
        p = ", ".join(f"{k.replace('_', '-')} ${getattr(self.prices, k):.2f}/h" for k in ("on_demand", "spot", "reserved")
                      if getattr(self.prices, k) is not None)
        return f"{self.name} ({self.gpu.name}, {p}; billing {self.billing})"


def _num(d: dict, k: str, *, integer: bool = False, lo: float = 0.0, name: str = "") -> Any:
    v = d.get(k)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or (integer and int(v) != v):
        kind = "a whole number" if integer else "a number"
        raise WanMeterError(f"tier {name!r}: {k} must be {kind} >= {lo:g}, got {v!r}.")
    return int(v) if integer else float(v)


def tier_from_dict(d: Any, gpus: dict[str, GpuSpec] | None = None) -> Tier:
    if not isinstance(d, dict):
        raise WanMeterError(f"a tier must be a JSON object, got {type(d).__name__}.")
    name = str(d.get("name") or d.get("gpu") or "")
    if not _NAME.match(name):
        raise WanMeterError(f"tier name {name!r}: use letters, digits, '_', '.', '-' (at most 40, no spaces).")
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        raise WanMeterError(f"tier {name!r}: unknown key(s) {', '.join(unknown)}; a tier has: {', '.join(KEYS)}.")
    if not d.get("gpu"):
        raise WanMeterError(f"tier {name!r} names no gpu: add \"gpu\": a key of `python -m wanmeter gpus`.")
    gpu = get_gpu(str(d["gpu"]), gpus)
    explicit = {k: _num(d, k, name=name) for k in ("on_demand", "spot", "reserved")}
    if any(v is not None for v in explicit.values()):
        # prices given: the tier is offered at exactly those (no table price fills a billing left out)
        prices = Prices(**explicit)
    else:
        prices = Prices.of(gpu)
    billing = str(d.get("billing", "auto"))
    if billing not in BILLING:
        raise WanMeterError(f"tier {name!r}: billing {billing!r}; use one of {', '.join(BILLING)}.")
    t = Tier(name=name, gpu=gpu, prices=prices, billing=billing,
             spot_interruption_rate=_num(d, "spot_interruption_rate", name=name) or 0.0,
             gpus=_num(d, "gpus", integer=True, lo=1, name=name), max_gpus=_num(d, "max_gpus", integer=True, lo=1, name=name),
             hours_per_week=_num(d, "hours_per_week", name=name), vram_gib=_num(d, "vram_gib", name=name),
             ram_gib=_num(d, "ram_gib", name=name))
    if t.hours_per_week is not None and not 0 < t.hours_per_week <= 168:
        raise WanMeterError(f"tier {name!r}: hours_per_week must be in (0, 168].")
    if t.hours_per_week is not None and billing == "reserved":
        raise WanMeterError(f"tier {name!r}: a reserved GPU is billed all month; hours_per_week applies to "
                            "on_demand or spot billing.")
    if not t.options():
        have = [k for k in ("on_demand", "spot", "reserved") if getattr(prices, k) is not None]
        raise WanMeterError(f"tier {name!r} has no {billing.replace('_', '-')} price" + (
            f" (it has {', '.join(have)})" if have else "") + ": set \"on_demand\", \"spot\" or \"reserved\" in $/GPU-hour.")
    return t


def load_tiers(spec: str | Path | list | dict, gpus: dict[str, GpuSpec] | None = None) -> list[Tier]:
    """Tiers from a JSON file, a parsed JSON value, or 'rtx4090,h100_sxm' (GPU keys at table prices)."""
    gpus = gpus if gpus is not None else load_gpus()
    data: Any = spec
    if isinstance(spec, (str, Path)):
        p = Path(str(spec))
        if p.exists() or str(spec).endswith(".json"):
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except OSError as e:
                raise WanMeterError(f"cannot read the tiers file {p} ({e.strerror}).") from None
            except json.JSONDecodeError as e:
                raise WanMeterError(f"the tiers file {p} is not valid JSON ({e}).") from None
        else:
            data = [{"name": k.strip(), "gpu": k.strip(), "billing": "on_demand"} for k in str(spec).split(",") if k.strip()]
    if isinstance(data, dict):
        data = data.get("tiers")
    if not isinstance(data, list) or not data:
        raise WanMeterError('tiers: give a JSON list of tiers (or {"tiers": [...]}) or GPU keys such as '
                            '"rtx4090,h100_sxm".')
    tiers = [tier_from_dict(d, gpus) for d in data]
    names = [t.name for t in tiers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise WanMeterError(f"tier name(s) {', '.join(dup)} used twice: each tier needs its own name.")
    return tiers
