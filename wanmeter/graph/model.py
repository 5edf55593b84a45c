"""The flattened workflow graph: nodes with their widget values and linked inputs.

Ids of nodes inside subgraphs are "<instance id>:<inner id>" (nested: "57:12:3"). A link is
(source node id, source output slot). Muted nodes (mode 2) produce nothing; bypassed nodes
(mode 4) pass an input of the output's type through, as ComfyUI runs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MUTED, BYPASSED = 2, 4
PASS_THROUGH = ("Reroute",)   # frontend-only nodes that forward their one input


@dataclass
class Node:
    id: str
    type: str
    widgets: dict[str, Any]
    inputs: dict[str, tuple[str, int] | None]
    mode: int = 0
    title: str | None = None
    input_types: dict[str, str] = field(default_factory=dict)   # input name -> type ("MODEL", "LATENT", ...)
    output_types: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.mode not in (MUTED, BYPASSED)

    @property
    def name(self) -> str:
        """How the user sees the node: its title, else its type (with its id)."""
        return f"{self.title or self.type} (#{self.id})"


@dataclass
class Graph:
    nodes: dict[str, Node]
    _fed_by: dict[str, list[tuple[Node, str]]] | None = field(default=None, repr=False, compare=False)

    def node(self, node_id: str) -> Node | None:
        return self.nodes.get(node_id)

    def link(self, node: Node, input_name: str) -> tuple[Node, int] | None:
        """(source node, output slot) feeding `input_name`, through bypassed and pass-through nodes;
        None when unlinked, or when the source is muted."""
        src = node.inputs.get(input_name)
        seen: set[str] = set()
        while src is not None:
            n = self.nodes.get(src[0])
            if n is None or n.id in seen or n.mode == MUTED:
                return None
            seen.add(n.id)
            if n.mode == BYPASSED or n.type in PASS_THROUGH:
                src = self._through(n, src[1])
                continue
            return n, src[1]
        return None

    def upstream(self, node: Node, input_name: str) -> Node | None:
        """The active node feeding `input_name` (see link())."""
        r = self.link(node, input_name)
        return r[0] if r else None

    @staticmethod
    def _through(n: Node, slot: int) -> tuple[str, int] | None:
        """The input a bypassed / pass-through node forwards for output `slot`: the first linked input of the
        output's type (ComfyUI's bypass rule), else the first linked input."""
        want = n.output_types[slot] if slot < len(n.output_types) else None
        linked = [(k, v) for k, v in n.inputs.items() if v is not None]
        for k, v in linked:
            if want is not None and n.input_types.get(k) == want:
                return v
        return linked[0][1] if linked and (want is None or n.type in PASS_THROUGH or not n.input_types) else None

    def of_type(self, *types: str) -> list[Node]:
        """Active nodes of these types, in id order (numeric parts compared as numbers)."""
        return sorted((n for n in self.nodes.values() if n.type in types and n.active), key=lambda n: _id_key(n.id))

    def consumers(self, node: Node) -> list[tuple[Node, str]]:
        """Active (node, input name) pairs fed by `node` (directly or through bypassed / pass-through nodes)."""
        if self._fed_by is None:
            self._fed_by = {}
            for n in sorted(self.nodes.values(), key=lambda n: _id_key(n.id)):
                if not n.active or n.type in PASS_THROUGH:
                    continue
                for k, v in n.inputs.items():
                    src = self.upstream(n, k) if v is not None else None
                    if src is not None:
                        self._fed_by.setdefault(src.id, []).append((n, k))
        return list(self._fed_by.get(node.id, []))


def _id_key(node_id: str) -> tuple:
    return tuple((0, int(p)) if p.lstrip("-").isdigit() else (1, p) for p in node_id.split(":"))
