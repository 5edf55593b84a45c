"""The plan an estimate shows is the plan that runs.

For every bundled workflow x GPU x VRAM budget: the estimate route's reply (what the canvas shows)
names a plan; the loader node and the sampler node, given the same free memory on the tiny models
in the real file layouts (fp8_scaled where the workflow's file is), apply one. They must be equal:
weights as stored, offload, blocks streamed; and where the estimate says nothing fits, the runtime
refuses with the same reason before loading anything.

What the runtime applies is read from the bundle's RuntimeOptions and the loaded weights' dtype: the
tiny models have fewer blocks than the full-size ones, so the block streaming itself (Placement) is
exercised by tests/test_runtime.py, not here.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from wm_testutil import load_module

ROOT = Path(__file__).resolve().parents[1]
stubs = load_module("wanmeter_comfy_stubs", "comfy_stubs.py")
GIB = 1024 ** 3
GPUS = ("RTX 4090", "L40S", "A100 80GB", "H100 SXM")
BUDGETS = (8, 12, 16, 24, None)
WORKFLOWS = sorted(p.name for p in (ROOT / "workflows").glob("*.json"))
# workflow file name -> tiny fixture in the same layout (fp8_scaled where the official file is)
TINY = {"t2v_high_noise": "dit_t2v_high_fp8_scaled", "t2v_low_noise": "dit_t2v_low_fp8_scaled",
        "i2v_high_noise": "dit_i2v_high_fp8_scaled", "i2v_low_noise": "dit_i2v_low_fp8_scaled",
        "ti2v_5B": "dit_ti2v", "s2v_14B": "s2v_14b_fp8_scaled"}
DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32",
          "torch.float8_e4m3fn": "fp8_e4m3fn", "torch.float8_e5m2": "fp8_e5m2"}


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from wanmeter.tiny import ensure_tiny_models

    d = tmp_path_factory.mktemp("models")
    for sub in ("diffusion_models", "text_encoders", "vae", "audio_encoders", "loras"):
        (d / sub).mkdir(parents=True)
    tiny = ensure_tiny_models(names=sorted(set(TINY.values())))
    for name in WORKFLOWS:
        for n in json.loads((ROOT / "workflows" / name).read_text())["nodes"]:
            if n["type"] == "WanMeterModelLoader":
                for file in (n["widgets_values"][0], n["widgets_values"][-1]):
                    key = next((k for k in TINY if k in file), None)
                    dst = d / "diffusion_models" / file
                    if key and not dst.exists():
                        dst.symlink_to(tiny[TINY[key]])
    saved = dict(sys.modules)
    for name, mod in stubs.make_stubs(d).items():
        sys.modules[name] = mod
    sys.modules["folder_paths"].folder_names_and_paths["loras"] = ([str(d / "loras")], set(stubs.SUPPORTED))
    mod = stubs.import_pack()
    yield mod
    for k in list(sys.modules):
        if k not in saved:
            del sys.modules[k]
    sys.modules.update(saved)


def _widgets(pack, node: dict) -> dict:
    return pack.wanmeter.estimator.graph.named_widgets(node["type"], node["widgets_values"])


def _with_estimator(wf: dict, gpu: str, budget: float | None) -> dict:
    wf = json.loads(json.dumps(wf))
    for n in wf["nodes"]:
        if n["type"] == "WanMeterEstimator":
            n["widgets_values"] = [gpu, 0.0, 100, float(budget or 0)]
    return wf


def _runtime_plan(pack, wf: dict, sampler_id: str, free_bytes: float, gpu_key: str, monkeypatch) -> dict:
    """Load with the loader node and re-plan with the sampler node, as ComfyUI would run them."""
    memplan = importlib.import_module(stubs.PACK + ".wanmeter.memplan")
    monkeypatch.setattr(memplan, "free_memory", lambda device=None: (free_bytes, None, gpu_key))
    nodes = {str(n["id"]): n for n in wf["nodes"]}
    sampler = nodes[sampler_id]
    src = next(l[1] for l in wf["links"] if l[3] == sampler["id"] and l[4] == 0)   # the model input
    while nodes[str(src)]["type"] != "WanMeterModelLoader":
        src = next(l[1] for l in wf["links"] if l[3] == src and l[4] == 0)
    lw = _widgets(pack, nodes[str(src)])
    m = pack.NODE_CLASS_MAPPINGS
    out = m["WanMeterModelLoader"]().load(**lw)
    bundle = out["result"][0] if isinstance(out, dict) else out[0]
    sw = _widgets(pack, sampler)
    if sampler["type"] == "WanMeterS2VSampler":
        fields = {"frames": 80, "steps": sw["steps"], "cfg_high": sw["cfg"], "cfg_low": sw["cfg"], "batch_size": 1,
                  "shift": sw["shift"], "boundary": None}
    else:
        fields = {**sw, "boundary": sw["boundary"] or None}
    pack.nodes.sampler._plan_runtime(bundle, int(sw["width"]), int(sw["height"]), fields)
    rt = bundle.runtime
    weights = {str(p.dtype) for e in bundle.experts if e is not None for n, p in e.named_parameters()
               if n.startswith("blocks.") and n.endswith(".weight") and p.dim() == 2}
    return {"offload": rt.offload, "blocks_to_stream": rt.blocks_to_stream,
            "weights": {DTYPES[w] for w in weights}}


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_estimate_plan_is_the_runtime_plan(pack, workflow, monkeypatch):
    from wanmeter.estimator import get_gpu

    base = json.loads((ROOT / "workflows" / workflow).read_text())
    samplers = [str(n["id"]) for n in base["nodes"] if n["type"] in ("WanMeterSampler", "WanMeterS2VSampler")]
    checked = refused = 0
    for gpu in GPUS:
        g = get_gpu(gpu)
        for budget in BUDGETS:
            wf = _with_estimator(base, gpu, budget)
            for sid in samplers:
                status, r = pack.nodes.routes.estimate_reply({"graph": wf, "sampler_id": sid})
                assert status == 200, r
                free = (budget if budget else g.usable_gib) * GIB
                if r["suggestion"] and "does not fit" in r["suggestion"]:   # nothing fits: the runtime refuses too
                    with pytest.raises(Exception, match="does not fit"):
                        _runtime_plan(pack, wf, sid, free, g.key, monkeypatch)
                    refused += 1
                    continue
                got = _runtime_plan(pack, wf, sid, free, g.key, monkeypatch)
                want = r["plan_fields"]
                ctx = (workflow, gpu, budget, sid, r["plan"], got)
                assert got["offload"] == want["offload"], ctx
                assert got["blocks_to_stream"] == (want["blocks_to_stream"] if want["offload"] == "blocks" else 0), ctx
                assert got["weights"] == {want["weight_dtype"]}, ctx
                checked += 1
    assert checked > 0
    print(f"{workflow}: {checked} plans equal, {refused} refused by both")
