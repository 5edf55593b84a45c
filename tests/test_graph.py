"""wanmeter.graph: official ComfyUI Wan2.2 templates (untouched, from PyPI comfyui-workflow-templates-json),
synthetic kijai WanVideoWrapper graphs, API prompts, bad input; the native / kijai runtime models, the
WanMeter alternative line, local self-calibration and the GPU table's measured flag."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from wanmeter.errors import WanMeterError
from wanmeter.estimator import Plan, Workload, estimate, get_gpu, load_gpus, rank_gpus
from wanmeter.estimator.alternative import alternative_line
from wanmeter.estimator.local_calibration import corrected, correction, record, steps_of
from wanmeter.graph import pipelines, read_graph
from wanmeter.graph.estimate import estimate_pipeline, workload_plan
from wanmeter.graph.read import MAX_NODES, node_widgets
from wanmeter.graph.values import safe_eval

ROOT = Path(__file__).resolve().parents[1]
templates_pkg = pytest.importorskip("comfyui_workflow_templates_json",
                                    reason="pip install comfyui-workflow-templates-json (.ci/run installs it)")
TEMPLATES = Path(templates_pkg.__file__).parent / "templates"
WAN22 = sorted(TEMPLATES.glob("video_wan2_2_*.json"))


def load(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- official templates

def test_every_official_wan22_template_is_present():
    names = {p.stem for p in WAN22}
    for n in ("14B_t2v", "14B_i2v", "5B_ti2v", "14B_s2v", "14B_flf2v", "14B_fun_control", "14B_fun_inpaint",
              "14B_fun_camera", "5B_fun_control", "5B_fun_inpaint"):
        assert f"video_wan2_2_{n}" in names


@pytest.mark.parametrize("path", WAN22, ids=lambda p: p.stem)
def test_official_template_gets_an_estimate(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    before = copy.deepcopy(data)
    ps = pipelines(read_graph(data))
    assert data == before                     # untouched
    assert ps and ps[0]["current"] and ps[0]["active"]
    for p in ps:
        assert p["runtime"] == "comfy_native" and p["label"] and p["model_files"][0][0] == "diffusion_models"
        for gpu in ("rtx4090", "h100_sxm"):
            e = estimate_pipeline(p, get_gpu(gpu))
            assert e.plan.runtime == "comfy_native"
            assert math.isfinite(e.per_video_s) and e.per_video_s > 0 and e.vram_peak_gib > 0
            assert any("modelled from source, not measured" in n for n in e.notes)
            w, plan = workload_plan(p)
            line = alternative_line(w, plan, get_gpu(gpu))
            assert line.startswith("WanMeter nodes, same video on") and "Change: WanMeter Model Loader" in line


def test_t2v_template_both_copies():
    """The subgraph-wrapped A14B template: 20-step CFG pipeline (saved state) and the 4-step lightx2v one
    behind its 'Enable Lightning LoRA' switch; KSamplerAdvanced start/end steps give the expert split."""
    ps = pipelines(read_graph(load("video_wan2_2_14B_t2v")))
    assert len(ps) == 2
    a, b = ps
    assert (a["variant"], a["width"], a["height"], a["frames"]) == ("t2v_a14b", 640, 640, 81)
    assert (a["steps"], a["cfg"], a["high_noise_steps"], a["loras"], a["current"]) == (20, [3.5, 3.5], 10, 0, True)
    assert (b["steps"], b["cfg"], b["high_noise_steps"], b["loras"], b["current"]) == (4, [1.0, 1.0], 2, 1, False)
    assert "lightx2v" in b["label"] and "Lightning" in b["label"]
    assert a["weight_dtype"] == "fp8_e4m3fn" and a["text_encoder_dtype"] == "fp8_e4m3fn"
    assert ":" in a["sampler_id"]          # inside the subgraph: "<instance>:<node>"
    assert ("diffusion_models", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors") in a["model_files"]
    w, _ = workload_plan(a)
    assert w.expert_steps() == (10, 10)


def test_ti2v_and_s2v_templates():
    (t,) = pipelines(read_graph(load("video_wan2_2_5B_ti2v")))
    assert (t["variant"], t["width"], t["height"], t["frames"], t["steps"], t["cfg"], t["shift"]) == \
        ("ti2v_5b", 1280, 704, 121, 20, [5.0], 8.0)
    s = pipelines(read_graph(load("video_wan2_2_14B_s2v")))
    cur = s[0]
    # one WanSoundImageToVideo chunk + the extend subgraphs that are not bypassed: 3 chunks of 77 frames
    assert (cur["variant"], cur["s2v_clips"], cur["frames"], cur["steps"]) == ("s2v_14b", 3, 77, 4)
    assert any(not p["active"] for p in s)          # the bypassed 20-step copy, estimated as if enabled


def test_flf2v_bypassed_copy_is_marked():
    ps = pipelines(read_graph(load("video_wan2_2_14B_flf2v")))
    assert [p["active"] for p in ps] == [True, False]
    assert ps[1]["label"].endswith("(bypassed)")


def test_api_prompt_reads_like_the_ui_workflow():
    api = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan2.2_ti2v_5B_fp16.safetensors", "weight_dtype": "fp8_e4m3fn_fast"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8}},
        "3": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5_xxl_fp16.safetensors", "type": "wan", "device": "cpu"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 0], "text": "a cat"}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": "wan2.2_vae.safetensors"}},
        "6": {"class_type": "Wan22ImageToVideoLatent", "inputs": {"vae": ["5", 0], "width": 1280, "height": 704, "length": 121, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["4", 0], "negative": ["4", 0], "latent_image": ["6", 0],
                                                   "seed": 1, "steps": 30, "cfg": 5, "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1}},
        "8": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["7", 0], "vae": ["5", 0], "tile_size": 512, "overlap": 64,
                                                         "temporal_size": 64, "temporal_overlap": 8}},
    }
    (p,) = pipelines(read_graph(api))
    assert (p["steps"], p["weight_dtype"], p["fp8_compute"], p["vae_tiled"], p["text_encoder_device"]) == \
        (30, "fp8_e4m3fn", True, True, "cpu")
    e = estimate_pipeline(p, get_gpu("h100_sxm"))
    assert e.plan.fp8_compute and e.plan.vae_tiled


# ---------------------------------------------------------------- bad input: one line, no trace

def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def _ui(nodes, links=(), subgraphs=()):
    return {"nodes": list(nodes), "links": [list(ln) for ln in links], "definitions": {"subgraphs": list(subgraphs)}}


def _n(i, t, widgets=(), inputs=(), outputs=(), mode=0):
    return {"id": i, "type": t, "mode": mode, "widgets_values": list(widgets),
            "inputs": [{"name": n, "type": ty, "link": ln} for n, ty, ln in inputs],
            "outputs": [{"name": ty, "type": ty, "links": []} for ty in outputs]}


def test_two_models_and_no_sampler():
    g = read_graph(_ui([_n(1, "UNETLoader", ["wan2.2_t2v_high_noise_14B_fp16.safetensors", "default"], outputs=["MODEL"]),
                        _n(2, "UNETLoader", ["wan2.2_t2v_low_noise_14B_fp16.safetensors", "default"], outputs=["MODEL"])]))
    with pytest.raises(WanMeterError) as ei:
        pipelines(g)
    assert "no active" in _one_line(ei) and "sampler" in str(ei.value)


def _chain(unet="wan2.2_ti2v_5B_fp16.safetensors"):
    return _ui([_n(1, "UNETLoader", [unet, "default"], outputs=["MODEL"]),
                _n(2, "Wan22ImageToVideoLatent", [1280, 704, 121, 1], outputs=["LATENT"]),
                _n(3, "KSampler", [1, "fixed", 20, 5, "uni_pc", "simple", 1],
                   inputs=[("model", "MODEL", 1), ("latent_image", "LATENT", 2)], outputs=["LATENT"])],
               links=[(1, 1, 0, 3, 0, "MODEL"), (2, 2, 0, 3, 1, "LATENT")])


def test_minimal_chain_and_non_wan_models():
    (p,) = pipelines(read_graph(_chain()))
    assert (p["variant"], p["steps"], p["cfg"]) == ("ti2v_5b", 20, [5.0])
    for name in ("flux1-dev.safetensors", "sd_xl_base_1.0.safetensors"):
        with pytest.raises(WanMeterError) as ei:
            pipelines(read_graph(_chain(name)))
        assert name in _one_line(ei) and "not a Wan2.2 model" in str(ei.value)
    with pytest.raises(WanMeterError) as ei:
        pipelines(read_graph(_chain("")))
    assert "no model file selected" in _one_line(ei)


def test_loop_is_refused():
    wf = _chain()
    wf["nodes"].append(_n(4, "LatentConcat", ["t"], inputs=[("samples1", "LATENT", 4), ("samples2", "LATENT", 5)], outputs=["LATENT"]))
    wf["nodes"][1]["inputs"] = [{"name": "samples", "type": "LATENT", "link": 5}]
    wf["links"] += [[4, 3, 0, 4, 0, "LATENT"], [5, 4, 0, 2, 0, "LATENT"]]
    with pytest.raises(WanMeterError) as ei:
        read_graph(wf)
    assert "loop" in _one_line(ei)


def _nested(depth: int) -> dict:
    """The minimal chain wrapped in `depth` nested subgraphs (no inputs/outputs needed: all inside)."""
    inner = _chain()
    subgraphs = []
    nodes = inner["nodes"]
    links = inner["links"]
    for d in range(depth):
        sid = f"00000000-0000-0000-0000-{d:012d}"
        subgraphs.append({"id": sid, "name": f"level {d}", "nodes": nodes, "links": links, "inputs": [], "outputs": []})
        nodes, links = [{"id": 100 + d, "type": sid, "mode": 0, "inputs": [], "outputs": [], "widgets_values": []}], []
    return _ui(nodes, links, subgraphs)


def test_nested_subgraphs():
    g = read_graph(_nested(2))
    (p,) = pipelines(g)
    assert p["sampler_id"] == "101:100:3"
    with pytest.raises(WanMeterError) as ei:
        read_graph(_nested(9))
    assert "nested more than 8" in _one_line(ei)
    wf = _nested(1)
    sg = wf["definitions"]["subgraphs"][0]
    sg["nodes"].append({"id": 50, "type": sg["id"], "mode": 0, "inputs": [], "outputs": []})   # contains itself
    with pytest.raises(WanMeterError) as ei:
        read_graph(wf)
    assert "contains itself" in _one_line(ei)


def test_node_count_is_bounded():
    wf = _chain()
    wf["nodes"] += [_n(10 + i, "Note", ["x"]) for i in range(MAX_NODES - 3)]
    assert len(pipelines(read_graph(wf))) == 1
    wf["nodes"].append(_n(9_999_999, "Note", ["x"]))
    with pytest.raises(WanMeterError) as ei:
        read_graph(wf)
    assert str(MAX_NODES) in _one_line(ei)


def test_math_expression_is_arithmetic_only():
    assert safe_eval("floor(a * b) + 1", {"a": 5, "b": 16}) == 81
    for bad in ("__import__('os').system('x')", "a.__class__", "2 ** 99999", "[1] * 9", "open('f')"):
        assert safe_eval(bad, {"a": 1}) is None


# ---------------------------------------------------------------- kijai (synthetic: no official file on PyPI)

def _kijai(blocks=20, prefetch=1, quant="fp8_e4m3fn_scaled", attention="sageattn", tiled=True, split=12) -> dict:
    hi, lo = "Wan2_2-T2V-A14B_HIGH_fp8_e4m3fn_scaled_KJ.safetensors", "Wan2_2-T2V-A14B-LOW_fp8_e4m3fn_scaled_KJ.safetensors"
    nodes = [
        _n(1, "WanVideoBlockSwap", [blocks, False, False, True, 0, prefetch, False], outputs=["BLOCKSWAPARGS"]),
        _n(2, "WanVideoTorchCompileSettings", ["inductor", False, "default", False, 64, True], outputs=["WANCOMPILEARGS"]),
        _n(3, "WanVideoModelLoader", [hi, "bf16", quant, "offload_device", attention],
           inputs=[("block_swap_args", "BLOCKSWAPARGS", 1), ("compile_args", "WANCOMPILEARGS", 2)], outputs=["WANVIDEOMODEL"]),
        _n(4, "WanVideoModelLoader", [lo, "bf16", quant, "offload_device", attention],
           inputs=[("block_swap_args", "BLOCKSWAPARGS", 3), ("compile_args", "WANCOMPILEARGS", 4)], outputs=["WANVIDEOMODEL"]),
        _n(5, "LoadWanVideoT5TextEncoder", ["umt5-xxl-enc-bf16.safetensors", "bf16", "offload_device", "disabled"], outputs=["WANTEXTENCODER"]),
        _n(6, "WanVideoTextEncode", ["a cat", "blurry", True], inputs=[("t5", "WANTEXTENCODER", 5)], outputs=["WANVIDEOTEXTEMBEDS"]),
        _n(7, "WanVideoEmptyEmbeds", [832, 480, 81], outputs=["WANVIDIMAGE_EMBEDS"]),
        _n(8, "WanVideoSampler", [20, 3.5, 8.0, 1, "fixed", True, "unipc", 0, 1.0, False, "comfy", 0, split, False],
           inputs=[("model", "WANVIDEOMODEL", 5), ("image_embeds", "WANVIDIMAGE_EMBEDS", 6), ("text_embeds", "WANVIDEOTEXTEMBEDS", 7)],
           outputs=["LATENT"]),
        _n(9, "WanVideoSampler", [20, 3.5, 8.0, 1, "fixed", True, "unipc", 0, 1.0, False, "comfy", split, -1, False],
           inputs=[("model", "WANVIDEOMODEL", 8), ("image_embeds", "WANVIDIMAGE_EMBEDS", 9), ("text_embeds", "WANVIDEOTEXTEMBEDS", 10),
                   ("samples", "LATENT", 11)], outputs=["LATENT"]),
        _n(10, "WanVideoVAELoader", ["Wan2_1_VAE_bf16.safetensors", "bf16"], outputs=["WANVAE"]),
        _n(11, "WanVideoDecode", [tiled, 272, 272, 144, 128], inputs=[("vae", "WANVAE", 12), ("samples", "LATENT", 13)], outputs=["IMAGE"]),
    ]
    links = [(1, 1, 0, 3, 0, "BLOCKSWAPARGS"), (2, 2, 0, 3, 1, "WANCOMPILEARGS"), (3, 1, 0, 4, 0, "BLOCKSWAPARGS"),
             (4, 2, 0, 4, 1, "WANCOMPILEARGS"), (5, 3, 0, 8, 0, "WANVIDEOMODEL"), (6, 7, 0, 8, 1, "WANVIDIMAGE_EMBEDS"),
             (7, 6, 0, 8, 2, "WANVIDEOTEXTEMBEDS"), (8, 4, 0, 9, 0, "WANVIDEOMODEL"), (9, 7, 0, 9, 1, "WANVIDIMAGE_EMBEDS"),
             (10, 6, 0, 9, 2, "WANVIDEOTEXTEMBEDS"), (11, 8, 0, 9, 3, "LATENT"), (12, 10, 0, 11, 0, "WANVAE"),
             (13, 9, 0, 11, 1, "LATENT"), (14, 5, 0, 6, 0, "WANTEXTENCODER")]
    return _ui(nodes, links)


def test_kijai_graph_settings():
    (p,) = pipelines(read_graph(_kijai()))
    assert (p["runtime"], p["variant"], p["width"], p["height"], p["frames"], p["steps"]) == ("kijai", "t2v_a14b", 832, 480, 81, 20)
    assert (p["offload"], p["blocks_to_stream"], p["prefetch_blocks"], p["attention"], p["compile"]) == ("blocks", 20, 1, "sage", True)
    assert (p["weight_dtype"], p["fp8_compute"], p["vae_tiled"], p["shift"]) == ("fp8_e4m3fn", False, True, 8.0)
    assert p["high_noise_steps"] == 12               # end_step of the high-noise sampler / start_step of the low one
    e = estimate_pipeline(p, get_gpu("rtx4090"))
    assert e.plan.runtime == "kijai" and e.plan.blocks_to_stream == 20
    assert any("modelled from source, not measured" in n for n in e.notes)


def test_kijai_block_swap_without_prefetch_waits_for_copies():
    g4090 = get_gpu("rtx4090")
    with_pf = estimate_pipeline(pipelines(read_graph(_kijai(prefetch=1)))[0], g4090)
    without = estimate_pipeline(pipelines(read_graph(_kijai(prefetch=0)))[0], g4090)
    assert without.denoise_parts["streaming"] > with_pf.denoise_parts["streaming"]
    # the exposed part is the whole copy: 20 blocks x block bytes / pageable link per forward
    assert any("without prefetch" in n for n in without.notes)


# ---------------------------------------------------------------- the native runtime model

def test_native_partial_loading_on_a_small_card():
    w = Workload(variant="t2v_a14b", width=1280, height=720, frames=81, steps=20, cfg=3.5)
    native = estimate(w, Plan(weight_dtype="fp8_e4m3fn", runtime="comfy_native"), get_gpu("rtx4090"))
    assert native.plan.offload == "blocks" and 0 < native.plan.blocks_to_stream < 40
    assert native.fits and any("partially" in n for n in native.notes)
    # the same plan run by WanMeter hides the copies under compute; ComfyUI 0.3.64 copies synchronously
    ours = estimate(w, native.plan.with_(runtime="wanmeter", prefetch_blocks=None, budget_gib=None), get_gpu("rtx4090"))
    assert native.denoise_parts["streaming"] > ours.denoise_parts["streaming"]


def test_native_keeps_everything_on_a_big_card_and_frees_for_decode():
    w = Workload(variant="t2v_a14b", width=640, height=640, frames=81, steps=20, cfg=3.5)
    e = estimate(w, Plan(weight_dtype="fp8_e4m3fn", text_encoder_dtype="fp8_e4m3fn", runtime="comfy_native"), get_gpu("h200"))
    assert e.plan.offload == "none" and not e.plan.text_encoder_unload
    small = estimate(w, Plan(weight_dtype="fp8_e4m3fn", runtime="comfy_native"), get_gpu("rtx4090"))
    assert small.plan.offload == "model"
    assert small.vram_phases_gib["decode"] < small.vram_phases_gib["sampling"]


# ---------------------------------------------------------------- self-calibration and the GPU table

def test_self_calibration_corrects_a_wrong_gpu_entry_after_one_run(tmp_path):
    """A user GPU file claims the RTX 4090 is twice as fast as it is; one recorded run (measured = what the
    true entry predicts, standing in for the real card) corrects later estimates on that GPU."""
    wrong_file = tmp_path / "gpus.json"
    wrong_file.write_text(json.dumps({"gpus": {"rtx4090": {"achieved_bf16_tflops": 330, "bf16_tflops": 330}}}))
    wrong = load_gpus(str(wrong_file))["rtx4090"]
    true = load_gpus()["rtx4090"]
    w = Workload(variant="ti2v_5b", width=1280, height=704, frames=121, steps=20, cfg=5.0)
    plan = Plan(weight_dtype="fp8_e4m3fn", runtime="comfy_native")
    est = estimate(w, plan, wrong)
    real = estimate(w, plan, true)
    real_step = real.denoise_s / steps_of(w)
    assert est.denoise_s / steps_of(w) < 0.75 * real_step               # the wrong entry is far off
    cal_file = tmp_path / "user" / "wanmeter_calibration.json"
    assert correction(cal_file, "rtx4090").runs == 0
    record(cal_file, "rtx4090", w, plan, est, {"s_per_step": real_step, "peak_vram_gib": real.vram_peak_gib * 1.05})
    c = correction(cal_file, "rtx4090", "comfy_native")
    assert c.runs == 1 and "calibrated on this GPU: 1 run" in c.text
    fixed = corrected(estimate(w, plan, wrong), c)
    assert fixed.denoise_s / steps_of(w) == pytest.approx(real_step, rel=0.01)
    assert fixed.vram_peak_gib == pytest.approx(real.vram_peak_gib * 1.05, rel=0.01)
    assert fixed.notes[0] == c.text
    # another size on the same GPU moves toward the truth as well
    w2 = w.with_(width=832, height=480, frames=81)
    far = abs(estimate(w2, plan, wrong).denoise_s / estimate(w2, plan, true).denoise_s - 1)
    near = abs(corrected(estimate(w2, plan, wrong), c).denoise_s / estimate(w2, plan, true).denoise_s - 1)
    assert near < far / 3
    assert correction(cal_file, "h100_sxm").runs == 0                   # other GPUs unaffected


def test_self_calibration_rejects_nonsense_and_survives_a_damaged_file(tmp_path):
    w, plan, g = Workload(variant="ti2v_5b"), Plan(), get_gpu("rtx4090")
    e = estimate(w, plan, g)
    f = tmp_path / "cal.json"
    with pytest.raises(WanMeterError) as ei:
        record(f, "rtx4090", w, plan, e, {"s_per_step": e.denoise_s / steps_of(w) * 1000})
    assert "not recorded" in _one_line(ei)
    f.write_text("{not json")
    assert correction(f, "rtx4090").runs == 0
    record(f, "rtx4090", w, plan, e, {"s_per_step": e.denoise_s / steps_of(w)})
    assert correction(f, "rtx4090").runs == 1


def test_unmeasured_gpus_are_labelled_and_mi300x_does_not_rank_first():
    w = Workload(variant="t2v_a14b", width=1280, height=720, frames=81)
    gpus = load_gpus()
    assert {k for k, g in gpus.items() if g.measured} == {"h100_sxm", "h200"}
    assert any("not measured" in n for n in estimate(w, Plan(), gpus["rtx4090"]).notes)
    assert not any("not measured" in n for n in estimate(w, Plan(), gpus["h200"]).notes)
    assert estimate(w, Plan(), gpus["mi300x"]).to_dict()["gpu_measured"] is False
    assert rank_gpus(w, Plan())[0].gpu.key != "mi300x"


# ---------------------------------------------------------------- widget names of our own nodes

def test_wanmeter_widget_names_match_our_node_classes(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs", ROOT / "tests" / "comfy_stubs.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    for name, mod in stubs.make_stubs(tmp_path).items():
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules["folder_paths"].folder_names_and_paths["loras"] = ([str(tmp_path)], set())
    pack = stubs.import_pack()
    try:
        ours = {t: list(node_widgets()[t]) for t in pack.NODE_CLASS_MAPPINGS}   # read from node_schema.json
        declared = {}
        for t, cls in pack.NODE_CLASS_MAPPINGS.items():
            names = []
            for part in ("required", "optional"):
                for k, v in cls.INPUT_TYPES().get(part, {}).items():
                    if isinstance(v[0], list) or v[0] in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"):
                        names.append(k)
                        if k in ("seed", "noise_seed") or (len(v) > 1 and isinstance(v[1], dict)
                                                            and v[1].get("control_after_generate")):
                            names.append("control_after_generate")
            declared[t] = names
        assert ours == declared
        assert all(node_widgets()[t] == tuple(v) for t, v in ours.items())
    finally:
        for k in [k for k in sys.modules if k == stubs.PACK or k.startswith(stubs.PACK + ".")]:
            del sys.modules[k]


# ---------------------------------------------------------------- file headers when the files exist

def test_variant_and_precision_from_the_file_header_when_found():
    from wanmeter.tiny import ensure_tiny_models

    tiny = ensure_tiny_models(names=["dit_t2v_high_fp8_scaled", "dit_t2v_low_fp8_scaled", "dit_ti2v"])
    files = {"wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": tiny["dit_t2v_high_fp8_scaled"],
             "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": tiny["dit_t2v_low_fp8_scaled"]}
    seen = []

    def find(folder, name):
        seen.append((folder, name))
        return str(files[name]) if name in files else None

    p = pipelines(read_graph(load("video_wan2_2_14B_t2v")), find)[0]
    assert ("diffusion_models", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors") in seen
    assert p["variant"] == "t2v_a14b" and p["weight_dtype"] == "fp8_e4m3fn"
    assert any("read from the file header" in n for n in p["notes"])
    # the header wins over the name: a file named like the 5B model that is an A14B expert
    (q,) = pipelines(read_graph(_chain()), lambda f, n: str(tiny["dit_t2v_high_fp8_scaled"]))
    assert q["variant"] == "t2v_a14b"
    (r,) = pipelines(read_graph(_chain("wan2.2_t2v_high_noise_14B_fp16.safetensors")), lambda f, n: str(tiny["dit_ti2v"]))
    assert r["variant"] == "ti2v_5b"


def test_a_non_wan_file_on_disk_gives_one_line(tmp_path):
    from safetensors.numpy import save_file
    import numpy as np

    f = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": np.zeros((8, 4), np.float32)}, str(f))
    with pytest.raises(WanMeterError) as ei:
        pipelines(read_graph(_chain("flux1-dev.safetensors")), lambda folder, name: str(f))
    assert "UNETLoader" in _one_line(ei)


# ---------------------------------------------------------------- damaged files: an answer or one line, never a trace

def test_damaged_templates_never_raise_anything_but_wanmeter_errors():
    import random

    rng = random.Random(1234)
    base = [json.loads(p.read_text(encoding="utf-8")) for p in WAN22]
    junk = [None, -1, 0, 10 ** 30, 1e308, float("nan"), "", "x", [], {}, [1, 2], {"a": 1}, True]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        d = copy.deepcopy(rng.choice(base))
        scopes = [d] + d.get("definitions", {}).get("subgraphs", [])
        sc = rng.choice(scopes)
        for _k in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.5 and isinstance(sc.get("nodes"), list) and sc["nodes"]:
                n = rng.choice(sc["nodes"])
                if not isinstance(n, dict):
                    continue
                field = rng.choice(["widgets_values", "inputs", "mode", "type", "id", "outputs"])
                if field == "widgets_values" and isinstance(n.get("widgets_values"), list) and n["widgets_values"]:
                    n["widgets_values"][rng.randrange(len(n["widgets_values"]))] = rng.choice(junk)
                elif field == "inputs" and isinstance(n.get("inputs"), list) and n["inputs"] \
                        and all(isinstance(i, dict) for i in n["inputs"]):
                    n["inputs"][rng.randrange(len(n["inputs"]))]["link"] = rng.choice(junk + [rng.randint(0, 500)])
                else:
                    n[field] = rng.choice(junk)
            elif kind < 0.8 and isinstance(sc.get("links"), list) and sc["links"]:
                ln = rng.choice(sc["links"])
                if isinstance(ln, list) and ln:
                    ln[rng.randrange(len(ln))] = rng.choice(junk + [rng.randint(-20, 200)])
                elif isinstance(ln, dict) and ln:
                    ln[rng.choice(list(ln))] = rng.choice(junk + [rng.randint(-20, 200)])
            else:
                sc[rng.choice(["nodes", "links"])] = rng.choice(junk)
        try:
            for p in pipelines(read_graph(d)):
                estimate_pipeline(p, get_gpu("rtx4090"))
            outcomes["ok"] += 1
        except WanMeterError as e:
            assert "\n" not in str(e)
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"]


def test_estimate_graph_one_call_per_workflow(tmp_path):
    from wanmeter.graph.estimate import estimate_graph
    from wanmeter.estimator.local_calibration import record

    g = get_gpu("rtx4090")
    data = load("video_wan2_2_14B_t2v")
    out = estimate_graph(data, g)
    assert [r["current"] for r in out] == [True, False] and out[0]["calibrated"] is None
    assert out[0]["alternative"].startswith("WanMeter nodes") and out[0]["estimate"]["runtime"] == "comfy_native"
    w, p = workload_plan(pipelines(read_graph(data))[0])
    e = estimate(w, p, g)
    cal = tmp_path / "cal.json"
    record(cal, g.key, w, p, e, {"s_per_step": e.denoise_s / steps_of(w) * 0.8})
    again = estimate_graph(data, g, calibration_path=cal)
    assert again[0]["calibrated"].startswith("calibrated on this GPU: 1 run")
    assert again[0]["estimate"]["time_s"]["denoise"] == pytest.approx(0.8 * out[0]["estimate"]["time_s"]["denoise"], rel=0.01)


def test_native_forward_against_comfyui_measured_on_h100_and_h200():
    """bench/speed.py ran ComfyUI's own WanModel forward (config 'comfy', bf16, eager) on an H100 and an H200
    (raw JSON in bench/results): the comfy_native estimate of one forward and of its activation memory."""
    from wanmeter.estimator.calibration import load_calibration
    from wanmeter.estimator.memory import activation_bytes
    from wanmeter.estimator.runtimes import resolve
    from wanmeter.estimator.sizes import GIB, compute_sizes
    from wanmeter.estimator.timing import forward_time

    cal = load_calibration()
    checked = 0
    for f in sorted((ROOT / "bench" / "results").glob("2026-11-22_h*/speed_NVIDIA_*.json")):
        gpu = get_gpu("h200" if "H200" in f.name else "h100_sxm")
        for r in json.loads(f.read_text())["results"]:
            if r["config"] != "comfy":
                continue
            W, H, F = map(int, r["size"].split("x"))
            w = Workload(variant=r["variant"], width=W, height=H, frames=F, steps=1, cfg=1.0)
            p, _ = resolve(w, Plan(runtime="comfy_native"), gpu, cal)
            s = compute_sizes(w, p, cal)
            assert forward_time(s, w, p, gpu, cal).total == pytest.approx(r["seconds"], rel=0.06), (f.name, r["case"])
            if r["variant"] != "ti2v_5b":   # the TI2V speed run uses one timestep per sample: its peak is not comparable
                act = r["peak_vram_gib"] - s.expert_bytes / GIB
                assert activation_bytes(s, w, p, cal) / GIB == pytest.approx(act, rel=0.08), (f.name, r["case"])
            checked += 1
    assert checked == 6
