"""A workflow graph (UI format, as the browser and saved files have it, or an API prompt, as a
queued node sees it) -> one settings dict per sampler chain of WanMeter nodes.

Why here and only here: the graph used to be read three times (the web extension, the node
adapter, the CLI) with three default tables. Widget names and the settings each widget feeds
come from data/node_schema.json; defaults from its "settings". Pure Python, bounded work
(untrusted input from the browser).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import schema
from ..errors import WanMeterError

MAX_NODES = 5000
SEED_CONTROL = ("fixed", "increment", "decrement", "randomize")
MUTED, BYPASSED = 2, 4
SAMPLERS = ("WanMeterSampler", "WanMeterS2VSampler")
LOADER = "WanMeterModelLoader"
LORA = "WanMeterLoRA"


@dataclass
class Node:
    id: str
    type: str
    mode: int = 0
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)   # input name -> source node id

    @property
    def active(self) -> bool:
        return self.mode not in (MUTED, BYPASSED)


def named_widgets(node_type: str, values: Any) -> dict[str, Any]:
    """Positional widgets_values (or a dict, as some frontends save) -> {widget name: value}."""
    try:
        names = schema.widget_names(node_type)
    except WanMeterError:
        return {}
    if isinstance(values, dict):
        return {k: values[k] for k in names if k in values}
    vals = list(values) if isinstance(values, list) else []
    out, i = {}, 0
    for name in names:
        if i >= len(vals):
            break
        out[name] = vals[i]
        i += 1
        if name == "seed" and i < len(vals) and vals[i] in SEED_CONTROL:
            i += 1
    return out


def read_nodes(data: Any) -> dict[str, Node]:
    """UI workflow ({nodes, links}) or API prompt ({id: {class_type, inputs}}) -> {id: Node}."""
    if not isinstance(data, dict):
        raise WanMeterError("A workflow must be a JSON object (a saved UI workflow or an API prompt).")
    if isinstance(data.get("nodes"), list):
        return _read_ui(data)
    nodes = {str(k): v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("class_type"), str)}
    if not data:
        raise WanMeterError("The workflow is empty: nothing to estimate.")
    if not nodes:
        raise WanMeterError("Not a workflow: no 'nodes' list (UI format) and no {id: {class_type, inputs}} entries "
                            "(API format). Save it from ComfyUI with Workflow > Save.")
    if len(nodes) > MAX_NODES:
        raise WanMeterError(f"The workflow has {len(nodes)} nodes; at most {MAX_NODES} are read.")
    out = {}
    for k, v in nodes.items():
        ins = v.get("inputs") if isinstance(v.get("inputs"), dict) else {}
        widgets = {n: x for n, x in ins.items() if not isinstance(x, list)}
        links = {n: str(x[0]) for n, x in ins.items() if isinstance(x, list) and x}
        out[k] = Node(k, v["class_type"], int(v.get("mode", 0) or 0) if isinstance(v.get("mode"), int) else 0,
                      widgets, links)
    return out


def _read_ui(data: dict[str, Any]) -> dict[str, Node]:
    raw = [n for n in data["nodes"] if isinstance(n, dict)]
    if len(raw) > MAX_NODES:
        raise WanMeterError(f"The workflow has {len(raw)} nodes; at most {MAX_NODES} are read.")
    origin: dict[Any, str] = {}
    for link in _list(data.get("links")):
        if isinstance(link, list) and len(link) >= 4 and _key(link[0]):
            origin[link[0]] = str(link[1])
        elif isinstance(link, dict) and _key(link.get("id")):
            origin[link["id"]] = str(link.get("origin_id"))
    out = {}
    for n in raw:
        nid, t = str(n.get("id")), n.get("type")
        if not isinstance(t, str):
            continue
        links = {}
        for inp in _list(n.get("inputs")):
            if isinstance(inp, dict) and isinstance(inp.get("name"), str) and _key(inp.get("link")) \
                    and inp.get("link") in origin:
                links[inp["name"]] = origin[inp["link"]]
        mode = n.get("mode") if isinstance(n.get("mode"), int) else 0
        out[nid] = Node(nid, t, mode, named_widgets(t, n.get("widgets_values")), links)
    return out


def _list(x: Any) -> list:
    """A list from an untrusted workflow, or [] (a hand-edited file may hold anything there)."""
    return x if isinstance(x, list) else []


def _key(x: Any) -> bool:
    """A link id usable as a key (ids are numbers or text)."""
    return isinstance(x, (int, str)) and not isinstance(x, bool)


def _upstream(nodes: dict[str, Node], node: Node, name: str) -> Node | None:
    src = node.links.get(name)
    return nodes.get(src) if src is not None else None


def _first(nodes: dict[str, Node], node_type: str) -> Node | None:
    found = [n for n in nodes.values() if n.type == node_type and n.active]
    return min(found, key=lambda n: _order(n.id)) if found else None


def _order(node_id: str) -> tuple:
    try:
        return (0, float(node_id.split(":")[-1]))
    except ValueError:
        return (1, node_id)


def _take(s: dict[str, Any], node: Node | None) -> None:
    if node is None:
        return
    for w, key in schema.settings_of(node.type).items():
        v = node.widgets.get(w)
        if w == "budget_gib" and v is None:
            v = node.widgets.get("budget_gb")   # API prompts saved before the rename
        if v is not None:
            s[key] = v


def sampler_settings(nodes: dict[str, Node], sampler: Node) -> dict[str, Any]:
    """The settings of one sampler chain: its model loader (through any LoRA nodes), text encoder,
    VAE, decode, S2V audio and the estimator node's GPU/price/budget."""
    s: dict[str, Any] = {"sampler_id": sampler.id, "sampler_type": sampler.type}
    loras, node, seen = 0, _upstream(nodes, sampler, "model"), set()
    while node is not None and node.type == LORA and node.id not in seen:
        seen.add(node.id)
        loras += 1 if node.active else 0
        node = _upstream(nodes, node, "model")
    loader = node if node is not None and node.type == LOADER else _first(nodes, LOADER)
    if loader is None:
        raise WanMeterError("No WanMeter Model Loader feeds the sampler: nothing to estimate. Connect one to the "
                            "sampler's model input.")
    _take(s, loader)
    s["loras"] = loras
    _take(s, sampler)
    if sampler.type == "WanMeterS2VSampler":
        s["frames"] = int(schema_clip_frames())
        _take(s, _upstream(nodes, sampler, "s2v_audio") or _first(nodes, "WanMeterS2VAudio"))
    enc = _upstream(nodes, sampler, "positive")
    te = _upstream(nodes, enc, "text_encoder") if enc is not None else None
    _take(s, te if te is not None and te.type == "WanMeterTextEncoderLoader" else
          _first(nodes, "WanMeterTextEncoderLoader"))
    vae = _upstream(nodes, sampler, "vae")
    _take(s, vae if vae is not None and vae.type == "WanMeterVAELoader" else _first(nodes, "WanMeterVAELoader"))
    _take(s, _first(nodes, "WanMeterVAEDecode"))
    o = s.pop("vae_tiled_override", "auto")
    if o in ("enable", "disable"):
        s["vae_tiled"] = o == "enable"
    _take(s, _first(nodes, "WanMeterEstimator"))
    for k in ("price_per_hour", "budget_gib", "s2v_clips", "boundary", "shift"):  # 0 = automatic
        if s.get(k) in (0, 0.0):
            s.pop(k)
    return s


def schema_clip_frames() -> int:
    from ..variants import variant

    return int(variant("s2v_14b")["clip_frames"])


def read_pipelines(data: Any) -> list[dict[str, Any]]:
    """One settings dict per active WanMeter sampler (ordered by node id); [] when the graph has a
    model loader but no sampler (the loader's settings alone, at the variant's defaults)."""
    nodes = read_nodes(data)
    samplers = sorted((n for n in nodes.values() if n.type in SAMPLERS and n.active), key=lambda n: _order(n.id))
    if samplers:
        return [sampler_settings(nodes, n) for n in samplers]
    loader = _first(nodes, LOADER)
    if loader is None:
        raise WanMeterError("The workflow has no WanMeter Model Loader: nothing to estimate.")
    s: dict[str, Any] = {"sampler_id": None, "sampler_type": None}
    _take(s, loader)
    _take(s, _first(nodes, "WanMeterTextEncoderLoader"))
    _take(s, _first(nodes, "WanMeterVAELoader"))
    _take(s, _first(nodes, "WanMeterEstimator"))
    for k in ("price_per_hour", "budget_gib"):
        if s.get(k) in (0, 0.0):
            s.pop(k)
    return [s]
