"""HTTP routes the web extension calls: POST /wanmeter/estimate, GET /wanmeter/gpus.

Nothing runs on the server before Queue, so the live estimate comes from the browser: it sends
the workflow graph as it is and draws the reply. The handlers are plain functions
(`estimate_reply`, `gpus_reply`) returning (status, json-able dict) so they are tested without a
server; `register()` wires them into ComfyUI's aiohttp route table.
"""
from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..wanmeter.errors import WanMeterError
from ..wanmeter.safejson import json_depth
from . import common as c

log = logging.getLogger("wanmeter")

# The one HTTP schema. Two shapes cross it: {"graph": <workflow>, "sampler_id": id} from the browser
# (an official template is ~100 KB, its JSON nests ~8 deep), or flat settings from API users.
MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32           # a workflow with subgraphs; far below Python's recursion limit
MAX_FLAT_DEPTH = 2       # {"cfg": [4.0, 3.0]}: flat settings hold at most a short list
MAX_KEYS = 100
MAX_KEY_CHARS = 64
MAX_STR_CHARS = 512
MAX_LIST_ITEMS = 16
MAX_NUMBER = 1e15        # far above every real setting, far below float overflow
MAX_INT_DIGITS = 24      # a 64-bit seed in a workflow has 20 digits


def gpus_reply() -> tuple[int, dict[str, Any]]:
    from ..wanmeter.estimator.gpus import detect_gpu_name
    from . import estimate_adapter as ea

    local = ea.local_gpu()
    detected = detect_gpu_name(local["name"]) if local else None
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
    """The request body -> a payload that passed the HTTP schema: a graph envelope (check_graph_payload)
    or flat settings (check_payload). Bounded before parsing: size, nesting depth, integer digits;
    NaN / Infinity refused while parsing."""
    if len(raw) > MAX_BODY_BYTES:
        raise WanMeterError(f"The request body is {len(raw)} bytes; the estimate accepts at most {MAX_BODY_BYTES}.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WanMeterError(f"The request body is not JSON ({e}). Send a JSON object.") from None
    if json_depth(raw) > MAX_DEPTH:
        raise WanMeterError(f"The request body nests deeper than {MAX_DEPTH} levels. Send the workflow as ComfyUI "
                            "saves it, or the settings as a flat JSON object of name: value.")
    try:
        payload = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise WanMeterError(f"The request body is not JSON ({e}). Send a JSON object.") from None
    if isinstance(payload, dict) and "graph" in payload:
        return check_graph_payload(payload)
    return check_payload(payload)


def check_graph_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """{"graph": <UI workflow or API prompt>, "sampler_id": node id or null}. The graph's own values are
    read by the engine's graph reader, which treats every value as untrusted."""
    extra = sorted(set(payload) - {"graph", "sampler_id"})
    if extra:
        raise WanMeterError(f"Unknown field(s) {', '.join(map(repr, extra[:5]))} beside 'graph'. "
                            "Send {\"graph\": workflow, \"sampler_id\": id}.")
    if not isinstance(payload["graph"], dict):
        raise WanMeterError("'graph' must be a workflow object (graph.serialize() or an API prompt).")
    sid = payload.get("sampler_id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (str, int))
                            or (isinstance(sid, str) and len(sid) > MAX_KEY_CHARS)):
        raise WanMeterError("sampler_id must be a node id (a number or a short text).")
    return payload


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
    """POST /wanmeter/estimate: {"graph": <workflow>, "sampler_id": id?} from the browser, or flat
    settings (API users). The engine's estimate_graph / estimate_reply does the rest."""
    from ..wanmeter.estimator.reply import estimate_graph
    from ..wanmeter.estimator.reply import estimate_reply as engine_reply
    from . import estimate_adapter as ea

    try:
        local = ea.local_gpu()
        if isinstance(payload, dict) and "graph" in payload:
            payload = check_graph_payload(payload)
            return 200, estimate_graph(payload["graph"], local=local, sampler_id=payload.get("sampler_id"),
                                       resolve=ea.resolve_model)
        settings = check_payload(payload)
        low = settings.get("model_low_noise")
        if isinstance(low, str) and not c.is_none(low):
            c.check_name(low)
        note = ea.resolve_model(settings)
        body = engine_reply(settings, local=local)
        if note:
            body["notes"].insert(0, note)
        return 200, body
    except WanMeterError as e:
        return 400, {"error": str(e)}
    except (ArithmeticError, ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
        # A graph the readers did not foresee: the user gets one line, the console the traceback.
        log.exception("wanmeter: estimate failed")
        return 400, {"error": f"WanMeter could not read this workflow ({type(e).__name__}: {str(e)[:120]}). "
                              "Please report it with the workflow file."}


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
