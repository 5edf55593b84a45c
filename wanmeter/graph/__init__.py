"""Workflow graphs users already have (ComfyUI native nodes, kijai's WanVideoWrapper, ours) -> estimator settings.

Public API:
    read_graph(data) -> Graph                 UI-format workflow (subgraphs flattened) or API-format prompt
    Graph, Node                               the flattened graph (active nodes, links, widget values)
    native.pipelines(graph) -> [dict]         one flat settings dict per native sampler chain
    kijai.pipelines(graph) -> [dict]          the same for kijai's WanVideoWrapper graphs
    pipelines(graph) -> [dict]                both, native first
Pure Python: no torch, no ComfyUI. Node widget names come from data/node_widgets.json.
"""
from .model import Graph, Node
from .read import read_graph


def pipelines(graph: Graph, find_file=None) -> list[dict]:
    """Every sampler chain of `graph`, native ComfyUI and kijai (see native.py / kijai.py)."""
    from . import kijai, native

    return native.pipelines(graph, find_file) + kijai.pipelines(graph, find_file)


__all__ = ["Graph", "Node", "read_graph", "pipelines"]
