"""The one graph reader (wanmeter.estimator.graph): UI workflows and API prompts of WanMeter nodes ->
one settings dict per sampler chain. These cases used to be tested on the web extension's own copy."""
from __future__ import annotations

import pytest

from wanmeter import schema
from wanmeter.errors import WanMeterError
from wanmeter.estimator.graph import read_pipelines
from wanmeter.estimator.reply import estimate_reply, workload_from_ui_workflow


def _values(node_type: str, **given):
    """widgets_values as the frontend saves them: schema order, seed followed by its control value."""
    out = []
    for name in schema.widget_names(node_type):
        out.append(given.get(name, schema.default(node_type, name)))
        if name == "seed":
            out.append("fixed")
    return out


class UI:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, nid, node_type, mode=0, **widgets):
        self.nodes.append({"id": nid, "type": node_type, "mode": mode, "inputs": [],
                           "widgets_values": _values(node_type, **widgets)})
        return self

    def link(self, src, dst, name):
        lid = len(self.links) + 1
        self.links.append([lid, src, 0, dst, 0, "X"])
        next(n for n in self.nodes if n["id"] == dst)["inputs"].append({"name": name, "link": lid})
        return self

    def wf(self):
        return {"nodes": self.nodes, "links": self.links}


def t2v() -> UI:
    g = UI()
    g.add(5, "WanMeterSampler", width=832, height=480, frames=81, steps=30)
    g.add(1, "WanMeterModelLoader", model="other_high.safetensors", offload="none")
    g.add(2, "WanMeterModelLoader", model="wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", weight_dtype="fp8_e4m3fn",
          offload="blocks", blocks_to_stream=12, attention="sdpa",
          model_low_noise="wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors")
    g.add(3, "WanMeterTextEncoderLoader", text_encoder="umt5.safetensors", device="cpu")
    g.add(4, "WanMeterVAELoader", vae="wan_2.1_vae.safetensors", tiled=False)
    g.add(6, "WanMeterVAEDecode", tiled="enable")
    g.add(7, "WanMeterEstimator", gpu="RTX 4090", price_per_hour=0.5, videos_per_month=200, budget_gib=0)
    g.nodes.append({"id": 8, "type": "CreateVideo", "mode": 0, "inputs": [], "widgets_values": [16]})
    return g.link(2, 5, "model").link(6, 8, "images")


def test_loader_wired_into_the_sampler_not_the_first_loader():
    (s,) = read_pipelines(t2v().wf())
    assert s["model"] == "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
    assert s["model_low_noise"] == "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
    assert (s["weight_dtype"], s["offload"], s["blocks_to_stream"], s["attention"]) == ("fp8_e4m3fn", "blocks", 12, "sdpa")
    assert (s["width"], s["height"], s["steps"], s["batch"]) == (832, 480, 30, 1)
    assert s["text_encoder_device"] == "cpu" and s["vae_tiled"] is True   # decode's enable wins over the loader
    assert (s["gpu"], s["price_per_hour"], s["videos_per_month"]) == ("RTX 4090", 0.5, 200)
    assert "budget_gib" not in s                                          # 0 = this GPU's VRAM


def test_decode_auto_keeps_the_loaders_tiling_and_bypassed_nodes_are_ignored():
    g = t2v()
    next(n for n in g.nodes if n["id"] == 6)["widgets_values"] = ["auto"]
    next(n for n in g.nodes if n["id"] == 4)["widgets_values"] = _values("WanMeterVAELoader", tiled=True)
    assert read_pipelines(g.wf())[0]["vae_tiled"] is True
    next(n for n in g.nodes if n["id"] == 4)["mode"] = 4
    assert read_pipelines(g.wf())[0].get("vae_tiled", False) is False


def test_without_a_sampler_the_first_loader_and_without_a_loader_nothing():
    g = t2v()
    g.nodes = [n for n in g.nodes if n["type"] != "WanMeterSampler"]
    (s,) = read_pipelines(g.wf())
    assert s["model"] == "other_high.safetensors" and "frames" not in s
    g.nodes = [n for n in g.nodes if n["type"] != "WanMeterModelLoader"]
    with pytest.raises(WanMeterError, match="nothing to estimate"):
        read_pipelines(g.wf())
    with pytest.raises(WanMeterError, match="empty"):
        read_pipelines({})


def test_speed_widgets_gpu_count_and_lora_chain():
    g = t2v()
    g.nodes = [n for n in g.nodes if n["id"] != 2]
    g.add(2, "WanMeterModelLoader", model="wan2.2_t2v_high_noise_14B_bf16.safetensors", fp8_compute=True, compile=True)
    next(n for n in g.nodes if n["id"] == 5)["widgets_values"] = _values(
        "WanMeterSampler", step_cache="first_block", cache_threshold=0.1, num_gpus=4)
    g.add(10, "WanMeterLoRA", lora="a.safetensors").add(11, "WanMeterLoRA", lora="b.safetensors")
    g.add(12, "WanMeterLoRA", mode=4, lora="c.safetensors")
    g.links, = [[]]
    for n in g.nodes:
        n["inputs"] = []
    g.link(2, 10, "model").link(10, 11, "model").link(11, 12, "model").link(12, 5, "model")
    (s,) = read_pipelines(g.wf())
    assert s["fp8_compute"] is True and s["compile"] is True and s["num_gpus"] == 4
    assert s["step_cache"] == "first_block" and s["loras"] == 2   # the bypassed LoRA does not count


def s2v(clips: int) -> UI:
    g = UI()
    g.add(1, "WanMeterModelLoader", model="wan2.2_s2v_14B_bf16.safetensors", weight_dtype="fp8_e4m3fn")
    g.add(4, "WanMeterS2VAudio", audio_encoder="wav2vec2.safetensors", clips=clips)
    g.add(5, "WanMeterS2VSampler", width=832, height=480, steps=40, cfg=4.5)
    g.add(9, "WanMeterEstimator", gpu="H100 SXM")
    return g.link(1, 5, "model").link(4, 5, "s2v_audio")


def test_s2v_frames_per_clip_clips_from_the_audio_node_cfg_from_the_s2v_sampler():
    (s,) = read_pipelines(s2v(3).wf())
    assert (s["frames"], s["s2v_clips"], s["cfg_high"], s["width"], s["steps"]) == (80, 3, 4.5, 832, 40)
    (auto,) = read_pipelines(s2v(0).wf())
    assert "s2v_clips" not in auto and auto["frames"] == 80
    assert "s2v_clips" not in read_pipelines(t2v().wf())[0]


def test_every_sampler_chain_is_read():
    g = t2v()
    g.add(20, "WanMeterSampler", width=1280, height=720, frames=81, steps=8, denoise=0.3).link(2, 20, "model")
    chains = read_pipelines(g.wf())
    assert [c["sampler_id"] for c in chains] == ["5", "20"]
    assert [c["steps"] for c in chains] == [30, 8]


def test_api_prompt_and_old_widget_names():
    prompt = {"1": {"class_type": "WanMeterModelLoader", "inputs": {"model": "wan2.2_ti2v_5B_fp16.safetensors"}},
              "2": {"class_type": "WanMeterSampler", "inputs": {"model": ["1", 0], "width": 1280, "height": 704,
                                                                "frames": 121, "steps": 20, "batch_size": 2}},
              "3": {"class_type": "WanMeterEstimator", "inputs": {"gpu": "L40S", "budget_gb": 20}}}
    (s,) = read_pipelines(prompt)
    assert s["batch"] == 2 and s["budget_gib"] == 20 and s["gpu"] == "L40S"


def test_a_model_and_a_sampler_that_do_not_match_say_so():
    g = s2v(1)
    g.nodes[0]["widgets_values"] = _values("WanMeterModelLoader", model="wan2.2_i2v_high_noise_14B_fp16.safetensors")
    with pytest.raises(WanMeterError, match="S2V Sampler, which needs S2V-14B"):
        workload_from_ui_workflow(g.wf())
    (s,) = read_pipelines(g.wf())
    with pytest.raises(WanMeterError, match="S2V Sampler, which needs S2V-14B"):
        estimate_reply(s)
