"""The aiohttp glue of /wanmeter/estimate and /wanmeter/gpus, served by a real aiohttp app
(skipped where aiohttp is not installed; ComfyUI always has it)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp")

_spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs", Path(__file__).with_name("comfy_stubs.py"))
stubs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stubs)


def run_http_checks(models_dir: Path) -> None:
    """Register the routes on a fake PromptServer, serve them, and exercise them over HTTP."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    for name, mod in stubs.make_stubs(models_dir).items():
        sys.modules[name] = mod
    pack = stubs.import_pack()

    class FakeServer:
        routes = web.RouteTableDef()

    assert pack.nodes.routes.register(FakeServer) is True
    app = web.Application()
    app.add_routes(FakeServer.routes)

    async def go() -> None:
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/wanmeter/gpus")
            body = await r.json()
            assert r.status == 200 and any(g["name"] == "RTX 4090" for g in body["gpus"])

            settings = {"model": "wan2.2_ti2v_5B_fp16.safetensors", "model_low_noise": "none", "width": 1280,
                        "height": 704, "frames": 121, "steps": 50, "cfg_high": 5.0, "cfg_low": 5.0,
                        "weight_dtype": "bf16", "offload": "auto", "blocks_to_stream": 0, "attention": "auto",
                        "text_encoder_device": "gpu", "vae_tiled": False, "gpu": "H100 SXM", "price_per_hour": 0,
                        "videos_per_month": 100, "budget_gb": 0, "num_gpus": 1}
            r = await client.post("/wanmeter/estimate", data=json.dumps(settings))
            body = await r.json()
            assert r.status == 200, body
            assert body["variant"] == "ti2v_5b" and body["fits"] is True and len(body["cheapest"]) == 3

            r = await client.post("/wanmeter/estimate", data=json.dumps({**settings, "model": "../../x.safetensors"}))
            assert r.status == 400 and "models folder" in (await r.json())["error"]
            r = await client.post("/wanmeter/estimate", data=b"{not json")
            assert r.status == 400 and "not JSON" in (await r.json())["error"]
            r = await client.post("/wanmeter/estimate", data=b"x" * (pack.nodes.routes.MAX_BODY_BYTES + 10))
            assert r.status == 400 and "at most" in (await r.json())["error"]

    asyncio.run(go())


def test_routes_over_http(tmp_path, monkeypatch):
    d = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "audio_encoders"):
        (d / sub).mkdir(parents=True)
    for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils", "server"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        run_http_checks(d)
    finally:
        for k in [k for k in sys.modules if k == stubs.PACK or k.startswith(stubs.PACK + ".")]:
            del sys.modules[k]
        for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils", "server"):
            sys.modules.pop(name, None)
