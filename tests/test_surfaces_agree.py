"""Every surface shows the same estimate: the CLI (`python -m wanmeter estimate WORKFLOW --json`), the
route the web extension calls (POST /wanmeter/estimate with the saved graph) and the queued estimator
node (its prompt), for every bundled workflow and a few GPUs."""
from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from wm_testutil import load_module

ROOT = Path(__file__).resolve().parents[1]
stubs = load_module("wanmeter_comfy_stubs", "comfy_stubs.py")
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
KEYS = ("variant", "width", "height", "frames", "steps", "plan", "plan_fields", "fits", "peak_vram_gib", "budget_gib",
        "seconds_per_video", "seconds_per_step", "time_parts", "cost_per_video", "cost_per_month", "suggestion")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")   # no model files: every surface goes by the official names
    for sub in ("diffusion_models", "text_encoders", "vae", "audio_encoders", "loras"):
        (d / sub).mkdir(parents=True)
    saved = dict(sys.modules)
    for name, mod in stubs.make_stubs(d).items():
        sys.modules[name] = mod
    sys.modules["folder_paths"].folder_names_and_paths["loras"] = ([str(d / "loras")], set(stubs.SUPPORTED))
    yield stubs.import_pack()
    for k in list(sys.modules):
        if k not in saved:
            del sys.modules[k]
    sys.modules.update(saved)


def _prompt(wf: dict, pack) -> dict:
    """The API prompt ComfyUI queues for a UI workflow (widgets by name, links as [id, slot])."""
    named = pack.wanmeter.estimator.graph.named_widgets
    links = {l[0]: l for l in wf["links"]}
    out = {}
    for n in wf["nodes"]:
        inputs = dict(named(n["type"], n.get("widgets_values")))
        for i in n.get("inputs") or []:
            if i.get("link") in links:
                inputs[i["name"]] = [str(links[i["link"]][1]), links[i["link"]][2]]
        out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return out


@pytest.mark.parametrize("wf_path", WORKFLOWS, ids=lambda p: p.name)
@pytest.mark.parametrize("gpu", ["RTX 4090", "H100 SXM"])
def test_cli_route_and_node_agree(pack, wf_path, gpu, tmp_path):
    from wanmeter.cli import main as cli

    wf = json.loads(wf_path.read_text())
    for n in wf["nodes"]:
        if n["type"] == "WanMeterEstimator":
            n["widgets_values"][0] = gpu
    status, route = pack.nodes.routes.estimate_reply({"graph": wf})
    assert status == 200, route
    est = next(n for n in wf["nodes"] if n["type"] == "WanMeterEstimator")
    node = pack.NODE_CLASS_MAPPINGS["WanMeterEstimator"]().run(*est["widgets_values"], prompt=_prompt(wf, pack))
    node = node["ui"]["wanmeter_estimate"][0]
    tmp = tmp_path / wf_path.name
    tmp.write_text(json.dumps(wf))
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli(["estimate", str(tmp), "--json"]) == 0
    cli_reply = json.loads(buf.getvalue())
    for k in KEYS:
        assert route[k] == node[k] == cli_reply[k], (wf_path.name, gpu, k, route[k], node[k], cli_reply[k])
