"""Variant facts (dims, defaults, VAE family) loaded from data/variants.json.

Kept as data so the estimator, the loader and the nodes agree on one source.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"


@lru_cache(maxsize=None)
def _facts() -> dict[str, Any]:
    with open(DATA_DIR / "variants.json", encoding="utf-8") as f:
        return json.load(f)


def variant(name: str) -> dict[str, Any]:
    """Facts for one variant (t2v_a14b, i2v_a14b, ti2v_5b, s2v_14b)."""
    v = _facts()["variants"].get(name)
    if v is None:
        from .errors import WanMeterError

        known = ", ".join(sorted(_facts()["variants"]))
        raise WanMeterError(f"Unknown Wan2.2 variant {name!r}. Use one of: {known}.")
    return v


def variant_names() -> list[str]:
    return sorted(_facts()["variants"])


def vae_family(name: str) -> dict[str, Any]:
    """Facts for a VAE family (wan21, wan22): latent channels, strides, normalization constants."""
    return _facts()["vaes"][name]


def head_dim() -> int:
    return int(_facts()["head_dim"])


def text_len() -> int:
    return int(_facts()["text_len"])
