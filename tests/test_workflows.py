"""workflows/*.json: UI format, node types that exist, widgets_values that match INPUT_TYPES,
consistent links, official file names and defaults, and in sync with tools/make_workflows.py."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WF = ROOT / "workflows"
WORKFLOWS = sorted(WF.glob("*.json"))
OURS = {"wan22_t2v_a14b.json", "wan22_i2v_a14b.json", "wan22_ti2v_5b.json", "wan22_s2v_14b.json"}

# Native ComfyUI nodes the workflows use, with their widget count (ComfyUI 0.3.64).
NATIVE_WIDGETS = {"CreateVideo": 1, "SaveVideo": 3, "LoadImage": 2, "LoadAudio": 3, "ImageScale": 4}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}

OFFICIAL_FILES = {
    "wan22_t2v_a14b.json": {"wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                            "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"},
    "wan22_i2v_a14b.json": {"wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
                            "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"},
    "wan22_ti2v_5b.json": {"wan2.2_ti2v_5B_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan2.2_vae.safetensors"},
    "wan22_s2v_14b.json": {"wan2.2_s2v_14B_fp8_scaled.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                           "wan_2.1_vae.safetensors", "wav2vec2_large_english_fp16.safetensors"},
}
VARIANT = {"wan22_t2v_a14b.json": "t2v_a14b", "wan22_i2v_a14b.json": "i2v_a14b", "wan22_ti2v_5b.json": "ti2v_5b",
           "wan22_s2v_14b.json": "s2v_14b"}
NODE_TITLE = 30  # LiteGraph: a node's title bar is drawn above its pos
GROUP_TITLE = 34  # a group's title bar: font_size 24 plus padding


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("wanmeter_make_workflows", ROOT / "tools" / "make_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pack(tool):
    saved = {k: sys.modules.get(k) for k in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils", "server")}
    p = tool.load_pack()
    yield p
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


def _widget_count(spec: dict) -> int:
    n = 0
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            if isinstance(entry[0], list) or entry[0] in WIDGET_TYPES:
                n += 2 if name in ("seed", "noise_seed") or entry[1].get("control_after_generate") else 1
    return n


def test_our_workflows_exist():
    assert OURS <= {p.name for p in WORKFLOWS}
    for p in WORKFLOWS:
        assert p.with_suffix(".jpg").is_file(), f"{p.name} has no thumbnail"
        assert p.with_suffix(".jpg").read_bytes()[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_structure_types_widgets_links(path, pack):
    wf = json.loads(path.read_text(encoding="utf-8"))
    assert wf["version"] == 0.4
    assert "nodes" in wf and "links" in wf and "groups" in wf
    ids = [n["id"] for n in wf["nodes"]]
    assert len(set(ids)) == len(ids) and wf["last_node_id"] >= max(ids)
    assert wf["last_link_id"] >= max((l[0] for l in wf["links"]), default=0)
    by_id = {n["id"]: n for n in wf["nodes"]}
    ours = pack.NODE_CLASS_MAPPINGS
    for n in wf["nodes"]:
        t = n["type"]
        assert t in ours or t in NATIVE_WIDGETS or t in FRONTEND_ONLY, f"unknown node type {t}"
        if t in ours:
            spec = ours[t].INPUT_TYPES()
            assert len(n["widgets_values"]) == _widget_count(spec), t
            # sockets: every non-widget input appears once, in order
            sockets = [name for sec in ("required", "optional") for name, e in spec.get(sec, {}).items()
                       if not (isinstance(e[0], list) or e[0] in WIDGET_TYPES)]
            assert [i["name"] for i in n["inputs"]] == sockets, t
            assert [o["type"] for o in n["outputs"]] == list(ours[t].RETURN_TYPES), t
            _check_values(t, spec, n["widgets_values"])
        elif t in NATIVE_WIDGETS:
            assert len(n["widgets_values"]) == NATIVE_WIDGETS[t], t
    seen = set()
    for lid, src, si, dst, di, typ in wf["links"]:
        assert lid not in seen
        seen.add(lid)
        out, inp = by_id[src]["outputs"][si], by_id[dst]["inputs"][di]
        assert lid in (out["links"] or []) and inp["link"] == lid
        assert out["type"] == typ == inp["type"], (lid, out["type"], typ, inp["type"])
    for n in wf["nodes"]:
        for i in n.get("inputs", []):
            assert i["link"] is None or i["link"] in seen
            if n["type"] in ours and n["mode"] == 0 and i.get("shape") != 7:
                assert i["link"] is not None, f"{n['type']}.{i['name']} (required) is not connected"
        for o in n.get("outputs", []):
            for lid in o["links"] or []:
                assert lid in seen


def _check_values(t: str, spec: dict, values: list) -> None:
    it = iter(values)
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            typ, opts = entry[0], entry[1]
            if not (isinstance(typ, list) or typ in WIDGET_TYPES):
                continue
            v = next(it)
            if name in ("seed", "noise_seed"):
                assert next(it) in ("fixed", "increment", "decrement", "randomize")
            if isinstance(typ, list):
                if name not in ("model", "model_low_noise", "text_encoder", "vae", "audio_encoder"):  # file lists are machine-specific
                    assert v in typ, f"{t}.{name}={v!r} not in {typ}"
            elif typ in ("INT", "FLOAT"):
                assert opts.get("min", -1e30) <= v <= opts.get("max", 1e30), f"{t}.{name}={v}"
                if typ == "INT":
                    assert isinstance(v, int)
            elif typ == "BOOLEAN":
                assert isinstance(v, bool)
            elif typ == "STRING":
                assert isinstance(v, str)


@pytest.mark.parametrize("name", sorted(OURS))
def test_official_files_and_defaults(name, pack):
    from wanmeter.variants import variant

    wf = json.loads((WF / name).read_text(encoding="utf-8"))
    strings = {v for n in wf["nodes"] for v in n["widgets_values"] if isinstance(v, str)}
    assert OFFICIAL_FILES[name] <= strings
    f = variant(VARIANT[name])
    types = {n["type"] for n in wf["nodes"]}
    assert "WanMeterEstimator" in types
    loader = next(n for n in wf["nodes"] if n["type"] == "WanMeterModelLoader")["widgets_values"]
    assert loader[6:8] == [False, False]  # fp8_compute, compile: off
    if VARIANT[name] == "s2v_14b":
        s = next(n for n in wf["nodes"] if n["type"] == "WanMeterS2VSampler")["widgets_values"]
        assert [s[0], s[1]] in [list(x) for x in f["sizes"]]
        assert s[2] == f["default_steps"] and s[3] == f["default_cfg"][0] and s[4] == f["default_shift"]
        assert {"LoadImage", "LoadAudio", "WanMeterS2VAudio", "CreateVideo", "SaveVideo"} <= types
        return
    s = next(n for n in wf["nodes"] if n["type"] == "WanMeterSampler")["widgets_values"]
    assert s[-3:] == ["none", 0.0, 1]  # step_cache, cache_threshold, num_gpus: off
    assert [s[0], s[1]] in [list(x) for x in f["sizes"]]
    assert s[2] == f["default_frames"] and s[3] == f["default_steps"] and s[6] == f["default_shift"]
    assert s[4] == f["default_cfg"][0]
    fps = next(n for n in wf["nodes"] if n["type"] == "CreateVideo")["widgets_values"][0]
    assert fps == f["fps"]
    types = {n["type"] for n in wf["nodes"]}
    assert {"WanMeterEstimator", "WanMeterModelLoader", "WanMeterSampler", "CreateVideo", "SaveVideo"} <= types
    if name != "wan22_t2v_a14b.json":
        assert "LoadImage" in types


@pytest.mark.parametrize("name", sorted(OURS))
def test_group_layout(name):
    """Group title bars never sit under a node; a group covers each node it overlaps (title bar
    included); groups do not overlap each other."""
    wf = json.loads((WF / name).read_text(encoding="utf-8"))

    def inter(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    boxes = {n["id"]: (n["pos"][0], n["pos"][1] - NODE_TITLE, n["size"][0], n["size"][1] + NODE_TITLE)
             for n in wf["nodes"]}
    groups = [g["bounding"] for g in wf["groups"]]
    assert groups
    for g in groups:
        title = (g[0], g[1], g[2], GROUP_TITLE)
        for nid, box in boxes.items():
            assert not inter(title, box), f"{name}: group title at {g} is under node {nid}"
            if inter(g, box):
                assert g[0] <= box[0] and g[1] <= box[1] and box[0] + box[2] <= g[0] + g[2] \
                    and box[1] + box[3] <= g[1] + g[3], f"{name}: node {nid} sticks out of group {g}"
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            assert not inter(a, b), f"{name}: groups {a} and {b} overlap"
    grouped = [nid for nid, box in boxes.items() if any(inter(g, box) for g in groups)]
    assert len(grouped) == len(boxes), f"{name}: nodes outside every group"


@pytest.mark.parametrize("name", sorted(OURS))
def test_in_sync_with_generator(name, tool, pack):
    key = VARIANT[name]
    built = json.loads(json.dumps(tool.build(pack, key)))
    assert built == json.loads((WF / name).read_text(encoding="utf-8")), \
        "workflow is stale: run python tools/make_workflows.py"


def test_native_types_exist_in_comfyui():
    comfy = os.environ.get("WANMETER_COMFYUI")
    if not comfy or not (Path(comfy) / "nodes.py").is_file():
        pytest.skip("set WANMETER_COMFYUI to a ComfyUI checkout to check the native node types")
    text = (Path(comfy) / "nodes.py").read_text(encoding="utf-8")
    extras = "\n".join(p.read_text(encoding="utf-8") for p in (Path(comfy) / "comfy_extras").glob("*.py"))
    for t in NATIVE_WIDGETS:
        assert re.search(rf'"{t}"\s*:\s*{t}\b', text) or re.search(rf'node_id="{t}"', extras), t


# ---------------------------------------------------------------- model downloads and thumbnails (issue 14)

@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_carry_model_downloads(path, tool):
    """Every model file a loader names has a download entry (name, url, directory) on that loader's
    properties.models and in the root models list, as the official templates do: the frontend offers
    the downloads of missing files from them."""
    wf = json.loads(path.read_text(encoding="utf-8"))
    root = wf.get("models")
    assert isinstance(root, list) and root, "no root models list"
    named = set()
    for n in wf["nodes"]:
        files = [v for v in n.get("widgets_values") or [] if isinstance(v, str) and v.endswith((".safetensors", ".gguf"))]
        named |= set(files)
        entries = n.get("properties", {}).get("models", [])
        assert sorted(m["name"] for m in entries) == sorted(files), (n["type"], entries, files)
        for m in entries:
            assert set(m) == {"name", "url", "directory"}
            assert m["url"].startswith("https://huggingface.co/Comfy-Org/") and m["url"].endswith("/" + m["name"])
            assert m in root
    assert sorted(m["name"] for m in root) == sorted(named)
    dirs = {"wan_2.1_vae.safetensors": "vae", "wan2.2_vae.safetensors": "vae", tool.TEXT_ENCODER: "text_encoders",
            tool.AUDIO_ENCODER: "audio_encoders"}
    for m in root:
        assert m["directory"] == dirs.get(m["name"], "diffusion_models"), m
        assert f"/split_files/{m['directory']}/" in m["url"], m


def test_model_downloads_equal_the_official_templates(tool):
    """The urls are the ones the official Wan2.2 templates give (PyPI comfyui-workflow-templates-json),
    when that package is installed."""
    pytest.importorskip("comfyui_workflow_templates_json")
    import comfyui_workflow_templates_json as t

    official = {}
    root = Path(t.__file__).parent / "templates"
    for name in ("video_wan2_2_14B_t2v", "video_wan2_2_14B_i2v", "video_wan2_2_5B_ti2v", "video_wan2_2_14B_s2v"):
        wf = json.loads((root / f"{name}.json").read_text(encoding="utf-8"))
        nodes = list(wf["nodes"]) + [n for sg in wf.get("definitions", {}).get("subgraphs", []) for n in sg["nodes"]]
        for n in nodes:
            for m in (n.get("properties") or {}).get("models") or []:
                official[m["name"]] = (m["directory"], m["url"])
    for name, (directory, url) in tool.MODEL_DOWNLOADS.items():
        assert official.get(name) == (directory, url), name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_thumbnails_state_the_current_estimate(path, tool, pack):
    """A card's figures are what the estimator gives now (the card keeps its lines in the JPEG comment;
    the same lines are drawn). When this fails, the estimator changed: run python tools/make_workflows.py."""
    wf = json.loads(path.read_text(encoding="utf-8"))
    want = tool.draft_estimate_lines() if path.stem == tool.DRAFT["file"] else tool.estimate_lines(wf)
    assert tool.card_text(path.with_suffix(".jpg")) == "\n".join(want), \
        f"{path.with_suffix('.jpg').name} is stale: run python tools/make_workflows.py"
