"""ComfyUI's side of the estimate: this machine's GPU, the model files' headers, the GPU combo.

Everything that decides (settings, plan, reply) is the engine's (wanmeter.estimator.reply); this
module only supplies what only ComfyUI knows: which GPU it runs on and how much VRAM is free,
and where the model files are (so the variant and precision come from the file's header).
"""
from __future__ import annotations

import logging
import os
from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c

log = logging.getLogger("wanmeter")
AUTO_GPU = "auto"

# (path, mtime_ns, size) -> (variant, source precision); inspect_dit reads only a header, but the browser asks often.
_header_cache: dict[tuple[str, int, int], tuple[str, str]] = {}


def gpu_rows() -> list[dict[str, Any]]:
    """GPU table rows for the /wanmeter/gpus route."""
    from ..wanmeter.estimator.gpus import load_gpus

    return [{"key": k, "name": g.name, "vram_gib": g.usable_gib, "price_per_hour": g.on_demand_per_hour}
            for k, g in load_gpus().items()]


def gpu_choices() -> list[str]:
    try:
        return [AUTO_GPU] + [r["name"] for r in gpu_rows()]
    except Exception:  # a broken user GPU file must not hide the node
        return [AUTO_GPU]


def local_gpu() -> dict[str, Any] | None:
    """This machine's GPU as ComfyUI uses it: name, total and free VRAM (GiB); None on CPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        import comfy.model_management as mm

        dev = mm.get_torch_device()
        if getattr(dev, "type", "cpu") != "cuda":
            return None
        total = torch.cuda.get_device_properties(dev).total_memory
        free = mm.get_free_memory(dev)
        return {"name": torch.cuda.get_device_name(dev), "total_gib": total / 1024**3, "free_gib": free / 1024**3}
    except Exception as e:  # never break the estimate on a detection problem
        log.debug("wanmeter: GPU detection failed: %s", e)
        return None


def resolve_model(settings: dict[str, Any]) -> str | None:
    """Fill settings['variant'] and ['source'] from the diffusion model's header when the file is in
    ComfyUI's folders; from its name otherwise (and returns a note saying so). Raises WanMeterError
    without a model."""
    from ..wanmeter.estimator.reply import source_from_name, variant_from_name

    model = settings.get("model")
    if not isinstance(model, str) or c.is_none(model):
        raise WanMeterError("No diffusion model selected. Pick a model in WanMeter Model Loader.")
    c.check_name(model)
    try:
        path = c.resolve_model("diffusion_models", model, what="diffusion model")
    except WanMeterError:
        path = None
    if path is not None:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in _header_cache:
            from ..wanmeter.loader import inspect_dit
            from ..wanmeter.memplan import source_of

            info = inspect_dit(path)
            _header_cache[key] = (info.variant, source_of(info))
        settings["variant"], settings["source"] = _header_cache[key]
        return None
    v = variant_from_name(model)
    if v is None:
        raise WanMeterError(f"{model!r} is not in models/diffusion_models and its name does not say which Wan2.2 "
                            "model it is. Download the file, or pick an official file name (t2v/i2v/ti2v/s2v).")
    settings["variant"], settings["source"] = v, source_from_name(model)
    return f"{model} is not downloaded yet: the estimate assumes {v} from its name."


def summary(body: dict[str, Any]) -> str:
    """A short plain-text line (ui.text) for API users and logs."""
    if body.get("error"):
        return f"WanMeter: cannot estimate: {body['error']}"
    fit = "fits" if body.get("fits") else "DOES NOT FIT"
    return (f"{body.get('label')}: peak {body.get('peak_vram_gib', 0):.1f} GiB of {body.get('budget_gib', 0):.1f} GiB "
            f"on {body.get('gpu', {}).get('name')} ({fit}), {body.get('seconds_per_video', 0):.0f} s and "
            f"${body.get('cost_per_video') or 0:.2f} per video; plan: {body.get('plan')}")
