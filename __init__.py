"""WanMeter: Wan2.2 for ComfyUI, with VRAM, time and cost shown before you queue.

ComfyUI imports this folder as a package named after the folder; everything below uses
relative imports (ComfyUI has its own top-level `nodes` module).
"""
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes import routes as _routes

    # HTTP routes for the live estimate (no-op outside a running ComfyUI server).
    _routes.register()
else:
    # Imported as a lone file, not as a package: pytest does this to the repository root when the checkout's
    # folder is not a valid module name (e.g. comfyui-wanmeter). There is nothing to register then.
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
