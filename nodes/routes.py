"""HTTP routes the web extension calls: POST /wanmeter/estimate, GET /wanmeter/gpus.

Nothing runs on the server before Queue, so the live estimate comes from the browser: it sends
the flat settings dict built from the graph's widgets. The handlers are plain functions
(`estimate_reply`, `gpus_reply`) returning (status, json-able dict) so they are tested without a
server; `register()` wires them into ComfyUI's aiohttp route table.
"""
from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..wanmeter.errors import WanMeterError
from ..wanmeter.safejson import json_depth
from . import common as c

log = logging.getLogger("wanmeter")

MAX_BODY_BYTES = 16 * 1024
MAX_DEPTH = 4            # {"cfg": [4.0, 3.0]} is depth 2; the settings are a flat object
MAX_KEYS = 100
MAX_KEY_CHARS = 64
MAX_STR_CHARS = 512
MAX_LIST_ITEMS = 16
MAX_NUMBER = 1e15        # far above every real setting, far below float overflow
MAX_INT_DIGITS = 18

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


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise WanMeterError(f"The number {text[:24]}... has {len(text)} digits; settings are small numbers.")
    return int(text)


def _parse_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise WanMeterError(f"The number {text[:24]} is out of range; settings are finite numbers.")
    return v


def _parse_constant(name: str):
    raise WanMeterError(f"{name} is not a number a setting can take; send a finite number.")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body -> a settings dict that passed the HTTP schema (check_payload)."""
    if len(raw) > MAX_BODY_BYTES:
        raise WanMeterError(f"The request body is {len(raw)} bytes; the estimate accepts at most {MAX_BODY_BYTES}.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WanMeterError(f"The request body is not JSON ({e}). Send the settings as a JSON object.") from None
    if json_depth(raw) > MAX_DEPTH:
        raise WanMeterError(f"The request body nests deeper than {MAX_DEPTH} levels. Send the settings as a flat "
                            "JSON object of name: value.")
    try:
        payload = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise WanMeterError(f"The request body is not JSON ({e}). Send the settings as a JSON object.") from None
    return check_payload(payload)


def _check_value(key: str, v: Any, depth: int = 0) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        if not math.isfinite(v) or abs(v) > MAX_NUMBER:
            raise WanMeterError(f"{key}={v!r} is not a usable number (finite, at most {MAX_NUMBER:.0e}).")
        return v
    if isinstance(v, str):
        if len(v) > MAX_STR_CHARS or "\x00" in v:
            raise WanMeterError(f"{key} is text of {len(v)} characters; at most {MAX_STR_CHARS}, without NUL.")
        return v
    if isinstance(v, list) and depth == 0:
        if len(v) > MAX_LIST_ITEMS:
            raise WanMeterError(f"{key} is a list of {len(v)} items; at most {MAX_LIST_ITEMS}.")
        return [_check_value(key, x, depth + 1) for x in v]
    raise WanMeterError(f"{key} must be a number, text, true/false or null, got {type(v).__name__}.")


def check_payload(payload: Any) -> dict[str, Any]:
    """The one schema every HTTP input crosses: a flat JSON object of at most MAX_KEYS short names,
    each a finite bounded number, a short string, a bool, a short list of those, or null. Nulls
    are dropped (null = the setting's default). Ranges of known settings are checked further by
    the estimator's validate_settings; model names by nodes/common.py."""
    if not isinstance(payload, dict):
        raise WanMeterError("The request body must be a JSON object of settings.")
    if len(payload) > MAX_KEYS:
        raise WanMeterError(f"The request has {len(payload)} settings; at most {MAX_KEYS}. Send only the settings.")
    out: dict[str, Any] = {}
    for k, v in payload.items():
        if len(k) > MAX_KEY_CHARS:
            raise WanMeterError(f"Setting name {k[:MAX_KEY_CHARS]!r}... is over {MAX_KEY_CHARS} characters.")
        v = _check_value(k, v)
        if v is not None:
            out[k] = v
    return out


def estimate_reply(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Validate the browser's settings, resolve the variant, run the estimator."""
    from . import estimate_adapter as ea

    try:
        settings = check_payload(payload)
        notes: list[str] = []
        model = settings.get("model")
        if not isinstance(model, str) or c.is_none(model):
            raise WanMeterError("No diffusion model selected. Pick a model in WanMeter Model Loader.")
        variant, note = resolve_variant(model)
        if note:
            notes.append(note)
        low = settings.get("model_low_noise")
        if low is not None and not c.is_none(low):
            c.check_name(low)
        settings["variant"] = variant
        body = ea.run_estimate(settings, local_gpu())
        body["notes"] = notes + body.get("notes", [])
        return 200, body
    except WanMeterError as e:
        return 400, {"error": str(e)}


def handle_estimate(raw: bytes) -> tuple[int, dict[str, Any]]:
    """POST /wanmeter/estimate minus the transport: body bytes -> (status, JSON reply)."""
    try:
        payload = parse_body(raw)
    except WanMeterError as e:
        return 400, {"error": str(e)}
    return estimate_reply(payload)


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
        except WanMeterError as e:
            return web.json_response({"error": str(e)}, status=400)
        status, body = await run_off_loop(handle_estimate, raw)
        return web.json_response(body, status=status)

    @routes.get("/wanmeter/gpus")
    async def _gpus(request):  # noqa: ANN001, ARG001
        status, body = gpus_reply()
        return web.json_response(body, status=status)

    return True


# One worker thread for estimates: they are pure Python, so more threads would only fight over the
# GIL; the event loop keeps serving while it runs (and requests queue instead of piling up).
_EXECUTOR: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wanmeter-estimate")
    return _EXECUTOR


async def run_off_loop(fn, *args):
    """fn(*args) in the estimate thread, awaited from the event loop."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(executor(), _cooperatively, fn, *args)


def _cooperatively(fn, *args):
    """In the worker: the estimator hands the GIL to the event loop between its estimates."""
    from ..wanmeter.estimator.estimate import cooperative

    with cooperative():
        return fn(*args)


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
