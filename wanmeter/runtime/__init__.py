"""Placement of loaded modules: compute dtype, offload (none / model / blocks), attention backend.

Public API: RuntimeOptions, Placement, apply_attention, resolve_attention, ATTENTION_CHOICES,
OFFLOAD_MODES. A WanModelBundle builds its Placement from its RuntimeOptions on first use.
"""
from .attention import ATTENTION_CHOICES, apply_attention, resolve_attention
from .options import OFFLOAD_MODES, RuntimeOptions
from .placement import Placement

__all__ = ["RuntimeOptions", "Placement", "apply_attention", "resolve_attention", "ATTENTION_CHOICES", "OFFLOAD_MODES"]
