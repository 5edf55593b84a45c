"""HTTP routes the web extension calls: POST /wanmeter/estimate, GET /wanmeter/gpus.

Nothing runs on the server before Queue, so the live estimate comes from the browser: it sends
the flat settings dict built from the graph's widgets. The handlers are plain functions
(`estimate_reply`, `gpus_reply`) returning (status, json-able dict) so they are tested without a
server; `register()` wires them into ComfyUI's aiohttp route table.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c

log = logging.getLogger("wanmeter")

MAX_BODY_BYTES = 16 * 1024

# (path, mtime_ns, size) -> variant; inspect_dit reads only a header, but the browser asks often.
_variant_cache: dict[tuple[str, int, int], str] = {}


# ---------------------------------------------------------------- variant from a file name

def guess_variant_from_name(name: str) -> str | None:
    """Variant from the official/ComfyUI file naming, for models not downloaded yet."""
    n = name.lower().replace("\\", "/").rsplit("/", 1)[-1]
    if "ti2v" in n or "5b" in n:
        return "ti2v_5b"
    if "s2v" in n:
        return "s2v_14b"
    if "i2v" in n:
        return "i2v_a14b"
    if "t2v" in n:
        return "t2v_a14b"
    return None


def resolve_variant(model: str) -> tuple[str, str | None]:
    """(variant, note) for a diffusion-model name: read from the file's header when the file
    is in ComfyUI's diffusion_models folders, else guessed from the name (with a note)."""
    c.check_name(model)
    try:
        path = c.resolve_model("diffusion_models", model, what="diffusion model")
    except WanMeterError:
        path = None
    if path is not None:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        v = _variant_cache.get(key)
        if v is None:
            from ..wanmeter.loader import inspect_dit

            v = inspect_dit(path).variant
            _variant_cache[key] = v
        return v, None
    v = guess_variant_from_name(model)
    if v is None:
        raise WanMeterError(
            f"{model!r} is not in models/diffusion_models and its name does not say which Wan2.2 model it is. "
            "Download the file, or pick an official file name (t2v/i2v/ti2v/s2v)."
        )
    return v, f"{model} is not downloaded yet: the estimate assumes {v} from its name."


# ---------------------------------------------------------------- local GPU

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


# ---------------------------------------------------------------- handlers

def gpus_reply() -> tuple[int, dict[str, Any]]:
    from . import estimate_adapter as ea

    local = local_gpu()
    detected = ea.match_gpu(local["name"]) if local else None
    return 200, {"gpus": ea.gpu_rows(), "detected": detected, "local": local}


def parse_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY_BYTES:
        raise WanMeterError(f"The request body is {len(raw)} bytes; the estimate accepts at most {MAX_BODY_BYTES}.")
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WanMeterError(f"The request body is not JSON ({e}). Send the settings as a JSON object.") from None
    if not isinstance(payload, dict):
        raise WanMeterError("The request body must be a JSON object of settings.")
    return payload


def estimate_reply(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Validate the browser's settings, resolve the variant, run the estimator."""
    from . import estimate_adapter as ea

    try:
        settings = dict(payload)
        notes: list[str] = []
        model = settings.get("model")
        if not isinstance(model, str) or c.is_none(model):
            raise WanMeterError("No diffusion model selected. Pick a model in WanMeter Model Loader.")
        variant, note = resolve_variant(model)
        if note:
            notes.append(note)
        low = settings.get("model_low_noise")
        if isinstance(low, str) and not c.is_none(low):
            c.check_name(low)
        settings["variant"] = variant
        body = ea.run_estimate(settings, local_gpu())
        body["notes"] = notes + body.get("notes", [])
        return 200, body
    except WanMeterError as e:
        return 400, {"error": str(e)}


# ---------------------------------------------------------------- aiohttp glue

def register(server=None) -> bool:
    """Add the routes to ComfyUI's PromptServer; False when there is no server (tests, CLI)."""
    if server is None:
        try:
            from server import PromptServer  # ComfyUI's module
        except Exception:
            return False
        server = getattr(PromptServer, "instance", None)
        if server is None:
            return False
    from aiohttp import web

    routes = server.routes

    @routes.post("/wanmeter/estimate")
    async def _estimate(request):  # noqa: ANN001
        try:
            raw = await _read_bounded(request)
            payload = parse_body(raw)
        except WanMeterError as e:
            return web.json_response({"error": str(e)}, status=400)
        status, body = estimate_reply(payload)
        return web.json_response(body, status=status)

    @routes.get("/wanmeter/gpus")
    async def _gpus(request):  # noqa: ANN001, ARG001
        status, body = gpus_reply()
        return web.json_response(body, status=status)

    return True


async def _read_bounded(request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise WanMeterError(
            f"The request body is {request.content_length} bytes; the estimate accepts at most {MAX_BODY_BYTES}."
        )
    buf = bytearray()
    async for chunk in request.content.iter_chunked(4096):
        buf.extend(chunk)
        if len(buf) > MAX_BODY_BYTES:
            raise WanMeterError(f"The request body exceeds {MAX_BODY_BYTES} bytes. Send only the settings.")
    return bytes(buf)
