"""WanMeter: Wan2.2 for ComfyUI, with VRAM, time and cost shown before you queue.

ComfyUI imports this folder as a package named after the folder; everything below uses
relative imports (ComfyUI has its own top-level `nodes` module).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes import routes as _routes

WEB_DIRECTORY = "./web"

# HTTP routes for the live estimate (no-op outside a running ComfyUI server).
_routes.register()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
