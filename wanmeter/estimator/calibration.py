"""Calibration constants (efficiencies, memory factors), each with its source, from data/calibration.json.

Why a separate file: the formulas stay fixed while the constants get re-measured on new
hardware (bench/calibrate.py writes a file of the same shape; WANMETER_CALIBRATION points at it).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import WanMeterError

DATA = Path(__file__).resolve().parents[1] / "data" / "calibration.json"


class Calibration:
    """Dotted-path access to calibration values: cal.v("fp8.cast_bytes_per_weight")."""

    def __init__(self, data: dict[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path
        self._values: dict[str, Any] = {}   # dotted path -> value (the estimator reads ~30 per estimate)

    def node(self, dotted: str) -> Any:
        cur: Any = self.data
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise WanMeterError(f"Calibration file {self.path or DATA} lacks {dotted!r}; "
                                    "regenerate it with bench/calibrate.py or unset WANMETER_CALIBRATION.")
            cur = cur[part]
        return cur

    def v(self, dotted: str) -> Any:
        """The value at a dotted path (entries are {"value", "source"} or plain numbers)."""
        try:
            return self._values[dotted]
        except KeyError:
            pass
        n = self.node(dotted)
        v = n["value"] if isinstance(n, dict) and "value" in n else n
        if not isinstance(v, (dict, list)):  # containers are returned live, as before
            self._values[dotted] = v
        return v

    def source(self, dotted: str) -> str:
        n = self.node(dotted)
        return str(n.get("source", "")) if isinstance(n, dict) else ""


@lru_cache(maxsize=8)
def _load(path: str) -> Calibration:
    try:
        with open(path, encoding="utf-8") as f:
            return Calibration(json.load(f), path)
    except (OSError, json.JSONDecodeError) as e:
        raise WanMeterError(f"Cannot read calibration file {path} ({e}). Fix or unset WANMETER_CALIBRATION.") from None


def load_calibration(path: str | os.PathLike | None = None) -> Calibration:
    """The bundled calibration, or the file named by the argument / WANMETER_CALIBRATION."""
    return _load(str(path or os.environ.get("WANMETER_CALIBRATION") or DATA))
