"""ComfyUI node classes of the pack (V1 contract); see ../__init__.py for registration.

Every module here is thin: parse widgets, call the engine (../wanmeter), convert types. They
import comfy.* lazily, so the tests can import them with small stubs and no ComfyUI.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from . import estimator, loaders, lora, sampler, text, vae

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _m in (loaders, lora, text, vae, sampler, estimator):
    NODE_CLASS_MAPPINGS.update(_m.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_m.NODE_DISPLAY_NAME_MAPPINGS)

# S2V nodes live in their own module, written separately; include them when present.
if (Path(__file__).parent / "s2v_nodes.py").is_file():
    try:
        _s2v = importlib.import_module(".s2v_nodes", __name__)
        NODE_CLASS_MAPPINGS.update(getattr(_s2v, "NODE_CLASS_MAPPINGS", {}))
        NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_s2v, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    except Exception as e:  # a broken S2V module must not take the other nodes down
        logging.getLogger("wanmeter").error("WanMeter: S2V nodes not loaded: %s", e)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
