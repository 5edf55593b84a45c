"""The attention-kernel registry (data/attention.json): every name a user, a workflow or another
runtime may give, the kernel it means, what that kernel needs, and where its speed is calibrated.

Why one registry: the loader node's combo, the runtime's dispatch, the estimator's rate and the
planner's mapping used to keep six tables of names that drifted. Adding a kernel is one entry in
the JSON plus the code that is genuinely new (its processor, its calibration measurement).
Pure Python: the estimator and the CLI import it without torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import WanMeterError

_PATH = Path(__file__).resolve().parent / "data" / "attention.json"


@dataclass(frozen=True)
class Kernel:
    name: str
    calibration: str            # key in calibration.json and Plan.attention's vocabulary
    diffusers: str | None       # diffusers dispatcher backend; None = decided at run time
    cuda_only: bool = False
    package: str | None = None  # must be importable
    needs_fp8: bool = False     # fp8 tensor cores (Ada sm89, Hopper sm90+)
    node: bool = False          # offered in the loader node's combo
    doc: str = ""


@lru_cache(maxsize=None)
def _data() -> tuple[dict[str, Kernel], dict[str, str]]:
    with open(_PATH, encoding="utf-8") as f:
        raw = json.load(f)
    kernels = {k["name"]: Kernel(**k) for k in raw["kernels"]}
    aliases = {str(a).lower(): t for a, t in raw.get("aliases", {}).items()}
    bad = [t for t in aliases.values() if t not in kernels]
    if bad:
        raise WanMeterError(f"{_PATH.name}: aliases point at unknown kernels {bad}.")
    return kernels, aliases


def kernels() -> dict[str, Kernel]:
    """name -> Kernel, in registry order."""
    return dict(_data()[0])


def kernel(name: str) -> Kernel:
    """The kernel for a name or alias (case-insensitive); WanMeterError listing the choices."""
    ks, aliases = _data()
    key = str(name).strip().lower()
    key = aliases.get(key, key)
    if key not in ks:
        raise WanMeterError(f"attention={name!r} is not a known kernel. Use one of: {', '.join(node_choices())} "
                            f"(also accepted: {', '.join(n for n in ks if n not in node_choices())}).")
    return ks[key]


def node_choices() -> list[str]:
    """The loader node's attention combo, in registry order."""
    return [k.name for k in _data()[0].values() if k.node]


def calibration_keys() -> tuple[str, ...]:
    """Plan.attention's vocabulary (each kernel's calibration key, once)."""
    return tuple(dict.fromkeys(k.calibration for k in _data()[0].values()))


def calibration_key(name: str) -> str:
    """The calibration key (Plan.attention) of any kernel name or alias; keys map to themselves."""
    if name in calibration_keys():
        return name
    return kernel(name).calibration


def runtime_name(calibration: str) -> str:
    """The kernel a Plan with this calibration key runs: the first registry entry with that key."""
    for k in _data()[0].values():
        if k.calibration == calibration:
            return k.name
    raise WanMeterError(f"No attention kernel has calibration key {calibration!r}; use one of {calibration_keys()}.")


def all_names() -> list[str]:
    """Every accepted spelling (names and aliases), for validation messages and the CLI's help."""
    ks, aliases = _data()
    return list(ks) + [a for a in aliases if a not in ks]
