"""Values in a graph before it runs: widget values, or what a linked input will receive from the
frontend's value nodes (PrimitiveInt/Float/Boolean/String, the legacy PrimitiveNode, ComfySwitchNode,
ComfyMathExpression). Only what can be known before Queue; anything else reads as unknown (None).
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any

from .model import Graph, Node

PRIMITIVES = ("PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString", "PrimitiveStringMultiline",
              "PrimitiveNode")
SWITCHES = ("ComfySwitchNode",)
# Nodes whose outputs repeat some of their widgets: {type: {output slot: widget}} (ComfyUI 0.3.64).
OUTPUT_WIDGETS = {"WanCameraEmbedding": {1: "width", 2: "height", 3: "length"}}
MAX_HOPS = 64


def source(g: Graph, node: Node, name: str, hops: int = 0) -> tuple[Node, int] | None:
    """(node, slot) feeding `name`, stepping through switches by their (known) switch value."""
    r = g.link(node, name)
    while r is not None and r[0].type in SWITCHES and hops < MAX_HOPS:
        sw = value(g, r[0], "switch", hops=hops + 1)
        if sw is None:
            return None
        r = g.link(r[0], "on_true" if _truthy(sw) else "on_false")
        hops += 1
    return r


def upstream(g: Graph, node: Node, name: str) -> Node | None:
    r = source(g, node, name)
    return r[0] if r else None


def value(g: Graph, node: Node, name: str, default: Any = None, hops: int = 0) -> Any:
    """The value input/widget `name` of `node` will have when the graph runs (default if unknown)."""
    if hops > MAX_HOPS:
        return default
    if node.inputs.get(name) is not None:
        r = source(g, node, name, hops + 1)
        if r is None:
            return default
        v = output_value(g, r[0], r[1], hops + 1)
        return default if v is None else v
    return node.widgets.get(name, default)


def output_value(g: Graph, n: Node, slot: int, hops: int = 0) -> Any:
    if n.type in PRIMITIVES:
        return value(g, n, "value", hops=hops + 1)
    if n.type in OUTPUT_WIDGETS and slot in OUTPUT_WIDGETS[n.type]:
        return value(g, n, OUTPUT_WIDGETS[n.type][slot], hops=hops + 1)
    if n.type == "ComfyMathExpression":
        expr = value(g, n, "expression", hops=hops + 1)
        env = {}
        for k in n.inputs:
            if k.startswith("values."):
                v = value(g, n, k, hops=hops + 1)
                if v is not None:
                    env[k.split(".", 1)[1]] = v
        return safe_eval(expr, env)
    return None


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "on", "enable")
    return bool(v)


_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_FUN = {"floor": math.floor, "ceil": math.ceil, "round": round, "min": min, "max": max, "abs": abs, "int": int,
        "float": float, "sqrt": math.sqrt}


def safe_eval(expr: Any, env: dict[str, Any]) -> Any:
    """Arithmetic of ComfyMathExpression (numbers, a/b/c..., + - * / // % **, floor/ceil/round/min/max/abs);
    None for anything else. Never executes code."""
    if not isinstance(expr, str) or len(expr) > 200:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None

    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.Name) and n.id in env and isinstance(env[n.id], (int, float)):
            return env[n.id]
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            v = ev(n.operand)
            return -v if isinstance(n.op, ast.USub) else v
        if isinstance(n, ast.BinOp) and type(n.op) in _BIN:
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow) and (abs(b) > 8 or abs(a) > 1e6):
                raise ValueError("power too large")
            return _BIN[type(n.op)](a, b)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _FUN and not n.keywords \
                and len(n.args) <= 4:
            return _FUN[n.func.id](*[ev(a) for a in n.args])
        raise ValueError("unsupported")

    try:
        v = ev(tree)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return None
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e9:
        return None
    return float(v)
