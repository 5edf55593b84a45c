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
    "WanMeterVAEDecode", "WanMeterVAEEncode", "WanMeterSampler", "WanMeterEstimator",
}


@pytest.fixture()
def models_dir(tmp_path):
    d = tmp_path / "models"
    for sub in ("diffusion_models/wan", "text_encoders", "vae", "audio_encoders"):
        (d / sub).mkdir(parents=True)
    (d / "diffusion_models/wan/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors").write_bytes(b"")
    (d / "diffusion_models/wan2.2-ti2v-5b-Q4_K_M.gguf").write_bytes(b"")
    (d / "diffusion_models/readme.txt").write_text("not a model")
    return d


@pytest.fixture()
def pack(models_dir, monkeypatch):
    for name, mod in stubs.make_stubs(models_dir).items():
        monkeypatch.setitem(sys.modules, name, mod)
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
    assert req["required"]["weight_dtype"][0] == ["bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2"]
    assert req["required"]["compute_dtype"][0] == ["bf16", "fp16"]
    assert set(req["required"]["offload"][0]) == {"none", "model", "blocks", "auto"}
    assert req["required"]["blocks_to_stream"][1]["min"] == 0 and req["required"]["blocks_to_stream"][1]["max"] == 40
    assert req["required"]["attention"][0] == ["auto", "sdpa", "sdpa_flash", "sdpa_cudnn", "sage", "flash"]


def test_sampler_widgets(pack):
    req = pack.NODE_CLASS_MAPPINGS["WanMeterSampler"].INPUT_TYPES()
    r = req["required"]
    assert r["frames"][1]["step"] == 4 and r["frames"][1]["min"] == 1
    assert r["scheduler"][0] == ["unipc", "euler"]
    assert "A14B only" in r["cfg_low"][1]["tooltip"]
    assert set(req["optional"]) == {"latent", "start_image", "vae"}


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
    g = pack.nodes.routes.guess_variant_from_name
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
    ea = pack.nodes.estimate_adapter
    assert ea.match_gpu("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert ea.match_gpu("NVIDIA H100 80GB HBM3") is not None
    assert ea.resolve_gpu("auto", None) == ("H100 SXM", False)


def test_settings_from_prompt(pack):
    ea = pack.nodes.estimate_adapter
    prompt = {
        "1": {"class_type": "WanMeterModelLoader", "inputs": {"model": "a_high.safetensors", "model_low_noise": "a_low.safetensors",
              "weight_dtype": "fp8_e4m3fn", "compute_dtype": "bf16", "offload": "blocks", "blocks_to_stream": 10, "attention": "sdpa"}},
        "2": {"class_type": "WanMeterSampler", "inputs": {"model": ["1", 0], "width": 832, "height": ["9", 0], "frames": 49,
              "steps": 20, "cfg_high": 4.0, "cfg_low": 3.0}},
        "3": {"class_type": "WanMeterTextEncoderLoader", "inputs": {"device": "cpu"}},
        "4": {"class_type": "WanMeterVAEDecode", "inputs": {"tiled": "enable"}},
    }
    s = ea.settings_from_prompt(prompt)
    assert s["model"] == "a_high.safetensors" and s["blocks_to_stream"] == 10 and s["offload"] == "blocks"
    assert s["width"] == 832 and s["height"] == 720  # linked input -> default
    assert s["frames"] == 49 and s["text_encoder_device"] == "cpu" and s["vae_tiled"] is True
    assert ea.settings_from_prompt({"2": prompt["2"]}) is None


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
    assert body["cost_per_month"] == pytest.approx(body["cost_per_video"] * 100, rel=1e-3)
    assert body["seconds_per_step"] * 40 <= body["seconds_per_video"]

    status, auto = routes.estimate_reply(_settings(offload="auto"))
    assert status == 200 and auto["fits"] is True and auto["notes"][1].startswith("offload auto:")
    status, priced = routes.estimate_reply(_settings(price_per_hour=2.0, videos_per_month=10))
    assert priced["price_per_hour"] == 2.0
    assert priced["cost_per_video"] == pytest.approx(priced["seconds_per_video"] / 3600 * 2.0, rel=1e-6)
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
