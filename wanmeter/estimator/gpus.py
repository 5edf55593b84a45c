"""The GPU table: specs and prices, bundled in data/gpus.json, optionally merged with a user's file.

Why a user file: prices move weekly and new GPUs appear; users must be able to set their own
without editing the pack. The user file (path in WANMETER_GPUS or --gpus) has the bundled
file's shape; each entry is merged field by field over the bundled one (or added).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import WanMeterError

DATA = Path(__file__).resolve().parents[1] / "data" / "gpus.json"
_REQUIRED = ("name", "arch", "vram_gb", "mem_bw_gbps", "bf16_tflops", "host_link_gbps")
ARCHS = ("ampere", "ada", "hopper", "blackwell", "cdna3")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model: what the estimator needs to turn bytes and FLOPs into seconds and dollars."""

    key: str
    name: str
    arch: str
    vram_gb: float
    usable_gib: float
    mem_bw_gbps: float
    bf16_tflops: float
    fp8_tflops: float | None
    achieved_bf16_tflops: float | None
    host_link_gbps: float
    interconnect_gbps: float
    on_demand_per_hour: float | None = None
    spot_per_hour: float | None = None
    reserved_per_hour: float | None = None
    price_source: str = ""
    price_date: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    measured: bool = False          # WanMeter's runs were made on this GPU (else: datasheet x assumed efficiencies)

    @property
    def peak_bf16_tflops(self) -> float:
        """The fastest bf16 rate published or measured (boost clocks beat some datasheets)."""
        return max(self.bf16_tflops, self.achieved_bf16_tflops or 0.0)

    @property
    def has_fp8(self) -> bool:
        return bool(self.fp8_tflops)

    def with_price(self, on_demand: float | None = None, spot: float | None = None,
                   reserved: float | None = None) -> "GpuSpec":
        """A copy with the user's prices ($/GPU-hour) where given."""
        return replace(self,
                       on_demand_per_hour=self.on_demand_per_hour if on_demand is None else float(on_demand),
                       spot_per_hour=self.spot_per_hour if spot is None else float(spot),
                       reserved_per_hour=self.reserved_per_hour if reserved is None else float(reserved),
                       price_source=self.price_source if on_demand is None else "user")


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise WanMeterError(f"GPU file {path} does not exist. Fix the path in WANMETER_GPUS / --gpus.") from None
    except json.JSONDecodeError as e:
        raise WanMeterError(f"GPU file {path} is not valid JSON ({e}). Fix it or remove WANMETER_GPUS / --gpus.") from None
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), dict):
        raise WanMeterError(f'GPU file {path} must be a JSON object with a "gpus" object (same shape as wanmeter/data/gpus.json).')
    return data


def _spec(key: str, d: dict[str, Any], reserved_discount: float) -> GpuSpec:
    missing = [k for k in _REQUIRED if d.get(k) in (None, "")]
    if missing:
        raise WanMeterError(f"GPU {key!r} lacks {', '.join(missing)}. Add them to your GPU file (see wanmeter/data/gpus.json).")
    if d["arch"] not in ARCHS:
        raise WanMeterError(f"GPU {key!r} has arch {d['arch']!r}; use one of {', '.join(ARCHS)}.")
    for k in ("vram_gb", "mem_bw_gbps", "bf16_tflops", "host_link_gbps"):
        if not isinstance(d[k], (int, float)) or d[k] <= 0:
            raise WanMeterError(f"GPU {key!r}: {k} must be a positive number, got {d[k]!r}.")
    od = d.get("on_demand_per_hour")
    reserved = d.get("reserved_per_hour")
    if reserved is None and od is not None:
        reserved = round(float(od) * reserved_discount, 4)
    return GpuSpec(
        key=key, name=str(d["name"]), arch=str(d["arch"]), vram_gb=float(d["vram_gb"]),
        usable_gib=float(d.get("usable_gib") or d["vram_gb"] * 0.985),
        mem_bw_gbps=float(d["mem_bw_gbps"]), bf16_tflops=float(d["bf16_tflops"]),
        fp8_tflops=float(d["fp8_tflops"]) if d.get("fp8_tflops") else None,
        achieved_bf16_tflops=float(d["achieved_bf16_tflops"]) if d.get("achieved_bf16_tflops") else None,
        host_link_gbps=float(d["host_link_gbps"]),
        interconnect_gbps=float(d.get("interconnect_gbps") or d["host_link_gbps"]),
        on_demand_per_hour=None if od is None else float(od),
        spot_per_hour=None if d.get("spot_per_hour") is None else float(d["spot_per_hour"]),
        reserved_per_hour=None if reserved is None else float(reserved),
        price_source=str(d.get("price_source", "")), price_date=d.get("price_date"),
        aliases=tuple(str(a) for a in d.get("aliases", ())), measured=d.get("measured") is True,
    )


# (bundled file's (path, size, mtime_ns), user file's or None) -> the merged table. The estimate
# route asks for the table dozens of times per request; a stat per file is all a hit costs.
_CACHE: dict[tuple, dict[str, GpuSpec]] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), -1, -1)  # missing: not cached as a table; _read raises the fix-naming error
    return (str(path), st.st_size, st.st_mtime_ns)


def load_gpus(user_path: str | os.PathLike | None = None) -> dict[str, GpuSpec]:
    """The bundled table merged with the user's file (argument, else env WANMETER_GPUS).

    Cached on each file's (path, size, mtime): an edited file is re-read on the next call. The
    returned dict is the caller's own (the GpuSpecs are frozen)."""
    user = user_path or os.environ.get("WANMETER_GPUS")
    key = (_file_key(DATA), _file_key(Path(user)) if user else None)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _load_gpus(user)
        if all(k is None or k[1] >= 0 for k in key):
            if len(_CACHE) > 16:
                _CACHE.clear()
            _CACHE[key] = hit
    return dict(hit)


def _load_gpus(user: str | os.PathLike | None) -> dict[str, GpuSpec]:
    base = _read(DATA)
    entries = {k: dict(v) for k, v in base["gpus"].items()}
    discount = float(base.get("reserved_discount", {}).get("value", 0.65))
    if user:
        extra = _read(Path(user))
        for k, v in extra["gpus"].items():
            if not isinstance(v, dict):
                raise WanMeterError(f"GPU {k!r} in {user} must be an object of fields.")
            entries[k] = {**entries.get(k, {}), **v}
    return {k: _spec(k, v, discount) for k, v in entries.items()}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower().replace("nvidia", "").replace("geforce", ""))


def detect_gpu_name(name: str, gpus: dict[str, GpuSpec] | None = None) -> str | None:
    """Table key for a device name such as torch.cuda.get_device_name() returns, or None.

    Exact alias match first (case-insensitive), then the longest alias contained in the name,
    so "NVIDIA H100 80GB HBM3" -> h100_sxm and "NVIDIA H100 PCIe" -> h100_pcie.
    """
    gpus = gpus if gpus is not None else load_gpus()
    n = _norm(name or "")
    if not n:
        return None
    best: tuple[int, str] | None = None
    for key, g in gpus.items():
        for alias in (key, g.name, *g.aliases):
            a = _norm(alias)
            if not a:
                continue
            if a == n:
                return key
            if a in n and (best is None or len(a) > best[0]):
                best = (len(a), key)
    return best[1] if best else None


def get_gpu(name: str, gpus: dict[str, GpuSpec] | None = None) -> GpuSpec:
    """A GPU by key, name or alias; a WanMeterError listing the known keys otherwise."""
    gpus = gpus if gpus is not None else load_gpus()
    if name in gpus:
        return gpus[name]
    key = detect_gpu_name(name, gpus)
    if key is None:
        raise WanMeterError(f"Unknown GPU {name!r}. Use one of: {', '.join(gpus)} "
                            "(or add it to a GPU file named by WANMETER_GPUS / --gpus).")
    return gpus[key]
