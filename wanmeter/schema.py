"""The one declaration of every WanMeter node input (data/node_schema.json).

Why: a widget's default, range, tooltip and unit used to be written in the node class, again in
the web extension's default table and again in the estimator's settings reader; they drifted.
Now each input is declared once. Who reads it:
- nodes/ build their INPUT_TYPES from it (`input_types`),
- the graph reader names positional UI widget values with it (`widget_names`),
- the estimator maps widgets to its settings vocabulary through `setting` (`settings_of`),
- the CLI makes one flag per setting (wanmeter.estimator.cli_estimate).
Pure Python: no torch, no ComfyUI.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .errors import WanMeterError

_PATH = Path(__file__).resolve().parent / "data" / "node_schema.json"
# keys of an input entry that are not ComfyUI widget options
_META = {"name", "type", "choices", "choices_from", "optional", "setting", "unit"}
LINK_TYPES_PREFIX = ("WANMETER_",)
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")


@lru_cache(maxsize=None)
def _schema() -> dict[str, Any]:
    with open(_PATH, encoding="utf-8") as f:
        return json.load(f)


def node_types() -> list[str]:
    return list(_schema()["nodes"])


def node(node_type: str) -> dict[str, Any]:
    try:
        return _schema()["nodes"][node_type]
    except KeyError:
        raise WanMeterError(f"{node_type!r} is not a WanMeter node type.") from None


def display_name(node_type: str) -> str:
    return node(node_type)["display_name"]


def inputs(node_type: str) -> list[dict[str, Any]]:
    return list(node(node_type)["inputs"])


def is_widget(entry: dict[str, Any]) -> bool:
    return entry["type"] in WIDGET_TYPES


def widget_names(node_type: str) -> list[str]:
    """Widget inputs in the order ComfyUI saves their values (required, then optional); a seed
    widget is followed by its control_after_generate value in saved workflows."""
    return [e["name"] for e in inputs(node_type) if is_widget(e)]


def widget(node_type: str, name: str) -> dict[str, Any]:
    for e in inputs(node_type):
        if e["name"] == name:
            return e
    raise WanMeterError(f"{node_type} has no input {name!r}.")


def default(node_type: str, name: str) -> Any:
    return widget(node_type, name).get("default")


def settings_of(node_type: str) -> dict[str, str]:
    """widget name -> settings key, for the widgets that change the estimate."""
    return {e["name"]: e["setting"] for e in inputs(node_type) if e.get("setting")}


def setting_sources() -> dict[str, list[tuple[str, str]]]:
    """settings key -> [(node type, widget name)] that feed it."""
    out: dict[str, list[tuple[str, str]]] = {}
    for t in node_types():
        for w, s in settings_of(t).items():
            out.setdefault(s, []).append((t, w))
    return out


def input_types(node_type: str, choices: Callable[[str], list[str]] | None = None) -> dict[str, Any]:
    """ComfyUI V1 INPUT_TYPES for a node. `choices(source)` lists dynamic combos (model folders,
    the GPU table, the attention registry); it is the node pack's (it knows ComfyUI's folders)."""
    req: dict[str, Any] = {}
    opt: dict[str, Any] = {}
    for e in inputs(node_type):
        opts = {k: v for k, v in e.items() if k not in _META}
        if e["type"] == "COMBO":
            values = list(e["choices"]) if "choices" in e else (choices(e["choices_from"]) if choices else [])
            spec = (values, opts)
        else:
            spec = (e["type"], opts)
        (opt if e.get("optional") else req)[e["name"]] = spec
    out: dict[str, Any] = {"required": req}
    if opt:
        out["optional"] = opt
    if node(node_type).get("hidden"):
        out["hidden"] = dict(node(node_type)["hidden"])
    return out


def settings() -> dict[str, dict[str, Any]]:
    """The estimator's settings vocabulary: key -> {type, unit, min/max or choices, default, help}."""
    return dict(_schema()["settings"])
