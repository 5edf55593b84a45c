"""read_graph(): a ComfyUI workflow (UI format with subgraphs, or an API-format prompt) -> Graph.

UI format: `nodes` (each with positional `widgets_values`), `links` ([id, from, slot, to, slot, type]
arrays, or dicts in subgraphs) and `definitions.subgraphs` (a node whose type is a subgraph's id is an
instance of it). Instances are flattened: inner node "12" of instance "57" becomes "57:12"; links from
the subgraph's input node (id -10) are wired to what feeds the instance, links to its output node (id -20)
to what the instance feeds. A widget input of the subgraph takes the instance's value when the instance
stores one (older frontends) and keeps the inner widget's value otherwise (proxy widgets).

Everything is bounded (nodes, nesting, links) so a hostile or broken file gives one WanMeterError line.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import WanMeterError
from .model import BYPASSED, MUTED, Graph, Node

MAX_NODES = 5000
MAX_DEPTH = 8
SG_IN, SG_OUT = -10, -20
CONTROL = ("fixed", "increment", "decrement", "randomize")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
DATA = Path(__file__).resolve().parents[1] / "data" / "node_widgets.json"


@lru_cache(maxsize=1)
def node_widgets() -> dict[str, tuple[str, ...]]:
    """Widget names per node type, in widgets_values order ("control_after_generate" marks the hidden
    seed-control value the frontend saves after a seed)."""
    with open(DATA, encoding="utf-8") as f:
        d = json.load(f)
    out: dict[str, tuple[str, ...]] = {}
    for section, entries in d.items():
        if section.startswith("_"):
            continue
        for t, names in entries.items():
            if not t.startswith("_"):
                out[t] = tuple(names)
    # WanMeter's own nodes: their one declaration (data/node_schema.json), not a second table
    from .. import schema

    for t in schema.node_types():
        names = []
        for n in schema.widget_names(t):
            names += [n, "control_after_generate"] if n == "seed" else [n]
        out[t] = tuple(names)
    return out


def widget_dict(node_type: str, values: Any) -> dict[str, Any]:
    """widgets_values (a list, or a dict in some frontends) -> {widget name: value}."""
    names = node_widgets().get(node_type)
    if isinstance(values, dict):
        return {str(k): v for k, v in values.items()}
    if not isinstance(values, list):
        return {}
    if names is None:
        return {}
    out: dict[str, Any] = {}
    i = 0
    for name in names:
        if i >= len(values):
            break
        if name == "control_after_generate":
            if isinstance(values[i], str) and values[i] in CONTROL:
                i += 1
            continue
        out[name] = values[i]
        i += 1
    return out


def _fail(msg: str) -> WanMeterError:
    return WanMeterError(msg)


def _int_or_str(x: Any) -> Any:
    return x if isinstance(x, (int, str)) and not isinstance(x, bool) else str(x)


def _list(x: Any) -> list:
    return x if isinstance(x, list) else []


def _links(raw: Any, where: str) -> dict[Any, tuple[Any, int, Any, int]]:
    """link id -> (origin id, origin slot, target id, target slot)."""
    out = {}
    if raw is None:
        return out
    if not isinstance(raw, list):
        raise _fail(f"{where}: 'links' must be a list. Re-save the workflow from ComfyUI.")
    for ln in raw:
        try:
            if isinstance(ln, dict):
                key, row = ln["id"], (ln["origin_id"], int(ln["origin_slot"]), ln["target_id"], int(ln["target_slot"]))
            elif isinstance(ln, list) and len(ln) >= 5:
                key, row = ln[0], (ln[1], int(ln[2]), ln[3], int(ln[4]))
            else:
                continue
            if isinstance(key, (int, str)) and not isinstance(key, bool):
                out[key] = (_int_or_str(row[0]), row[1], _int_or_str(row[2]), row[3])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise _fail(f"{where}: a link is malformed ({str(ln)[:80]}). Re-save the workflow from ComfyUI.") from None
    return out


class _Scope:
    """One level of the UI graph: the top level or one subgraph instance."""

    def __init__(self, prefix: str, nodes: list, links: dict, instance: dict | None, parent: "_Scope | None",
                 sg: dict | None, depth: int):
        self.prefix, self.links, self.instance, self.parent, self.sg, self.depth = prefix, links, instance, parent, sg, depth
        self.nodes = {}
        for n in nodes:
            if isinstance(n, dict) and "id" in n:
                self.nodes[_int_or_str(n["id"])] = n
        self.mode = 0

    def instance_widgets(self) -> dict[str, Any]:
        """Values the instance node stores for the subgraph's widget inputs (older frontends)."""
        vals = self.instance.get("widgets_values") if self.instance else None
        if isinstance(vals, dict):
            return dict(vals)
        if not isinstance(vals, list) or not vals or not self.sg:
            return {}
        out, i = {}, 0
        for inp in _list(self.sg.get("inputs")):
            if not isinstance(inp, dict) or inp.get("type") not in WIDGET_TYPES:
                continue
            if i >= len(vals):
                break
            out[inp.get("name")] = vals[i]
            i += 1
            if inp.get("name") in ("seed", "noise_seed") and i < len(vals) and vals[i] in CONTROL:
                i += 1
        return out


class _Reader:
    def __init__(self, data: dict):
        self.data = data
        defs = data.get("definitions")
        defs = defs.get("subgraphs") if isinstance(defs, dict) else None
        defs = defs if defs is not None else []
        if not isinstance(defs, list):
            raise _fail("definitions.subgraphs must be a list. Re-save the workflow from ComfyUI.")
        self.defs = {d["id"]: d for d in defs if isinstance(d, dict) and isinstance(d.get("id"), str) and d["id"]}
        self.out: dict[str, Node] = {}
        self.pending: list[tuple[Node, _Scope, dict]] = []
        self.count = 0

    # -- flattening
    def scope(self, prefix: str, nodes: Any, links: Any, instance: dict | None, parent: _Scope | None,
              sg: dict | None, depth: int, mode: int, stack: tuple) -> None:
        if depth > MAX_DEPTH:
            raise _fail(f"Subgraphs are nested more than {MAX_DEPTH} deep (at node {prefix.rstrip(':')}): flatten some "
                        "of them (right-click > Unpack Subgraph).")
        if not isinstance(nodes, list):
            raise _fail("The workflow's 'nodes' is not a list. Re-save it from ComfyUI.")
        sc = _Scope(prefix, nodes, _links(links, str(sg.get("name", "subgraph")) if sg else "workflow"), instance, parent, sg, depth)
        sc.mode = mode
        for raw in sc.nodes.values():
            self.count += 1
            if self.count > MAX_NODES:
                raise _fail(f"The workflow has more than {MAX_NODES} nodes (subgraphs counted): too large to estimate; "
                            "split it or estimate the pipeline alone.")
            t = raw.get("type")
            if not isinstance(t, str):
                raise _fail(f"Node {prefix}{raw.get('id')} has no type. Re-save the workflow from ComfyUI.")
            m = raw.get("mode", 0)
            m = m if isinstance(m, int) else 0
            eff = mode if mode in (MUTED, BYPASSED) else m  # a muted / bypassed instance mutes / bypasses its inside
            if t in self.defs:
                if t in stack:
                    raise _fail(f"Subgraph {self.defs[t].get('name') or t} contains itself (a loop of subgraphs): "
                                "remove the inner instance.")
                d = self.defs[t]
                self.scope(f"{prefix}{raw['id']}:", d.get("nodes"), d.get("links"), raw, sc, d, depth + 1, eff, stack + (t,))
                continue
            nid = f"{prefix}{raw['id']}"
            ins, outs = _list(raw.get("inputs")), _list(raw.get("outputs"))
            node = Node(id=nid, type=t, widgets=widget_dict(t, raw.get("widgets_values")), inputs={}, mode=eff,
                        title=raw.get("title") if isinstance(raw.get("title"), str) else None,
                        input_types={str(i.get("name")): str(i.get("type")) for i in ins if isinstance(i, dict)},
                        output_types=[str(o.get("type")) for o in outs if isinstance(o, dict)])
            self.out[nid] = node
            self.pending.append((node, sc, raw))

    # -- wiring
    def resolve(self, sc: _Scope, origin: Any, slot: int, hops: int = 0) -> tuple[str, int] | tuple[str, Any] | None:
        """The flattened (node id, slot) an origin stands for; ("=", value) for a constant from an instance
        widget; None for unlinked."""
        if hops > 4 * MAX_DEPTH + 8:
            raise _fail("Subgraph inputs and outputs are wired in a loop: re-save the workflow from ComfyUI.")
        if origin == SG_IN:
            if sc.sg is None or sc.instance is None or sc.parent is None:
                return None
            sg_inputs = _list(sc.sg.get("inputs"))
            if not 0 <= slot < len(sg_inputs):
                return None
            name = sg_inputs[slot].get("name") if isinstance(sg_inputs[slot], dict) else None
            for i in _list(sc.instance.get("inputs")):
                if isinstance(i, dict) and i.get("name") == name and isinstance(i.get("link"), (int, str)):
                    ln = sc.parent.links.get(i["link"])
                    return None if ln is None else self.resolve(sc.parent, ln[0], ln[1], hops + 1)
            w = sc.instance_widgets()
            return ("=", w[name]) if name in w else None
        raw = sc.nodes.get(_int_or_str(origin))
        if raw is None:
            return None
        if raw.get("type") in self.defs:
            d = self.defs[raw["type"]]
            inner = _Scope(f"{sc.prefix}{raw['id']}:", _list(d.get("nodes")), _links(d.get("links"), str(d.get("name", "subgraph"))),
                           raw, sc, d, sc.depth + 1)
            for ln in inner.links.values():
                if ln[2] == SG_OUT and ln[3] == slot:
                    return self.resolve(inner, ln[0], ln[1], hops + 1)
            return None
        return (f"{sc.prefix}{raw['id']}", slot)

    def wire(self) -> None:
        for node, sc, raw in self.pending:
            for i in _list(raw.get("inputs")):
                if not isinstance(i, dict) or "name" not in i:
                    continue
                name = str(i["name"])
                link = i.get("link")
                if not isinstance(link, (int, str)) or isinstance(link, bool):
                    continue
                ln = sc.links.get(link)
                if ln is None:
                    continue
                r = self.resolve(sc, ln[0], ln[1])
                if r is not None and r[0] == "=":
                    node.widgets[name] = r[1]
                    continue
                node.inputs[name] = r if r is not None and r[0] in self.out else None


def _read_api(data: dict) -> Graph:
    if len(data) > MAX_NODES:
        raise _fail(f"The prompt has more than {MAX_NODES} nodes: too large to estimate.")
    nodes: dict[str, Node] = {}
    for nid, d in data.items():
        if not isinstance(d, dict) or not isinstance(d.get("class_type"), str):
            raise _fail(f"Prompt node {nid!s:.40} has no class_type: not an API-format prompt.")
        widgets, inputs = {}, {}
        for k, v in (d.get("inputs") or {}).items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and not isinstance(v[1], bool):
                inputs[str(k)] = (str(v[0]), int(v[1]))
            else:
                widgets[str(k)] = v
        title = (d.get("_meta") or {}).get("title") if isinstance(d.get("_meta"), dict) else None
        nodes[str(nid)] = Node(id=str(nid), type=d["class_type"], widgets=widgets, inputs=inputs, title=title)
    for n in nodes.values():
        for k, v in n.inputs.items():
            if v is not None and v[0] not in nodes:
                n.inputs[k] = None
    return Graph(nodes)


def _check_acyclic(g: Graph) -> None:
    """ComfyUI refuses a graph with a cycle; so do we, naming one node on it."""
    state: dict[str, int] = {}
    for start in g.nodes:
        if state.get(start):
            continue
        stack = [(start, iter([v[0] for v in g.nodes[start].inputs.values() if v is not None]))]
        state[start] = 1
        while stack:
            nid, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[nid] = 2
                stack.pop()
                continue
            if nxt not in g.nodes:
                continue
            s = state.get(nxt, 0)
            if s == 1:
                n = g.nodes[nxt]
                raise _fail(f"The workflow has a loop through {n.name}: a node's output feeds back into its own "
                            "inputs. Remove the link that closes the loop.")
            if s == 0:
                state[nxt] = 1
                stack.append((nxt, iter([v[0] for v in g.nodes[nxt].inputs.values() if v is not None])))


def read_graph(data: Any) -> Graph:
    """A Graph from a UI-format workflow (dict with 'nodes') or an API-format prompt ({id: {class_type, inputs}})."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _fail(f"The workflow is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise _fail("A workflow must be a JSON object (UI format with 'nodes', or an API-format prompt).")
    if "prompt" in data and isinstance(data["prompt"], dict) and "nodes" not in data:
        data = data["prompt"]
    if isinstance(data.get("nodes"), list):
        r = _Reader(data)
        r.scope("", data["nodes"], data.get("links"), None, None, None, 0, 0, ())
        r.wire()
        g = Graph(r.out)
    elif data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        g = _read_api(data)
    else:
        raise _fail("Not a ComfyUI workflow: expected a UI-format workflow (a 'nodes' list) or an API-format prompt.")
    _check_acyclic(g)
    return g
