"""What native and kijai graphs share: model file -> variant / weight format, sampler-chain walking,
enumerating the frontend's boolean switches (the official templates' "Enable Lightning LoRA")."""
from __future__ import annotations

import itertools
import re
from dataclasses import replace
from typing import Any, Callable

from ..errors import WanMeterError
from .model import BYPASSED, Graph, Node
from .values import PRIMITIVES, SWITCHES, value

FindFile = Callable[[str, str], "str | None"]   # (ComfyUI folder, file name) -> path on disk or None
MAX_TOGGLES = 3
GGUF_NAMES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q5_K_S", "Q4_K_S", "Q4_0", "Q3_K_M", "Q3_K_S", "Q2_K", "Q5_0", "Q5_1")
_GGUF_TO_PLAN = {"Q5_K_S": "Q5_K_M", "Q4_K_S": "Q4_K_M", "Q4_0": "Q4_K_M", "Q3_K_M": "Q4_K_M", "Q3_K_S": "Q4_K_M",
                 "Q2_K": "Q4_K_M", "Q5_0": "Q5_K_M", "Q5_1": "Q5_K_M"}

# Wan2.2 models that are not one of the four variants but share a variant's transformer size.
SAME_SIZE = (("fun", "5b", "ti2v_5b"), ("fun", "14b", "i2v_a14b"), ("camera", "14b", "i2v_a14b"),
             ("vace", "14b", "t2v_a14b"), ("animate", "14b", "i2v_a14b"), ("flf2v", "14b", "i2v_a14b"))
LABEL = {"t2v_a14b": "T2V-A14B", "i2v_a14b": "I2V-A14B", "ti2v_5b": "TI2V-5B", "s2v_14b": "S2V-14B"}


def variant_from_name(name: str, where: str) -> tuple[str, str | None]:
    """(variant, note) from a model file name; WanMeterError for a non-Wan model."""
    n = name.lower().replace("-", "_")
    for key, v in (("ti2v", "ti2v_5b"), ("s2v", "s2v_14b"), ("i2v", "i2v_a14b"), ("t2v", "t2v_a14b")):
        if key in n:
            return v, None
    if "wan" in n:
        for a, b, v in SAME_SIZE:
            if a in n and b in n:
                return v, f"{name}: a Wan2.2 {a} model, estimated as {LABEL[v]} (same transformer size)"
        if "5b" in n:
            return "ti2v_5b", None
    raise WanMeterError(f"{where} loads {name!r}, which is not a Wan2.2 model that WanMeter can tell by name "
                        "(Flux, SDXL and others are not estimated): pick a Wan2.2 file, or name it with its "
                        "variant (t2v / i2v / ti2v / s2v).")


def weight_from_name(name: str) -> str:
    """Storage format a model file name announces (fp8 / fp16 / bf16 / a GGUF type)."""
    up = name.upper()
    for q in GGUF_NAMES:
        if q in up:
            return _GGUF_TO_PLAN.get(q, q)
    n = name.lower()
    if "fp8" in n or "e4m3" in n:
        return "fp8_e5m2" if "e5m2" in n else "fp8_e4m3fn"
    if "fp16" in n:
        return "fp16"
    if "fp32" in n:
        return "fp32"
    return "bf16"


def inspect_model(folder: str, name: Any, where: str, find_file: FindFile | None) -> tuple[str, str, list[str]]:
    """(variant, on-disk weight format, notes) for a model file: from its header when the file is found
    (find_file), else from its name."""
    if not isinstance(name, str) or not name.strip() or name in ("none", "None"):
        raise WanMeterError(f"{where} has no model file selected: pick one in its list (or download the file the "
                            "workflow names into models/{folder}).".replace("{folder}", folder))
    path = find_file(folder, name) if find_file else None
    if path:
        from ..loader.dit_inspect import inspect_dit
        from ..memplan.sources import source_of

        try:
            info = inspect_dit(path)
        except WanMeterError as e:
            raise WanMeterError(f"{where}: {e}") from None
        return info.variant, source_of(info), [f"{name}: variant and precision read from the file header"]
    v, note = variant_from_name(name, where)
    return v, weight_from_name(name), ([note] if note else []) + [f"{name}: not found here, variant and precision "
                                                                    "taken from its name"]


def expert_of(name: str) -> str | None:
    """"high" / "low" from an A14B expert's file name (official "high_noise", kijai "HIGH"), else None."""
    n = name.lower()
    for role in ("high", "low"):
        if re.search(rf"(^|[_\-. ]){role}([_\-. ]?noise|[_\-. ]|$)", n):
            return role
    return None


def toggles(g: Graph) -> list[Node]:
    """Boolean value nodes that steer switches (e.g. the templates' "Enable Lightning LoRA"), and switches
    with their own unlinked switch widget; at most MAX_TOGGLES."""
    out: list[Node] = []
    for sw in g.of_type(*SWITCHES):
        src = g.upstream(sw, "switch") if sw.inputs.get("switch") is not None else sw
        if src is None:
            continue
        if src is sw or (src.type in PRIMITIVES and isinstance(value(g, src, "value"), bool)):
            if src not in out:
                out.append(src)
    return out[:MAX_TOGGLES]


def variants_of(g: Graph) -> list[tuple[Graph, str, bool]]:
    """(graph, label suffix, is the saved state) for each setting of the switch toggles (saved state first)."""
    tg = toggles(g)
    if not tg:
        return [(g, "", True)]
    key = {n.id: ("switch" if n.type in SWITCHES else "value") for n in tg}
    saved = tuple(bool(value(g, n, key[n.id])) for n in tg)
    combos = [saved] + [c for c in itertools.product((False, True), repeat=len(tg)) if c != saved]
    out = []
    for c in combos:
        nodes = dict(g.nodes)
        for n, on in zip(tg, c):
            nodes[n.id] = replace(n, widgets={**n.widgets, key[n.id]: on})
        label = ", ".join(f"{(n.title or n.type)}: {'on' if on else 'off'}" for n, on in zip(tg, c))
        out.append((Graph(nodes), label, c == saved))
    return out


def unbypassed(g: Graph) -> Graph:
    """The graph with every bypassed node enabled: how a bypassed copy of a pipeline would run."""
    return Graph({k: (replace(n, mode=0) if n.mode == BYPASSED else n) for k, n in g.nodes.items()})


def chain_order(samplers: list[Node], prev: Callable[[Node], list[Node]]) -> list[list[Node]]:
    """Sampler chains: each terminal sampler (feeding no other) with every sampler upstream of it, upstream
    first."""
    feeds: dict[str, set[str]] = {s.id: set() for s in samplers}
    ups: dict[str, list[Node]] = {}
    for s in samplers:
        ups[s.id] = prev(s)
        for p in ups[s.id]:
            if p.id in feeds:
                feeds[p.id].add(s.id)
    chains = []
    for s in samplers:
        if feeds[s.id]:
            continue
        order: list[Node] = []
        seen: set[str] = set()

        def visit(n: Node, depth: int = 0) -> None:
            if n.id in seen or depth > 200:
                return
            seen.add(n.id)
            for p in ups.get(n.id, prev(n)):
                visit(p, depth + 1)
            order.append(n)

        visit(s)
        chains.append(order)
    return chains


def short_number(x: Any) -> str:
    try:
        return f"{float(x):g}"
    except (TypeError, ValueError):
        return str(x)

