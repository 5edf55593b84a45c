"""The ComfyUI face: node contracts, the estimate route's handlers, conditioning conversion, and
the tiny T2V chain through the node functions. ComfyUI itself is replaced by tests/comfy_stubs.py."""
from __future__ import annotations

import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs", Path(__file__).with_name("comfy_stubs.py"))
stubs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stubs)

EXPECTED = {
    "WanMeterModelLoader", "WanMeterTextEncoderLoader", "WanMeterTextEncode", "WanMeterVAELoader",
    "WanMeterVAEDecode", "WanMeterVAEEncode", "WanMeterSampler", "WanMeterEstimator", "WanMeterLoRA",
}


@pytest.fixture()
def models_dir(tmp_path):
    d = tmp_path / "models"
    for sub in ("diffusion_models/wan", "text_encoders", "vae", "audio_encoders", "loras"):
        (d / sub).mkdir(parents=True)
    (d / "diffusion_models/wan/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors").write_bytes(b"")
    (d / "diffusion_models/wan2.2-ti2v-5b-Q4_K_M.gguf").write_bytes(b"")
    (d / "diffusion_models/readme.txt").write_text("not a model")
    return d


@pytest.fixture()
def pack(models_dir, monkeypatch):
    for name, mod in stubs.make_stubs(models_dir).items():
        monkeypatch.setitem(sys.modules, name, mod)
    fp = sys.modules["folder_paths"]  # ComfyUI always has "loras"; the shared stubs do not
    fp.folder_names_and_paths["loras"] = ([str(models_dir / "loras")], set(stubs.SUPPORTED))
    mod = stubs.import_pack()
    yield mod
    for k in [k for k in sys.modules if k == stubs.PACK or k.startswith(stubs.PACK + ".")]:
        del sys.modules[k]


def _all_inputs(spec: dict) -> dict:
    return {**spec.get("required", {}), **spec.get("optional", {})}


def test_mappings_and_contract(pack):
    m = pack.NODE_CLASS_MAPPINGS
    assert EXPECTED <= set(m)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(m)
    assert pack.WEB_DIRECTORY == "./web"
    for node_id, cls in m.items():
        assert node_id.startswith("WanMeter"), node_id
        spec = cls.INPUT_TYPES()
        assert cls.CATEGORY == "WanMeter"
        assert isinstance(cls.RETURN_TYPES, tuple)
        fn = getattr(cls, cls.FUNCTION)
        params = inspect.signature(fn).parameters
        for name, entry in _all_inputs(spec).items():
            assert isinstance(entry, tuple) and entry, (node_id, name)
            assert entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
            assert name in params, f"{node_id}.{cls.FUNCTION} does not take {name}"
        for name in spec.get("hidden", {}):
            assert name in params
        required = [p for p, v in params.items() if p != "self" and v.default is inspect.Parameter.empty]
        assert set(required) <= set(spec["required"]), (node_id, required)


def test_return_types(pack):
    m = pack.NODE_CLASS_MAPPINGS
    assert m["WanMeterModelLoader"].RETURN_TYPES == ("WANMETER_MODEL",)
    assert m["WanMeterTextEncoderLoader"].RETURN_TYPES == ("WANMETER_TEXT_ENCODER",)
    assert m["WanMeterTextEncode"].RETURN_TYPES == ("CONDITIONING", "CONDITIONING")
    assert m["WanMeterVAELoader"].RETURN_TYPES == ("WANMETER_VAE",)
    assert m["WanMeterVAEDecode"].RETURN_TYPES == ("IMAGE",)
    assert m["WanMeterVAEEncode"].RETURN_TYPES == ("LATENT",)
    assert m["WanMeterSampler"].RETURN_TYPES == ("LATENT",)
    assert m["WanMeterEstimator"].RETURN_TYPES == () and m["WanMeterEstimator"].OUTPUT_NODE is True


def test_model_loader_widgets(pack):
    req = pack.NODE_CLASS_MAPPINGS["WanMeterModelLoader"].INPUT_TYPES()
    models = req["required"]["model"][0]
    assert "wan/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors" in models  # subfolders
    assert "wan2.2-ti2v-5b-Q4_K_M.gguf" in models                          # GGUF
    assert "readme.txt" not in models
    assert req["optional"]["model_low_noise"][0][0] == "none"
    assert req["optional"]["model_low_noise"][1]["default"] == "none"
    assert req["required"]["weight_dtype"][0] == ["bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2", "file"]
    assert req["required"]["compute_dtype"][0] == ["bf16", "fp16"]
    assert set(req["required"]["offload"][0]) == {"none", "model", "blocks", "auto"}
    assert req["required"]["blocks_to_stream"][1]["min"] == 0 and req["required"]["blocks_to_stream"][1]["max"] == 40
    assert req["required"]["attention"][0] == ["auto", "sdpa", "sdpa_flash", "sdpa_cudnn", "sage", "flash", "8bit"]
    # speed options appended at the end of "required" (saved workflows keep their widget order)
    assert list(req["required"])[-2:] == ["fp8_compute", "compile"]
    for k in ("fp8_compute", "compile"):
        assert req["required"][k][0] == "BOOLEAN" and req["required"][k][1]["default"] is False
    assert "1.05-1.12x" in req["required"]["fp8_compute"][1]["tooltip"]


def test_sampler_widgets(pack):
    req = pack.NODE_CLASS_MAPPINGS["WanMeterSampler"].INPUT_TYPES()
    r = req["required"]
    assert r["frames"][1]["step"] == 4 and r["frames"][1]["min"] == 1
    assert r["scheduler"][0] == ["unipc", "euler"]
    assert "A14B only" in r["cfg_low"][1]["tooltip"]
    assert set(req["optional"]) == {"latent", "start_image", "vae"}
    assert list(r)[-3:] == ["step_cache", "cache_threshold", "num_gpus"]
    assert r["step_cache"][0] == ["none", "first_block", "taylorseer"] and r["step_cache"][1]["default"] == "none"
    assert r["num_gpus"][1]["default"] == 1 and (r["num_gpus"][1]["min"], r["num_gpus"][1]["max"]) == (1, 8)
    samp = pack.nodes.sampler
    assert samp.step_cache_options("none", 0.3) is None
    assert samp.step_cache_options("first_block", 0.0) == {"kind": "first_block"}
    assert samp.step_cache_options("first_block", 0.1) == {"kind": "first_block", "threshold": 0.1}
    assert samp.step_cache_options("taylorseer", 3.0) == {"kind": "taylorseer", "threshold": 3}


def test_lora_node_widgets(pack, models_dir):
    (models_dir / "loras" / "style.safetensors").write_bytes(b"")
    req = pack.NODE_CLASS_MAPPINGS["WanMeterLoRA"].INPUT_TYPES()["required"]
    assert list(req) == ["model", "lora", "strength", "apply_to"]
    assert req["model"][0] == "WANMETER_MODEL" and "fp8" in req["model"][1]["tooltip"]
    assert req["lora"][0] == ["style.safetensors"]
    assert req["apply_to"][0] == ["both", "high_noise", "low_noise"]
    assert pack.NODE_CLASS_MAPPINGS["WanMeterLoRA"].RETURN_TYPES == ("WANMETER_MODEL",)


def test_negative_prompt_default_is_official(pack, wan22_ref):
    text = (wan22_ref / "wan/configs/shared_config.py").read_text(encoding="utf-8")
    official = re.search(r"sample_neg_prompt\s*=\s*'([^']*)'", text).group(1)
    req = pack.NODE_CLASS_MAPPINGS["WanMeterTextEncode"].INPUT_TYPES()["required"]
    assert req["negative"][1]["default"] == official


def test_conditioning_roundtrip(pack):
    cond = sys.modules[stubs.PACK + ".nodes.conditioning"]
    short = torch.randn(1, 300, 4096)
    t = cond.from_conditioning([[short, {}]], name="positive")
    assert t.shape == (1, 512, 4096)
    assert torch.equal(t[:, :300], short) and not t[:, 300:].any()
    long = torch.randn(1, 600, 4096)
    assert torch.equal(cond.from_conditioning([[long, {"pooled_output": None}]], name="p"), long[:, :512])
    c = cond.to_conditioning(t)
    assert isinstance(c, list) and c[0][0] is t and c[0][1] == {}
    err = pack.nodes.common.WanMeterError
    with pytest.raises(err, match="ConditioningCombine"):
        cond.from_conditioning([[short, {}], [short, {}]], name="positive")
    with pytest.raises(err, match="not a CONDITIONING"):
        cond.from_conditioning("text", name="positive")
    assert cond.match_batch(t, 3, name="p").shape[0] == 3


def test_check_name_rejects_escapes(pack):
    common = pack.nodes.common
    for bad in ["../x.safetensors", "/etc/passwd", "a/../../b", "C:\\x.safetensors", "..\\x", "", "a//b"]:
        with pytest.raises(common.WanMeterError):
            common.check_name(bad)
    assert common.check_name("wan/x.safetensors") == "wan/x.safetensors"


def test_estimate_route_rejects_bad_input(pack):
    routes = pack.nodes.routes
    status, body = routes.estimate_reply({"model": "../../etc/passwd"})
    assert status == 400 and "models folder" in body["error"]
    status, body = routes.estimate_reply({"model": "none"})
    assert status == 400 and "Model Loader" in body["error"]
    status, body = routes.estimate_reply({"model": "my_model.safetensors"})
    assert status == 400 and "which Wan2.2 model" in body["error"]
    with pytest.raises(pack.nodes.common.WanMeterError, match="at most"):
        routes.parse_body(b"{" + b" " * routes.MAX_BODY_BYTES + b"}")
    with pytest.raises(pack.nodes.common.WanMeterError, match="not JSON"):
        routes.parse_body(b"{nope")
    with pytest.raises(pack.nodes.common.WanMeterError, match="JSON object"):
        routes.parse_body(b"[1, 2]")
    assert routes.parse_body(json.dumps({"model": "x"}).encode()) == {"model": "x"}


def test_variant_from_name(pack):
    from wanmeter.estimator.reply import variant_from_name as g

    assert g("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors") == "t2v_a14b"
    assert g("wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors") == "i2v_a14b"
    assert g("wan2.2_ti2v_5B_fp16.safetensors") == "ti2v_5b"
    assert g("sub/wan2.2_s2v_14B_bf16.safetensors") == "s2v_14b"
    assert g("flux.safetensors") is None


def test_gpus_route_and_choices(pack):
    status, body = pack.nodes.routes.gpus_reply()
    assert status == 200 and body["local"] is None and body["detected"] is None  # CPU machine
    names = [r["name"] for r in body["gpus"]]
    assert "RTX 4090" in names and "H100 SXM" in names
    choices = pack.NODE_CLASS_MAPPINGS["WanMeterEstimator"].INPUT_TYPES()["required"]["gpu"][0]
    assert choices[0] == "auto" and set(names) <= set(choices)
    from wanmeter.estimator import load_gpus
    from wanmeter.estimator.reply import resolve_gpu

    gpus = load_gpus()
    assert resolve_gpu("auto", {"name": "NVIDIA GeForce RTX 4090"}, gpus)[:2] == (gpus["rtx4090"], True)
    g, local, note = resolve_gpu("auto", None, gpus)  # no GPU here: said so, not silently an H100
    assert g.name == "H100 SXM" and local is False and "no GPU on this machine: showing H100 SXM" in note


def test_settings_from_prompt(pack):
    from wanmeter.estimator.graph import read_pipelines

    prompt = {
        "1": {"class_type": "WanMeterModelLoader", "inputs": {"model": "a_high.safetensors", "model_low_noise": "a_low.safetensors",
              "weight_dtype": "fp8_e4m3fn", "compute_dtype": "bf16", "offload": "blocks", "blocks_to_stream": 10, "attention": "sdpa"}},
        "2": {"class_type": "WanMeterSampler", "inputs": {"model": ["1", 0], "width": 832, "height": ["9", 0], "frames": 49,
              "steps": 20, "cfg_high": 4.0, "cfg_low": 3.0}},
        "3": {"class_type": "WanMeterTextEncoderLoader", "inputs": {"device": "cpu"}},
        "4": {"class_type": "WanMeterVAEDecode", "inputs": {"tiled": "enable"}},
    }
    (s,) = read_pipelines(prompt)
    assert s["model"] == "a_high.safetensors" and s["blocks_to_stream"] == 10 and s["offload"] == "blocks"
    assert s["width"] == 832 and "height" not in s  # linked input: the default applies
    assert s["frames"] == 49 and s["text_encoder_device"] == "cpu" and s["vae_tiled"] is True
    from wanmeter.errors import WanMeterError

    with pytest.raises(WanMeterError, match="No WanMeter Model Loader"):
        read_pipelines({"2": prompt["2"]})


def test_a14b_loader_needs_low_noise(pack, models_dir, tmp_path):
    from wanmeter.tiny import ensure_tiny_models

    paths = ensure_tiny_models(names=["dit_t2v_high"])
    dst = models_dir / "diffusion_models" / paths["dit_t2v_high"].name
    dst.symlink_to(paths["dit_t2v_high"])
    loader = pack.NODE_CLASS_MAPPINGS["WanMeterModelLoader"]()
    with pytest.raises(pack.nodes.common.WanMeterError, match="low-noise file.*tiny_wan2.2_t2v_low_noise"):
        loader.load(dst.name, "bf16", "bf16", "none", 0, "auto", model_low_noise="none")
    with pytest.raises(pack.nodes.common.WanMeterError, match="was not found"):
        loader.load(dst.name, "bf16", "bf16", "none", 0, "auto", model_low_noise="missing_low.safetensors")


def test_sampler_progress_interrupt_and_stats(pack, monkeypatch):
    samp_mod = pack.nodes.sampler
    mm = sys.modules["comfy.model_management"]
    seen = {}

    def fake_run(model, pos, neg, fields, callback):
        seen.update(fields, pos=pos.shape, neg=neg.shape)
        for i in range(fields["steps"]):
            callback(i + 1, fields["steps"], None)
        return torch.zeros(fields["batch_size"], 16, 3, 4, 4), {"seconds_per_step": 0.1, "total_seconds": 0.3,
                                                                "steps": 3, "peak_vram_gib": None, "device": "cpu"}

    monkeypatch.setattr(samp_mod, "_run", fake_run)
    node = pack.NODE_CLASS_MAPPINGS["WanMeterSampler"]()
    cond = [[torch.randn(1, 20, 4096), {}]]
    out = node.sample(object(), cond, cond, 64, 64, 9, 3, 4.0, 3.0, 12.0, 7, 2, "unipc", 0.0, 1.0, unique_id="5")
    assert out["result"][0]["samples"].shape == (2, 16, 3, 4, 4)
    assert seen["pos"] == (2, 512, 4096) and seen["boundary"] is None
    stats = out["ui"]["wanmeter_stats"][0]
    assert stats["steps"] == 3 and "0.10 s/step" in out["ui"]["text"][0]
    pbar = sys.modules["comfy.utils"].ProgressBar.instances[-1]
    assert pbar.node_id == "5" and pbar.updates[-1] == (3, 3)

    mm.interrupt = True
    with pytest.raises(stubs.InterruptProcessingException):
        node.sample(object(), cond, cond, 64, 64, 9, 3, 4.0, 3.0, 12.0, 7, 1, "unipc", 0.0, 1.0)
    assert "soft_empty_cache" in mm.calls  # memory released on the way out
    with pytest.raises(pack.nodes.common.WanMeterError, match="4k\\+1"):
        node.sample(object(), cond, cond, 64, 64, 8, 3, 4.0, 3.0, 12.0, 7, 1, "unipc", 0.0, 1.0)
    with pytest.raises(pack.nodes.common.WanMeterError, match="vae input"):
        node.sample(object(), cond, cond, 64, 64, 9, 3, 4.0, 3.0, 12.0, 7, 1, "unipc", 0.0, 1.0,
                    start_image=torch.zeros(1, 64, 64, 3))


def _settings(**kw):
    s = {"model": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
         "model_low_noise": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "width": 1280, "height": 720,
         "frames": 81, "steps": 40, "cfg_high": 4.0, "cfg_low": 3.0, "weight_dtype": "fp8_e4m3fn", "offload": "none",
         "blocks_to_stream": 0, "attention": "auto", "text_encoder_device": "gpu", "vae_tiled": False,
         "gpu": "RTX 4090", "price_per_hour": 0, "videos_per_month": 100, "budget_gb": 0, "num_gpus": 1}
    s.update(kw)
    return s


def test_estimate_route_reply(pack):
    routes = pack.nodes.routes
    status, body = routes.estimate_reply(_settings())
    assert status == 200, body
    assert body["variant"] == "t2v_a14b" and body["label"] == "T2V-A14B"
    assert any("not downloaded" in n for n in body["notes"])  # variant guessed from the official name
    assert body["gpu"]["name"] == "RTX 4090" and body["free_vram_gib"] is None
    assert body["fits"] is False and body["peak_vram_gib"] > body["budget_gib"]  # 14B fp8 + 720p on 24 GB
    assert body["suggestion"].startswith("Try:")
    assert len(body["cheapest"]) == 3
    costs = [c["cost_per_video"] for c in body["cheapest"]]
    assert costs == sorted(costs)
    assert body["cost_per_month"] == pytest.approx(body["cost_per_video"] * 100, rel=2e-3)
    assert body["seconds_per_step"] * 40 <= body["seconds_per_video"]

    status, auto = routes.estimate_reply(_settings(offload="auto"))
    assert status == 200 and auto["fits"] is True and any(n.startswith("offload auto:") for n in auto["notes"])
    assert auto["plan_fields"]["offload"] in ("model", "blocks")
    status, priced = routes.estimate_reply(_settings(price_per_hour=2.0, videos_per_month=10))
    assert priced["price_per_hour"] == 2.0
    assert priced["cost_per_video"] == pytest.approx(priced["seconds_per_video"] / 3600 * 2.0, rel=1e-3)
    status, budget = routes.estimate_reply(_settings(gpu="H100 SXM", budget_gb=12))
    assert 10 < budget["budget_gib"] <= 12 and budget["fits"] is False  # less the estimator's reserve

    status, body = routes.estimate_reply(_settings(frames=80))
    assert status == 400 and "4k+1" in body["error"]
    status, body = routes.estimate_reply(_settings(gpu="Voodoo 5"))
    assert status == 400 and "Unknown GPU" in body["error"]
    status, body = routes.estimate_reply(_settings(width="wide"))
    assert status == 400 and "width" in body["error"]


def test_estimate_reads_variant_from_the_file(pack, models_dir):
    from wanmeter.tiny import ensure_tiny_models

    p = ensure_tiny_models(names=["dit_ti2v"])["dit_ti2v"]
    (models_dir / "diffusion_models" / "mystery.safetensors").symlink_to(p)
    status, body = pack.nodes.routes.estimate_reply(_settings(model="mystery.safetensors", width=1280, height=704,
                                                              frames=121, model_low_noise="none"))
    assert status == 200, body
    assert body["variant"] == "ti2v_5b" and not any("not downloaded" in n for n in body["notes"])


def test_estimator_node_runs_from_the_prompt(pack):
    node = pack.NODE_CLASS_MAPPINGS["WanMeterEstimator"]()
    prompt = {"1": {"class_type": "WanMeterModelLoader", "inputs": {k: v for k, v in _settings().items() if k in (
        "model", "model_low_noise", "weight_dtype", "offload", "blocks_to_stream", "attention")}},
              "9": {"class_type": "WanMeterEstimator", "inputs": {}}}
    prompt["2"] = {"class_type": "WanMeterSampler", "inputs": {"model": ["1", 0], "width": 832, "height": 480,
                                                               "frames": 33, "steps": 20}}
    out = node.run("L40S", 0.0, 100, 0.0, prompt=prompt, unique_id="9")
    body = out["ui"]["wanmeter_estimate"][0]
    assert body["gpu"]["name"] == "L40S" and "error" not in body
    assert "L40S" in out["ui"]["text"][0]
    out = node.run("auto", 0.0, 100, 0.0, prompt={}, unique_id="9")
    assert "nothing to estimate" in out["ui"]["wanmeter_estimate"][0]["error"]


@pytest.fixture()
def tiny_models(models_dir):
    from wanmeter.tiny import ensure_tiny_models

    names = ["dit_t2v_high", "dit_t2v_low", "dit_i2v_high", "dit_i2v_low", "dit_ti2v", "umt5_fp16", "vae_wan21", "vae_wan22"]
    paths = ensure_tiny_models(names=names)
    folder = {"dit": "diffusion_models", "umt5": "text_encoders", "vae": "vae"}
    out = {}
    for n, p in paths.items():
        dst = models_dir / folder[n.split("_")[0]] / p.name
        dst.symlink_to(p)
        out[n] = p.name
    return out


def _chain(pack, tiny, high, low, vae_name, *, width, height, frames, start_image=None, steps=2):
    m = pack.NODE_CLASS_MAPPINGS
    (model,) = m["WanMeterModelLoader"]().load(tiny[high], "bf16", "bf16", "auto", 0, "sdpa",
                                                model_low_noise=tiny[low] if low else "none")
    (te,) = m["WanMeterTextEncoderLoader"]().load(tiny["umt5_fp16"], "gpu", "fp32")
    pos, neg = m["WanMeterTextEncode"]().encode(te, "a fox in the snow", "blurry")
    (vae,) = m["WanMeterVAELoader"]().load(tiny[vae_name], False, "fp32")
    out = m["WanMeterSampler"]().sample(model, pos, neg, width, height, frames, steps, 4.0, 3.0, 5.0, 1, 1, "unipc",
                                        0.0, 1.0, start_image=start_image, vae=vae if start_image is not None else None)
    (images,) = m["WanMeterVAEDecode"]().decode(out["result"][0], vae, "auto")
    return pos, out, images, (model, pos, neg, vae)


def test_tiny_t2v_chain_through_the_nodes(pack, tiny_models):
    mm = sys.modules["comfy.model_management"]
    pos, out, images, (model, _, neg, _) = _chain(pack, tiny_models, "dit_t2v_high", "dit_t2v_low", "vae_wan21",
                                                  width=64, height=48, frames=5)
    assert isinstance(pos, list) and pos[0][0].shape[:2] == (1, 512) and pos[0][1] == {}
    lat = out["result"][0]["samples"]
    assert lat.shape == (1, 16, 2, 6, 8) and torch.isfinite(lat).all()
    assert images.shape == (5, 48, 64, 3) and 0 <= images.min() and images.max() <= 1
    stats = out["ui"]["wanmeter_stats"][0]
    assert stats["steps"] == 2 and stats["device"] == "cpu" and stats["seconds_per_step"] > 0
    assert "unload_all_models" in mm.calls and "soft_empty_cache" in mm.calls
    pbar = sys.modules["comfy.utils"].ProgressBar.instances[-1]
    assert pbar.updates[-1] == (2, 2)
    # same seed -> same latent (the node adds no randomness of its own)
    out2 = pack.NODE_CLASS_MAPPINGS["WanMeterSampler"]().sample(model, pos, neg, 64, 48, 5, 2, 4.0, 3.0, 5.0, 1, 1,
                                                                 "unipc", 0.0, 1.0)
    assert torch.equal(out2["result"][0]["samples"], lat)


def test_tiny_i2v_and_ti2v_image_mode(pack, tiny_models):
    img = torch.rand(1, 90, 120, 3)
    _, out, images, (model, pos, neg, _) = _chain(pack, tiny_models, "dit_i2v_high", "dit_i2v_low", "vae_wan21",
                                                  width=64, height=48, frames=5, start_image=img)
    # the image's 4:3 aspect at the 64x48 area: 64x48 stays (multiples of 16)
    assert out["result"][0]["samples"].shape == (1, 16, 2, 6, 8) and images.shape == (5, 48, 64, 3)
    with pytest.raises(pack.nodes.common.WanMeterError, match="needs a start image"):
        pack.NODE_CLASS_MAPPINGS["WanMeterSampler"]().sample(model, pos, neg, 64, 48, 5, 2, 4.0, 3.0, 5.0, 1, 1,
                                                             "unipc", 0.0, 1.0)
    _, out, images, _ = _chain(pack, tiny_models, "dit_ti2v", None, "vae_wan22", width=64, height=64, frames=5,
                               start_image=img)
    # TI2V: a 4:3 image at the 64x64 area, sides multiples of 32: 64x64 is the closest aspect (128x32 the other)
    assert out["result"][0]["samples"].shape == (1, 48, 2, 4, 4) and images.shape == (5, 64, 64, 3)


def test_start_image_sizes(pack):
    ic = importlib.import_module(stubs.PACK + ".nodes.image_cond")
    assert ic.i2v_size(1280, 720, 1280 * 720) == (1280, 720)
    assert ic.i2v_size(720, 1280, 1280 * 720) == (720, 1280)
    assert ic.i2v_size(1000, 1000, 832 * 480) == (624, 624)
    assert ic.ti2v_size(1280, 720, 1280 * 704) == (1248, 704)  # the official TI2V rule for a 16:9 image
    assert ic.ti2v_size(704, 1280, 1280 * 704) == (704, 1280)


# ---------------------------------------------------------------- speed options, LoRA, multi-GPU, auto plan

def _lora_helpers():
    spec = importlib.util.spec_from_file_location("wanmeter_test_accel_lora", Path(__file__).with_name("test_accel_lora.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fresh_expert(path):
    from wanmeter.loader import load_dit

    return load_dit(path, weight_dtype="fp32", compute_dtype="bf16", device="cpu").model


def test_lora_node_merges_undoes_and_chains(pack, tiny_models, models_dir):
    from safetensors.torch import save_file

    helpers = _lora_helpers()
    lora = helpers._comfy_lora("lora_down")
    save_file(lora, str(models_dir / "loras" / "tiny_lora.safetensors"))
    m = pack.NODE_CLASS_MAPPINGS
    (model,) = m["WanMeterModelLoader"]().load(tiny_models["dit_t2v_high"], "fp32", "bf16", "none", 0, "sdpa",
                                                model_low_noise=tiny_models["dit_t2v_low"])
    high_path = models_dir / "diffusion_models" / tiny_models["dit_t2v_high"]
    low_path = models_dir / "diffusion_models" / tiny_models["dit_t2v_low"]
    node = m["WanMeterLoRA"]()
    (out,) = node.apply(model, "tiny_lora.safetensors", 0.5, "high_noise", unique_id="7")
    assert out is model
    want_high = helpers._reference_merge(_fresh_expert(high_path), lora, 0.5)
    untouched_low = _fresh_expert(low_path).state_dict()
    got_high, got_low = model.experts[0].state_dict(), model.experts[1].state_dict()
    for k, v in want_high.items():
        torch.testing.assert_close(got_high[k], v, rtol=1e-5, atol=1e-5)
    for k, v in untouched_low.items():
        assert torch.equal(got_low[k], v), k
    # the same node again with another strength: its old LoRA comes out first (not 0.5 + 1.0)
    node.apply(model, "tiny_lora.safetensors", 1.0, "both", unique_id="7")
    want_high = helpers._reference_merge(_fresh_expert(high_path), lora, 1.0)
    want_low = helpers._reference_merge(_fresh_expert(low_path), lora, 1.0)
    for k in want_high:
        torch.testing.assert_close(model.experts[0].state_dict()[k], want_high[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.experts[1].state_dict()[k], want_low[k], rtol=1e-4, atol=1e-5)
    # a second node chains; the bundle remembers both for the multi-GPU workers
    m["WanMeterLoRA"]().apply(model, "tiny_lora.safetensors", 0.25, "low_noise", unique_id="8")
    assert [(l.strength, l.apply_to) for l in model.wanmeter_source.loras] == [(1.0, "both"), (0.25, "low_noise")]

    # the multi-GPU factory rebuilds the same weights from the files (and survives pickling)
    import pickle

    pb = pack.nodes.parallel_bundle
    factory = pickle.loads(pickle.dumps(pb.BundleFactory(model.wanmeter_source)))
    rebuilt = factory(torch.device("cpu"))
    assert rebuilt.variant == "t2v_a14b" and rebuilt.runtime.offload == "none"
    for a, b in zip(rebuilt.experts, model.experts):
        for k, v in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[k], v, rtol=1e-4, atol=1e-5)

    with pytest.raises(pack.nodes.common.WanMeterError, match="not found"):
        node.apply(model, "missing.safetensors", 1.0, "both", unique_id="9")


def test_lora_node_refuses_fp8_weights(pack, tiny_models, models_dir):
    from safetensors.torch import save_file

    save_file(_lora_helpers()._comfy_lora("lora_down"), str(models_dir / "loras" / "tiny_lora.safetensors"))
    m = pack.NODE_CLASS_MAPPINGS
    (model,) = m["WanMeterModelLoader"]().load(tiny_models["dit_t2v_high"], "fp8_e4m3fn", "bf16", "none", 0, "sdpa",
                                                model_low_noise=tiny_models["dit_t2v_low"])
    with pytest.raises(pack.nodes.common.WanMeterError, match="bf16/fp16"):
        m["WanMeterLoRA"]().apply(model, "tiny_lora.safetensors", 1.0, "both", unique_id="1")


def test_speed_options_reach_the_runtime(pack, tiny_models):
    m = pack.NODE_CLASS_MAPPINGS
    (model,) = m["WanMeterModelLoader"]().load(tiny_models["dit_ti2v"], "bf16", "bf16", "none", 0, "sdpa",
                                                fp8_compute=False, compile=False)
    assert model.runtime.fp8_compute is False and model.runtime.compile is False
    src = model.wanmeter_source
    assert src.variant == "ti2v_5b" and src.low_path is None and src.high_path.endswith(tiny_models["dit_ti2v"])
    (te,) = m["WanMeterTextEncoderLoader"]().load(tiny_models["umt5_fp16"], "gpu", "fp32")
    pos, neg = m["WanMeterTextEncode"]().encode(te, "a fox", "blurry")
    out = m["WanMeterSampler"]().sample(model, pos, neg, 64, 64, 5, 2, 4.0, 3.0, 5.0, 1, 1, "unipc", 0.0, 1.0,
                                        step_cache="first_block", cache_threshold=0.1, num_gpus=1)
    assert model.runtime.step_cache == {"kind": "first_block", "threshold": 0.1}
    assert torch.isfinite(out["result"][0]["samples"]).all()
    # fp8 compute on a CPU: the engine's error, naming the fix, comes through
    with pytest.raises(pack.nodes.common.WanMeterError, match="fp8 compute needs"):
        (m8,) = m["WanMeterModelLoader"]().load(tiny_models["dit_ti2v"], "bf16", "bf16", "none", 0, "sdpa",
                                                 fp8_compute=True)
        m["WanMeterSampler"]().sample(m8, pos, neg, 64, 64, 5, 1, 4.0, 3.0, 5.0, 1, 1, "unipc", 0.0, 1.0)
    # more GPUs than visible: a clear error with the count
    with pytest.raises(pack.nodes.common.WanMeterError, match=r"num_gpus=2 but ComfyUI sees 0 CUDA GPU"):
        m["WanMeterSampler"]().sample(model, pos, neg, 64, 64, 5, 2, 4.0, 3.0, 5.0, 1, 1, "unipc", 0.0, 1.0,
                                      num_gpus=2)


def test_loader_auto_plan_uses_memplan(pack, tiny_models, monkeypatch):
    from wanmeter.loader import inspect_dit

    memplan = importlib.import_module(stubs.PACK + ".wanmeter.memplan")
    gib = 1024 ** 3
    monkeypatch.setattr(memplan, "free_memory", lambda device=None: (20 * gib, 64 * gib, "rtx4090"))
    loaders = pack.nodes.loaders
    info = inspect_dit(Path(sys.modules["folder_paths"].get_full_path("diffusion_models", tiny_models["dit_t2v_high"])))
    offload, blocks, wd, text = loaders.auto_plan(info, "bf16", "auto", False, False, torch.device("cuda"))
    # A14B at 1280x720x81 in 20 GiB: weights cannot all stay resident
    assert offload in ("model", "blocks") and (blocks > 0) == (offload == "blocks")
    assert text.startswith("auto plan: ") and "GiB" in text
    big = loaders.auto_plan(info, "bf16", "auto", False, False, torch.device("cuda"))
    monkeypatch.setattr(memplan, "free_memory", lambda device=None: (140 * gib, 256 * gib, "h200"))
    roomy = loaders.auto_plan(info, "bf16", "auto", False, False, torch.device("cuda"))
    assert roomy[0] in ("none", "model") and roomy[1] == 0 and big[1] >= roomy[1]


def test_estimate_auto_offload_respects_budget(pack):
    routes = pack.nodes.routes
    _, free = routes.estimate_reply(_settings(gpu="H100 SXM", offload="auto", weight_dtype="bf16"))
    _, tight = routes.estimate_reply(_settings(gpu="H100 SXM", offload="auto", weight_dtype="bf16", budget_gb=24))
    assert free["fits"] and tight["fits"], tight
    assert tight["peak_vram_gib"] <= 24 < free["peak_vram_gib"]
    assert tight["budget_gib"] == 24
    assert tight["seconds_per_video"] >= free["seconds_per_video"]
    _, none = routes.estimate_reply(_settings(gpu="H100 SXM", offload="auto", budget_gb=2))
    assert none["fits"] is False and "does not fit" in none["suggestion"]


def test_estimate_new_settings_and_s2v(pack):
    from wanmeter.estimator.graph import read_pipelines

    routes = pack.nodes.routes
    prompt = {
        "1": {"class_type": "WanMeterModelLoader", "inputs": {"model": "wan2.2_s2v_14B_fp8_scaled.safetensors",
              "weight_dtype": "fp8_e4m3fn", "offload": "none", "blocks_to_stream": 0, "attention": "auto",
              "fp8_compute": True, "compile": True, "model_low_noise": "none"}},
        "4": {"class_type": "WanMeterS2VAudio", "inputs": {"audio": ["3", 0], "clips": 0}},
        "5": {"class_type": "WanMeterS2VSampler", "inputs": {"model": ["1", 0], "width": 832, "height": 480,
              "steps": 40, "cfg": 4.5}},
        "6": {"class_type": "WanMeterLoRA", "inputs": {"model": ["1", 0]}},
    }
    prompt["5"]["inputs"]["model"] = ["6", 0]  # the LoRA sits between loader and sampler
    (s,) = read_pipelines(prompt)
    assert s["frames"] == 80 and s.get("s2v_clips", 0) == 0 and s["cfg_high"] == 4.5 and s["loras"] == 1
    assert s["fp8_compute"] is True and s["compile"] is True
    status, one = routes.estimate_reply({**s, "gpu": "H100 SXM"})
    assert status == 200, one
    assert one["variant"] == "s2v_14b" and any("per 5 s clip" in n for n in one["notes"])
    prompt["4"]["inputs"]["clips"] = 3
    _, three = routes.estimate_reply({**read_pipelines(prompt)[0], "gpu": "H100 SXM"})
    assert not any("per 5 s clip" in n for n in three["notes"])
    assert 2.5 < three["seconds_per_video"] / one["seconds_per_video"] < 3.5
    # fp8 compute + compile change the T2V estimate (the estimator models them)
    _, base = routes.estimate_reply(_settings(gpu="H100 SXM"))
    _, fast = routes.estimate_reply(_settings(gpu="H100 SXM", fp8_compute=True, compile=True, step_cache="none"))
    assert fast["seconds_per_video"] < base["seconds_per_video"]


def test_vae_decode_node_passes_the_interruption_check(pack, monkeypatch):
    """WanMeter VAE Decode hands ComfyUI's interruption check to the decode (checked per chunk there)."""
    from wanmeter.loader import vae_loader

    seen = []

    class FakeVAE:
        z_dim = 16
        tiled_default = False

        def decode(self, lat, tiled=False, check=None):
            seen.append(check)
            return torch.zeros(1, 8, 8, 3)

    assert "check" in inspect.signature(vae_loader.WanVAE.decode).parameters
    pack.nodes.vae.WanMeterVAEDecode().decode({"samples": torch.zeros(1, 16, 1, 1, 1)}, FakeVAE(), "auto")
    assert seen == [pack.nodes.common.check_interrupt]
