"""WanMeter engine: Wan2.2 loaders, sampler, S2V and the VRAM/time/cost estimator.

This package imports nothing from ComfyUI; the node modules in ../nodes are thin wrappers.
"""
__version__ = "0.1.0"
