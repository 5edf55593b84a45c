"""Settings from the browser / workflows -> Workload, Plan; validation of untrusted payloads; the CLI;
the bench scripts' CPU dry runs."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from wanmeter.errors import WanMeterError
from wanmeter.estimator import estimate_reply, validate_settings, workload_from_settings, workload_from_ui_workflow
from wanmeter.estimator.cli_estimate import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
OK = {"variant": "t2v_a14b", "width": 1280, "height": 720, "frames": 81, "steps": 40, "gpu": "RTX 4090"}


@pytest.mark.parametrize("bad,match", [
    ({"gpu": "Voodoo 2"}, "Unknown GPU"),
    ({"frames": 0}, "frames=0 is out of range"),
    ({"steps": 100000}, "steps=100000 is out of range"),
    ({"width": 16384}, "width=16384 is out of range"),
    ({"height": -720}, "out of range"),
    ({"steps": 2.5}, "whole number"),
    ({"steps": "40"}, "must be a number"),
    ({"steps": True}, "must be a number"),
    ({"model": "../../etc/passwd"}, "not a file name inside a models folder"),
    ({"model": "sub/../../x.safetensors"}, "not a file name inside a models folder"),
    ({"model": "/etc/passwd"}, "not a file name inside a models folder"),
    ({"model": "C:\\x.safetensors"}, "not a file name inside a models folder"),
    ({"model_low_noise": "a\\..\\..\\b.safetensors"}, "not a file name inside a models folder"),
    ({"model": "x\x00.safetensors"}, "not a file name inside a models folder"),
    ({"offload": "disk"}, "offload='disk' is not supported"),
    ({"cfg": [1, 2, 3]}, "one or two guidance"),
    ({"vae_tiled": "yes"}, "true or false"),
    ({"price_per_hour": float("nan")}, "must be a number"),
])
def test_validate_settings_rejects(bad, match):
    with pytest.raises(WanMeterError, match=match):
        validate_settings({**OK, **bad})


def test_validate_settings_accepts_subfolder_model_names():
    """ComfyUI lists models in subfolders as 'sub/x.safetensors'; the estimate must take them (issue 18)."""
    for name in ("sub/x.safetensors", "wan/2.2/x.safetensors", "sub\\x.safetensors"):
        assert validate_settings({**OK, "model": name, "model_low_noise": name})["model"] == name


def test_validate_settings_rejects_non_dict_and_oversized():
    for p in ([1, 2], "not json", 3, None):
        with pytest.raises(WanMeterError):
            validate_settings(p)
    with pytest.raises(WanMeterError, match="at most 65536"):
        validate_settings({**OK, "padding": "x" * 70000})
    with pytest.raises(WanMeterError, match="at most 65536"):
        validate_settings(b"{" + b" " * 70000 + b"}")


def test_settings_to_workload_and_plan():
    s = validate_settings({**OK, "cfg_high": 3.5, "cfg_low": 1.0, "weight_dtype": "fp8_e4m3fn", "offload": "blocks",
                           "blocks_to_stream": 12, "attention": "sdpa_flash", "budget_gb": 20.0, "loras": 1,
                           "model": "wan/sub/x.safetensors"})
    assert s["gpu"] == "rtx4090"
    w, p = workload_from_settings(s)
    assert w.cfg == (3.5, 1.0) and w.loras == 1
    assert (p.weight_dtype, p.offload, p.blocks_to_stream, p.attention) == ("fp8_e4m3fn", "blocks", 12, "flash")
    assert p.budget_gib == 20.0   # the budget is in GiB everywhere (budget_gb is its old name)
    assert s["model"] == "wan/sub/x.safetensors"   # subfolders of the model folders are fine
    with pytest.raises(WanMeterError, match="4k\\+1"):
        workload_from_settings(validate_settings({**OK, "frames": 80}))
    with pytest.raises(WanMeterError, match="multiple of 32"):
        workload_from_settings(validate_settings({**OK, "variant": "ti2v_5b", "width": 1280, "height": 720}))


def test_estimate_reply_shape_and_auto_offload():
    r = estimate_reply({**OK, "offload": "auto", "videos_per_month": 10})
    assert r["fits"] and any(n.startswith("offload auto:") for n in r["notes"])
    for k in ("peak_vram_gib", "budget_gib", "ram_gib", "seconds_per_video", "seconds_per_step", "cost_per_video",
              "cost_per_month", "price_per_hour", "cheapest", "plan", "plan_fields", "time_parts"):
        assert k in r
    assert not any(k.endswith("_gb") for k in r)   # one unit: GiB
    assert r["gpu"]["key"] == "rtx4090" and r["cost_per_month"] == pytest.approx(10 * r["cost_per_video"], rel=1e-3)
    r2 = estimate_reply({**OK, "offload": "none"})
    assert not r2["fits"] and r2["suggestion"].startswith("Try:")
    json.dumps(r2)


@pytest.mark.parametrize("wf", sorted((ROOT / "workflows").glob("*.json")), ids=lambda p: p.name)
def test_workflows_parse(wf):
    w, p, s = workload_from_ui_workflow(json.loads(wf.read_text()))
    data = json.loads(wf.read_text())
    sampler = next(n for n in data["nodes"] if n["type"] in ("WanMeterSampler", "WanMeterS2VSampler"))
    if sampler["type"] == "WanMeterSampler":
        assert (w.width, w.height, w.frames, w.steps) == tuple(sampler["widgets_values"][:4])
    else:  # S2V: frames come in clips of 80
        assert (w.width, w.height, w.steps) == tuple(sampler["widgets_values"][:3])
    assert w.variant in wf.name or (wf.stem == "wan22_draft_then_final" and w.variant == "t2v_a14b")


def test_workflow_errors():
    with pytest.raises(WanMeterError, match="No WanMeter Model Loader feeds the sampler"):
        workload_from_ui_workflow({"1": {"class_type": "WanMeterSampler"}})
    with pytest.raises(WanMeterError, match="no WanMeter Model Loader"):
        workload_from_ui_workflow({"nodes": []})
    with pytest.raises(WanMeterError, match="Not a workflow"):
        workload_from_ui_workflow({"x": 1})


def test_node_inputs_come_from_the_schema(monkeypatch, tmp_path):
    """Every node's INPUT_TYPES is its node_schema.json entry, in the order widgets_values holds, and every
    widget that feeds the estimate names a declared setting."""
    from wanmeter import schema
    from wanmeter.estimator.settings import setting_specs

    spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs", ROOT / "tests" / "comfy_stubs.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    for name, mod in stubs.make_stubs(tmp_path).items():
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules["folder_paths"].folder_names_and_paths["loras"] = ([str(tmp_path)], set())
    pack = stubs.import_pack()
    try:
        widget_types = ("INT", "FLOAT", "BOOLEAN", "STRING")
        assert set(schema.node_types()) == set(pack.NODE_CLASS_MAPPINGS)
        for node_type in schema.node_types():
            spec_ = pack.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
            declared = [k for part in ("required", "optional") for k, v in spec_.get(part, {}).items()
                        if isinstance(v[0], list) or v[0] in widget_types]
            assert schema.widget_names(node_type) == declared, node_type
            assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_type] == schema.display_name(node_type)
            for w, key in schema.settings_of(node_type).items():
                assert key in setting_specs() or key == "vae_tiled_override", (node_type, w, key)
    finally:
        for k in [k for k in sys.modules if k == stubs.PACK or k.startswith(stubs.PACK + ".")]:
            del sys.modules[k]


def test_cli(capsys):
    wf = str(ROOT / "workflows" / "wan22_t2v_a14b.json")
    assert cli_main(["estimate", wf, "--gpu", "NVIDIA GeForce RTX 4090", "--rank"]) == 0
    out = capsys.readouterr().out
    assert "RTX 4090" in out and "fits" in out and "Which GPU" in out and "stream" in out   # the auto plan
    assert cli_main(["estimate", wf, "--gpu", "rtx4090", "--offload", "none"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert cli_main(["estimate", "--variant", "ti2v_5b", "--width", "1280", "--height", "704", "--frames", "121",
                     "--gpu", "h100_sxm", "--price", "2.0", "--json", "--fp8-compute", "--compile",
                     "--weight-dtype", "fp8_e4m3fn", "--step-cache", "first_block"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fits"] and d["price_per_hour"] == 2.0
    assert d["plan_fields"]["fp8_compute"] and d["plan_fields"]["compile"] and d["plan_fields"]["step_cache"] == "first_block"
    assert cli_main(["gpus"]) == 0
    assert "MI300X" in capsys.readouterr().out
    assert cli_main(["estimate", "--steps", "100000"]) == 2
    assert "out of range" in capsys.readouterr().err


def _bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return mod


def test_bench_scripts_dry_run(tmp_path, monkeypatch):
    """Both GPU scripts run end to end on CPU with tiny sizes and write their JSON."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    assert _bench("calibrate").main(["--dry-run", "--out", str(tmp_path)]) == 0
    cal = json.loads((tmp_path / "calibration_dryrun.json").read_text())
    assert "calibrate.py" in cal["elementwise_bytes_per_token_channel_block"]["source"]
    assert _bench("accuracy").main(["--dry-run", "--out", str(tmp_path)]) == 0
    acc = json.loads((tmp_path / "accuracy_dryrun.json").read_text())
    assert len(acc["official"]) == 27 and all(r["est_s"] > 0 for r in acc["official"])
    assert len(acc["measured"]) >= 5
