"""Issue 18 defects, one test each (the HTTP fuzz is tests/test_routes_fuzz.py, the bad-file corpus
tests/test_bad_files.py): model-name containment, the estimate off the event loop, the cached GPU
table, the cheaper estimator giving identical results, audio dtype/layout, and mismatched parts
refused from headers before any weight is loaded (pipeline/CLI, loader nodes, S2V sampler)."""
from __future__ import annotations

import asyncio
import builtins
import importlib.util
import itertools
import json
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from wanmeter.errors import WanMeterError

_spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs", Path(__file__).with_name("comfy_stubs.py"))
stubs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stubs)
COMFY_MODULES = ("folder_paths", "comfy", "comfy.model_management", "comfy.utils", "server")


@pytest.fixture()
def models_dir(tmp_path):
    d = tmp_path / "models"
    for sub in ("diffusion_models/sub", "text_encoders", "vae", "audio_encoders"):
        (d / sub).mkdir(parents=True)
    return d


@pytest.fixture()
def pack(models_dir, monkeypatch):
    for name in COMFY_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name, mod in stubs.make_stubs(models_dir).items():
        sys.modules[name] = mod
    mod = stubs.import_pack()
    yield mod
    for k in [k for k in sys.modules if k == stubs.PACK or k.startswith(stubs.PACK + ".")]:
        del sys.modules[k]
    for name in COMFY_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def tiny():
    from wanmeter.tiny import ensure_tiny_models

    return ensure_tiny_models(names=["dit_ti2v", "dit_t2v_high", "dit_t2v_low", "s2v_14b", "vae_wan21", "vae_wan22",
                                     "umt5_fp16", "wav2vec2_large"])


# --- model names: subfolders in, escapes out ------------------------------------------------------

def test_resolve_model_subfolders_containment_and_regular_files(pack, models_dir, tiny, monkeypatch):
    common = pack.nodes.common
    dm = models_dir / "diffusion_models"
    (dm / "sub" / "x.safetensors").symlink_to(tiny["dit_ti2v"])  # a user's symlink to another disk is followed
    assert common.resolve_model("diffusion_models", "sub/x.safetensors") == str(dm / "sub" / "x.safetensors")
    os.mkfifo(dm / "sub" / "pipe.safetensors")
    with pytest.raises(common.WanMeterError, match="as a regular file"):
        common.resolve_model("diffusion_models", "sub/pipe.safetensors")
    os.symlink(dm / "l2.safetensors", dm / "l1.safetensors")
    os.symlink(dm / "l1.safetensors", dm / "l2.safetensors")
    with pytest.raises(common.WanMeterError, match="as a regular file"):
        common.resolve_model("diffusion_models", "l1.safetensors")
    # whatever folder_paths answers, a path outside the folder is refused (resolve, then check containment)
    fp = sys.modules["folder_paths"]
    monkeypatch.setattr(fp, "get_full_path", lambda folder, name: str(tiny["dit_ti2v"]))
    with pytest.raises(common.WanMeterError, match="resolves outside"):
        common.resolve_model("diffusion_models", "sub/x.safetensors")
    for bad in ["../x.safetensors", "sub/../../x", "/etc/passwd", "./x", "a\x00b"]:
        with pytest.raises(common.WanMeterError):
            common.resolve_model("diffusion_models", bad)


# --- the estimate runs off the event loop ---------------------------------------------------------

def test_estimate_runs_in_the_worker_thread(pack, monkeypatch):
    pytest.importorskip("aiohttp")
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    routes = pack.nodes.routes
    seen: list[str] = []
    gate = threading.Event()

    def slow_reply(payload):
        seen.append(threading.current_thread().name)
        gate.wait(10)
        return 200, {"ok": True}

    monkeypatch.setattr(routes, "estimate_reply", slow_reply)

    class FakeServer:
        routes = web.RouteTableDef()

    routes.register(FakeServer)
    app = web.Application()
    app.add_routes(FakeServer.routes)

    async def go():
        async with TestClient(TestServer(app)) as client:
            pending = asyncio.ensure_future(client.post("/wanmeter/estimate", data=b'{"model": "x"}'))
            while not seen:
                await asyncio.sleep(0.01)
            g = await client.get("/wanmeter/gpus")  # answered while the estimate is still running
            assert g.status == 200
            gate.set()
            r = await pending
            return r.status

    try:
        assert asyncio.run(go()) == 200
    finally:
        gate.set()
    assert seen and seen[0].startswith("wanmeter-estimate")


# --- the GPU table is cached on path, size and mtime ----------------------------------------------

def test_gpu_table_cached_and_reread_when_the_file_changes(tmp_path, monkeypatch):
    from wanmeter.estimator import gpus as g

    user = tmp_path / "gpus.json"
    user.write_text(json.dumps({"gpus": {"h100_sxm": {"on_demand_per_hour": 1.0}}}))
    opened: list[str] = []
    real = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real(f, *a, **k))[1])
    first = g.load_gpus(user)
    opened.clear()
    again = g.load_gpus(user)
    assert again == first and again is not first and opened == []  # a hit opens nothing
    user.write_text(json.dumps({"gpus": {"h100_sxm": {"on_demand_per_hour": 2.5}}}))
    assert g.load_gpus(user)["h100_sxm"].on_demand_per_hour == 2.5  # size/mtime changed: re-read
    again.pop("h100_sxm")
    assert "h100_sxm" in g.load_gpus(user)  # callers own the dict they get


# --- the cheaper estimator gives the same results as the plain one --------------------------------

def test_fix_search_and_ranking_equal_the_plain_computation(monkeypatch):
    """fits()/memoized peaks/memoized plan copies vs the plain algorithm (a full estimate for every
    candidate, nothing memoized) over a grid of workloads, plans and GPUs: identical results."""
    from dataclasses import replace

    from wanmeter.estimator import fixes, workload
    from wanmeter.estimator.gpus import load_gpus

    est = importlib.import_module("wanmeter.estimator.estimate")  # the module (the package exports the function)
    def summary():
        out = []
        gpus = load_gpus()
        for var, (w, h), wd, off, extra in itertools.product(
                ["t2v_a14b", "ti2v_5b", "s2v_14b"], [(1280, 704), (1920, 1088)], ["bf16", "fp8_e4m3fn"],
                ["none", "model"], [{}, {"compile": True, "text_encoder_device": "cpu"}]):
            wl = workload.Workload(variant=var, width=w, height=h, frames=81 if var != "s2v_14b" else 80, steps=20)
            plan = workload.Plan(weight_dtype=wd, offload=off, **extra)
            for r in fixes.rank_gpus(wl, plan, videos_per_month=100):
                out.append((var, w, wd, off, r.gpu.key, r.fits, tuple(r.changes), r.estimate.per_video_s,
                            r.estimate.vram_peak_gib, r.cost_per_video, tuple(r.estimate.notes)))
            for key in ("rtx4090", "l4"):
                for f in fixes.suggest_fixes(wl, plan, gpus[key], limit=5):
                    out.append((var, w, wd, off, key, tuple(f.changes), f.estimate.per_video_s, f.estimate.vram_peak_gib))
        return out

    fast = summary()
    monkeypatch.setattr(est, "_memory", est._memory.__wrapped__)
    monkeypatch.setattr(fixes, "fits", lambda w, p, g, cal=None: est.estimate(w, p, g, cal=cal).fits)
    monkeypatch.setattr(workload.Plan, "with_", lambda self, **kw: replace(self, **kw))
    plain = summary()
    assert len(fast) == len(plain) > 500
    assert fast == plain


# --- audio ----------------------------------------------------------------------------------------

def test_integer_audio_is_scaled_and_channels_last_is_detected():
    from wanmeter.s2v.audio import check_audio

    x = torch.tensor([[[-32768, 0, 16384, 32767]]], dtype=torch.int16)
    assert torch.allclose(check_audio(x, 16000), torch.tensor([[-1.0, 0.0, 0.5, 32767 / 32768]]))
    assert torch.allclose(check_audio(torch.tensor([[0, 128, 255]], dtype=torch.uint8), 16000),
                          torch.tensor([[-1.0, 0.0, 127 / 128]]))
    i32 = torch.tensor([[-(2 ** 31), 2 ** 30]], dtype=torch.int32)
    assert torch.allclose(check_audio(i32, 16000), torch.tensor([[-1.0, 0.5]]))
    stereo = torch.randn(1, 16000, 2)  # [B, N, C], as soundfile returns it
    out = check_audio(stereo, 16000)
    assert out.shape == (2, 16000) and torch.equal(out, stereo[0].t())
    with pytest.raises(WanMeterError, match=r"neither \[batch, channels, samples\] nor \[batch, samples, channels\]"):
        check_audio(torch.randn(1, 300, 400), 16000)


def test_encode_audio_returns_the_int16_waveform_in_unit_range(tiny):
    from wanmeter.s2v.audio import encode_audio, load_wav2vec2

    x = (torch.sin(torch.linspace(0, 400, 8000)) * 30000).to(torch.int16)[None, None]
    cond = encode_audio(x, 16000, load_wav2vec2(tiny["wav2vec2_large"]))
    assert cond.waveform.abs().max() <= 1.0 and cond.waveform.abs().max() > 0.9


# --- mismatched parts, refused from headers before any weight loads -------------------------------

def test_check_parts(tiny):
    from wanmeter.loader.parts import check_parts

    assert check_parts([tiny["dit_ti2v"]], vae=tiny["vae_wan22"], text_encoder=tiny["umt5_fp16"]) == "ti2v_5b"
    with pytest.raises(WanMeterError, match="needs wan2.2_vae.safetensors"):
        check_parts([tiny["dit_ti2v"]], vae=tiny["vae_wan21"])
    with pytest.raises(WanMeterError, match="needs wan_2.1_vae.safetensors"):
        check_parts([tiny["dit_t2v_high"], tiny["dit_t2v_low"]], vae=tiny["vae_wan22"])
    with pytest.raises(WanMeterError, match="not umt5-xxl"):
        check_parts([tiny["dit_ti2v"]], text_encoder=tiny["vae_wan22"])
    with pytest.raises(WanMeterError, match="drives only Wan2.2 S2V-14B"):
        check_parts([tiny["dit_ti2v"]], audio_encoder=tiny["wav2vec2_large"])
    assert check_parts([tiny["s2v_14b"]], vae=tiny["vae_wan21"], audio_encoder=tiny["wav2vec2_large"]) == "s2v_14b"
    with pytest.raises(WanMeterError, match="needs two DiT files"):
        check_parts([tiny["dit_t2v_high"]])


@pytest.mark.parametrize("bad", ["vae", "text_encoder"])
def test_generate_refuses_wrong_parts_before_loading(tiny, monkeypatch, bad):
    """The CLI's `generate` path: a wrong VAE / text encoder is refused before any model loads."""
    from wanmeter import pipeline
    from wanmeter.loader import dit_loader, text_encoder, vae_loader
    from wanmeter.sampler import SampleRequest

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the parts were checked")

    for mod, name in ((text_encoder, "load_text_encoder"), (vae_loader, "load_vae"), (dit_loader, "load_dit")):
        monkeypatch.setattr(mod, name, loaded)
    import wanmeter.loader as loader_pkg

    monkeypatch.setattr(loader_pkg, "load_dit", loaded)
    parts = {"vae": tiny["vae_wan22"], "text_encoder": tiny["umt5_fp16"]}
    parts[bad] = tiny["vae_wan21"] if bad == "vae" else tiny["vae_wan22"]
    req = SampleRequest(width=64, height=64, frames=5, steps=1)
    with pytest.raises(WanMeterError, match="needs wan2.2_vae" if bad == "vae" else "not umt5-xxl"):
        pipeline.generate_from_files(dit=[tiny["dit_ti2v"]], prompt="x", req=req, **parts)


def test_loader_nodes_check_the_prompt_parts_first(pack, models_dir, tiny, monkeypatch):
    """Whichever loader ComfyUI runs first, a VAE of the wrong family for the prompt's model is
    refused before that loader reads a weight."""
    for key, folder in (("dit_ti2v", "diffusion_models"), ("vae_wan21", "vae"), ("umt5_fp16", "text_encoders")):
        (models_dir / folder / tiny[key].name).symlink_to(tiny[key])
    prompt = {
        "1": {"class_type": "WanMeterModelLoader", "inputs": {"model": tiny["dit_ti2v"].name, "model_low_noise": "none"}},
        "2": {"class_type": "WanMeterVAELoader", "inputs": {"vae": tiny["vae_wan21"].name, "tiled": False}},
        "3": {"class_type": "WanMeterTextEncoderLoader", "inputs": {"text_encoder": tiny["umt5_fp16"].name}},
    }
    import wanmeter_pack.wanmeter.loader.vae_loader as vl  # the pack's own engine modules

    monkeypatch.setattr(vl, "load_vae", lambda *a, **k: pytest.fail("the VAE weights were loaded"))
    m = pack.NODE_CLASS_MAPPINGS
    for node, args in (("WanMeterVAELoader", (tiny["vae_wan21"].name, False, "fp32")),
                       ("WanMeterModelLoader", (tiny["dit_ti2v"].name, "bf16", "bf16", "auto", 0, "sdpa")),
                       ("WanMeterTextEncoderLoader", (tiny["umt5_fp16"].name, "cpu", "fp32"))):
        assert m[node].INPUT_TYPES()["hidden"]["prompt"] == "PROMPT"
        with pytest.raises(pack.nodes.common.WanMeterError, match="needs wan2.2_vae.safetensors"):
            getattr(m[node](), m[node].FUNCTION)(*args, prompt=prompt)


def test_s2v_sampler_refuses_the_wan22_vae():
    from wanmeter.s2v.audio import S2VAudioCond
    from wanmeter.s2v.sampler import sample_s2v

    audio = S2VAudioCond(features=torch.zeros(1, 25, 8, 80), num_clips=1, clip_frames=80, fps=16,
                         waveform=torch.zeros(1, 1, 16000), sample_rate=16000, duration_s=1.0)
    vae = SimpleNamespace(family="wan22", z_dim=48)
    model = SimpleNamespace(config=SimpleNamespace(num_audio_layers=25, audio_dim=8))
    with pytest.raises(WanMeterError, match="S2V-14B decodes with the Wan2.1 VAE .* load wan_2.1_vae"):
        sample_s2v(model, torch.zeros(1, 512, 8), torch.zeros(1, 512, 8), audio, torch.zeros(1, 64, 64, 3), vae,
                   width=64, height=64, steps=1)
