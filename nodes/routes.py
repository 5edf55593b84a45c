"""HTTP routes the web extension calls: POST /wanmeter/estimate, GET /wanmeter/gpus.

Nothing runs on the server before Queue, so the live estimate comes from the browser: it sends
the workflow graph as it is and draws the reply. The handlers are plain functions
(`estimate_reply`, `gpus_reply`) returning (status, json-able dict) so they are tested without a
server; `register()` wires them into ComfyUI's aiohttp route table.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from ..wanmeter.errors import WanMeterError

log = logging.getLogger("wanmeter")

# The browser sends the whole workflow graph (an official template is ~100 KB); settings alone are small.
MAX_BODY_BYTES = 1024 * 1024


def gpus_reply() -> tuple[int, dict[str, Any]]:
    from ..wanmeter.estimator.gpus import detect_gpu_name
    from . import estimate_adapter as ea

    local = ea.local_gpu()
    detected = detect_gpu_name(local["name"]) if local else None
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
    """POST /wanmeter/estimate: {"graph": <workflow>, "sampler_id": id?} from the browser, or flat
    settings (API users). The engine's estimate_graph / estimate_reply does the rest."""
    from ..wanmeter.estimator.reply import estimate_graph
    from ..wanmeter.estimator.reply import estimate_reply as engine_reply
    from . import estimate_adapter as ea

    try:
        local = ea.local_gpu()
        if "graph" in payload:
            sid = payload.get("sampler_id")
            if sid is not None and not isinstance(sid, (str, int)):
                raise WanMeterError("sampler_id must be a node id.")
            return 200, estimate_graph(payload["graph"], local=local, sampler_id=sid, resolve=ea.resolve_model)
        settings = dict(payload)
        note = ea.resolve_model(settings)
        body = engine_reply(settings, local=local)
        if note:
            body["notes"].insert(0, note)
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
        # An estimate costs tens of milliseconds of CPU: off ComfyUI's event loop, which the whole UI shares.
        import asyncio

        status, body = await asyncio.get_running_loop().run_in_executor(None, estimate_reply, payload)
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
