"""Checkpoint formats made by their producers' code, loaded through the loader node.

- ComfyUI per-layer quantized files (comfy_quant: fp8, INT8, MXFP8, NVFP4) written by
  comfy-kitchen's own layouts (wanmeter/tiny/comfy_quant.py); reference: the same file decoded
  by comfy-kitchen's `Layout.dequantize` (the producer's decoder) into the float tiny model.
- kijai's fp8_e4m3fn_scaled naming (no prefix, no marker, scale_weight per linear).
- city96's tools/convert.py + fix_5d_tensors.py GGUF (tests/fixtures, see its README).
Each: variant detected, every tensor of the file used, forward equal to the dequantized
reference (fp32, tight) and to the original float model within the format's tolerance.
Bad input: truncated / corrupt / missing-scale files and GPUs without the format's kernels
give a WanMeterError naming the file and the fix, with nothing loaded.
"""
from __future__ import annotations

import gzip
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

from wanmeter.errors import WanMeterError
from wanmeter.loader import inspect_dit, load_dit
from wanmeter.loader.dit_keys import diffusers_to_official, official_to_diffusers
from wanmeter.tiny.spec import TINY_DIT

pytestmark = pytest.mark.filterwarnings("ignore:the same file .* is used for both experts")
ck = pytest.importorskip("comfy_kitchen", reason="comfy-kitchen writes the comfy_quant fixtures (pip install comfy-kitchen)")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).with_name("fixtures")
CQ = {"float8_e4m3fn": ("dit_t2v_high_cq_fp8", 1e-2), "int8_tensorwise": ("dit_t2v_high_cq_int8", 1e-2),
      "mxfp8": ("dit_t2v_high_cq_mxfp8", 1e-2), "nvfp4": ("dit_t2v_high_cq_nvfp4", 4e-2)}
_LAYOUT = {"float8_e4m3fn": "TensorCoreFP8Layout", "int8_tensorwise": "TensorWiseINT8Layout",
           "mxfp8": "TensorCoreMXFP8Layout", "nvfp4": "TensorCoreNVFP4Layout"}

_spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs_formats", Path(__file__).with_name("comfy_stubs.py"))
stubs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stubs)


@pytest.fixture(scope="module")
def files():
    from wanmeter.tiny import ensure_tiny_models

    return ensure_tiny_models(names=[n for n, _ in CQ.values()] + ["dit_t2v_high_kj_fp8_scaled"])


@pytest.fixture()
def city96_gguf(tmp_path):
    dst = tmp_path / "micro_wan22_t2v-BF16.gguf"
    with gzip.open(FIXTURES / "city96_micro_wan22_t2v-BF16.gguf.gz", "rb") as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out)
    return dst


def _inputs(text_dim: int):
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 16, text_dim, generator=g)


def _forward(model, text_dim: int = TINY_DIT["text_dim"], dtype=torch.float32):
    x, ctx = _inputs(text_dim)
    with torch.no_grad():
        return model(hidden_states=x.to(dtype), timestep=torch.tensor([700.0]), encoder_hidden_states=ctx.to(dtype),
                     return_dict=False)[0].float()


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _file_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _kitchen_reference(path, fmt):
    """The float tiny model with every quantized layer replaced by comfy-kitchen's decoding of the file."""
    from comfy_kitchen.tensor import get_layout_class

    from wanmeter.tiny.dit import tiny_reference_model

    model = tiny_reference_model("t2v_a14b", "high")
    sd = _file_tensors(path)
    o2d = diffusers_to_official(model.state_dict().keys(), TINY_DIT["num_layers"])
    layout = get_layout_class(_LAYOUT[fmt])
    with torch.no_grad():
        for key in [k for k in sd if k.endswith(".weight_scale")]:
            group = key[: -len(".weight_scale")]
            p = model.get_parameter(o2d[f"{group}.weight"])
            shape = tuple(p.shape)
            q, s = sd[f"{group}.weight"], sd[key]
            if fmt == "nvfp4":
                params = layout.Params(scale=sd[f"{group}.weight_scale_2"], orig_dtype=torch.float32, orig_shape=shape,
                                       block_scale=s)
            else:
                params = layout.Params(scale=s, orig_dtype=torch.float32, orig_shape=shape)
            p.copy_(layout.dequantize(q, params)[: shape[0], : shape[1]].float())
    return model


def _all_keys_used(info, file_keys) -> None:
    """Every key of the file is a model parameter (strict load) or the scale/marker of a decoded layer."""
    aux = set()
    for g in info.quant:
        aux |= {f"{g}.weight_scale", f"{g}.weight_scale_2", f"{g}.comfy_quant"}
    aux |= {k for k in file_keys if k.endswith(".scale_weight") and k[: -len(".scale_weight")] + ".weight" in file_keys}
    params = set(official_to_diffusers([k for k in file_keys if k not in aux]))
    assert len(params) == len([k for k in file_keys if k not in aux])
    assert set(file_keys) - aux - {v for v in official_to_diffusers([k for k in file_keys if k not in aux]).values()} == set()


@pytest.mark.parametrize("fmt", list(CQ))
def test_comfy_quant_engine_parity(files, fmt):
    name, tol = CQ[fmt]
    path = files[name]
    info = inspect_dit(path)
    assert info.variant == "t2v_a14b" and info.expert_hint == "high"
    assert len(info.quant) == 2 * 10 and set(info.quant.values()) == {fmt}   # every block linear, this format
    assert info.param_count == 2227008                                       # NVFP4 counts 2 weights per byte
    _all_keys_used(info, list(_file_tensors(path)))
    ref_dq = _forward(_kitchen_reference(path, fmt))
    from wanmeter.tiny.dit import tiny_reference_model

    ref_float = _forward(tiny_reference_model("t2v_a14b", "high"))
    decoded = load_dit(info, weight_dtype="fp32", compute_dtype="fp32")       # decoded once at load
    kept = load_dit(info, weight_dtype="file", compute_dtype="fp32")          # kept quantized (QuantLinear)
    from wanmeter.loader.comfy_quant_load import QuantLinear

    qlin = [m for m in kept.model.modules() if isinstance(m, QuantLinear)]
    assert len(qlin) == 20 and all(m.mode == "dequant" for m in qlin)       # CPU: decoded per layer
    sd = _file_tensors(path)
    for m in qlin:  # the file's bytes are what stays in memory
        assert torch.equal(m.weight.view(torch.uint8), sd[f"{m.layer}.weight"].view(torch.uint8))
    kept_bytes = sum(b.numel() * b.element_size() for m in qlin for b in m.buffers())
    assert kept_bytes < 0.6 * sum(m.in_features * m.out_features * 2 for m in qlin)  # smaller than bf16
    for loaded in (decoded, kept):
        out = _forward(loaded.model)
        assert _rel(out, ref_dq) < 1e-5, fmt          # equal to the producer's decoding
        assert _rel(out, ref_float) < tol, fmt        # and near the float model (format's error)


def test_kijai_fp8_scaled_naming(files):
    path = files["dit_t2v_high_kj_fp8_scaled"]
    info = inspect_dit(path)
    assert info.variant == "t2v_a14b" and info.scaled_fp8 and info.key_prefix == "" and info.expert_hint == "high"
    keys = list(_file_tensors(path))
    assert "scaled_fp8" not in keys
    _all_keys_used(info, keys)
    from wanmeter.tiny.dit import tiny_reference_model

    ref = tiny_reference_model("t2v_a14b", "high")
    sd = _file_tensors(path)
    o2d = diffusers_to_official(ref.state_dict().keys(), TINY_DIT["num_layers"])
    with torch.no_grad():  # the convention's meaning: weight = fp8 * scale_weight
        for k in [k for k in sd if k.endswith(".scale_weight")]:
            g = k[: -len(".scale_weight")]
            ref.get_parameter(o2d[f"{g}.weight"]).copy_(sd[f"{g}.weight"].float() * sd[k].float())
    out = _forward(load_dit(info, weight_dtype="fp32", compute_dtype="fp32").model)
    assert _rel(out, _forward(ref)) < 1e-5


def test_city96_convert_gguf(city96_gguf):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from make_city96_gguf_fixture import MICRO, micro_reference_model
    finally:
        sys.path.remove(str(ROOT / "tools"))
    info = inspect_dit(city96_gguf)
    assert info.layout == "gguf" and info.variant == "t2v_a14b" and info.tiny
    assert info.tensors["patch_embedding.weight"].shape == (128, 16, 1, 2, 2)   # the 5-D tensor fix_5d_tensors added
    assert info.config["num_layers"] == 1 and info.config["text_dim"] == MICRO["text_dim"]
    loaded = load_dit(info, compute_dtype="fp32")
    ref = micro_reference_model()
    assert set(loaded.model.state_dict()) == set(ref.state_dict())              # every tensor used, none missing
    assert _rel(_forward(loaded.model, MICRO["text_dim"]), _forward(ref, MICRO["text_dim"])) < 1e-5


# --- through the loader node --------------------------------------------------------------------

@pytest.fixture()
def pack(tmp_path, monkeypatch, files, city96_gguf):
    models = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "audio_encoders"):
        (models / sub).mkdir(parents=True)
    for p in list(files.values()) + [city96_gguf]:
        (models / "diffusion_models" / p.name).symlink_to(p)
    for name, mod in stubs.make_stubs(models).items():
        monkeypatch.setitem(sys.modules, name, mod)
    mod = stubs.import_pack()
    yield mod
    for k in [k for k in sys.modules if k == stubs.PACK or k.startswith(stubs.PACK + ".")]:
        del sys.modules[k]


@pytest.mark.parametrize("fmt", list(CQ))
def test_loader_node_comfy_quant(pack, files, fmt):
    name, tol = CQ[fmt]
    node = pack.NODE_CLASS_MAPPINGS["WanMeterModelLoader"]()
    ref = _kitchen_reference(files[name], fmt).to(torch.bfloat16)
    want = _forward(ref, dtype=torch.bfloat16)
    for wd in ("bf16", "file"):
        out = node.load(files[name].name, wd, "bf16", "none", 0, "sdpa", model_low_noise=files[name].name)
        bundle = out[0] if isinstance(out, tuple) else out["result"][0]
        assert bundle.variant == "t2v_a14b"
        assert _rel(_forward(bundle.experts[0], dtype=torch.bfloat16), want) < 2e-2, (fmt, wd)


def test_loader_node_kijai_and_city96(pack, files, city96_gguf):
    node = pack.NODE_CLASS_MAPPINGS["WanMeterModelLoader"]()
    kj = files["dit_t2v_high_kj_fp8_scaled"].name
    (bundle,) = node.load(kj, "bf16", "bf16", "none", 0, "sdpa", model_low_noise=kj)
    assert bundle.variant == "t2v_a14b"
    (bundle,) = node.load(city96_gguf.name, "bf16", "bf16", "none", 0, "sdpa", model_low_noise=city96_gguf.name)
    assert bundle.variant == "t2v_a14b" and bundle.experts[0].config.num_layers == 1


# --- bad input -----------------------------------------------------------------------------------

def _rewrite(src, dst, drop=(), change=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    if change:
        change(sd)
    save_file(sd, str(dst), metadata=meta)
    return dst


def test_truncated_quantized_file(files, tmp_path):
    src = files["dit_t2v_high_cq_nvfp4"]
    for frac in (0.3, 0.9):
        bad = tmp_path / f"cut{frac}.safetensors"
        bad.write_bytes(src.read_bytes()[: int(src.stat().st_size * frac)])
        with pytest.raises(WanMeterError, match=rf"{bad.name}.*(truncated|download it again)"):
            load_dit(bad, weight_dtype="file")


def test_missing_scale_named(files, tmp_path):
    for name, drop in (("dit_t2v_high_cq_int8", "blocks.1.ffn.2.weight_scale"),
                       ("dit_t2v_high_cq_nvfp4", "blocks.0.self_attn.q.weight_scale_2")):
        bad = _rewrite(files[name], tmp_path / f"noscale_{name}.safetensors", drop=(drop,))
        with pytest.raises(WanMeterError, match=rf"{bad.name}.*{drop.rsplit('.', 1)[0]}.*missing.*download"):
            inspect_dit(bad)


def test_corrupt_scales_and_marker(files, tmp_path):
    def bad_scale(sd):
        sd["blocks.0.ffn.0.weight_scale"] = torch.ones(3, 3, dtype=torch.float32)

    bad = _rewrite(files["dit_t2v_high_cq_fp8"], tmp_path / "badscale.safetensors", change=bad_scale)
    with pytest.raises(WanMeterError, match=r"badscale.*blocks.0.ffn.0.*(corrupt|download)"):
        load_dit(bad, weight_dtype="bf16")

    def bad_marker(sd):
        sd["blocks.1.self_attn.k.comfy_quant"] = torch.tensor(list(b"{not json"), dtype=torch.uint8)

    bad = _rewrite(files["dit_t2v_high_cq_mxfp8"], tmp_path / "badmarker.safetensors", change=bad_marker)
    with pytest.raises(WanMeterError, match=r"badmarker.*comfy_quant is not valid"):
        load_dit(bad, weight_dtype="file")

    def nan_scale(sd):
        sd["blocks.0.ffn.0.weight_scale"] = torch.tensor(float("nan"))

    bad = _rewrite(files["dit_t2v_high_cq_int8"], tmp_path / "nanscale.safetensors", change=nan_scale)
    with pytest.raises(WanMeterError, match=r"nanscale.*NaN"):
        load_dit(bad, weight_dtype="bf16")


def test_format_the_gpu_cannot_compute(files, monkeypatch):
    from wanmeter.loader import comfy_quant_load

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))   # an H100
    dev = torch.device("cuda", 0)
    for fmt in ("nvfp4", "mxfp8"):
        with pytest.raises(WanMeterError, match=r"Blackwell.*weight_dtype bf16"):
            comfy_quant_load.compute_support(fmt, dev)
    assert comfy_quant_load.compute_support("float8_e4m3fn", dev) == "kernel"
    assert comfy_quant_load.compute_support("int8_tensorwise", dev) == "kernel"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))   # an A100
    assert comfy_quant_load.compute_support("float8_e4m3fn", dev) == "dequant"
    info = inspect_dit(files["dit_t2v_high_cq_nvfp4"])
    with pytest.raises(WanMeterError, match="Blackwell"):   # refused before any weight is read
        comfy_quant_load.load_quantized_dit(info, compute_dtype=torch.bfloat16, device=dev)


def test_unsupported_comfy_format_named(files, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(files["dit_t2v_high_cq_int8"]), framework="pt") as f:
        meta = dict(f.metadata())
        sd = {k: f.get_tensor(k) for k in f.keys()}
    layers = json.loads(meta["_quantization_metadata"])["layers"]
    layers["blocks.0.ffn.0"] = {"format": "convrot_w4a4"}
    meta["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    save_file(sd, str(tmp_path / "convrot.safetensors"), metadata=meta)
    with pytest.raises(WanMeterError, match=r"convrot.safetensors.*convrot_w4a4.*does not run"):
        inspect_dit(tmp_path / "convrot.safetensors")


def test_auto_plan_source_of_quantized_files(files):
    """The node's offload=auto plans a comfy_quant file as decodable float weights (bf16 / fp8)."""
    from wanmeter.memplan import source_of
    from wanmeter.memplan.auto import weight_candidates

    for name, _ in CQ.values():
        src = source_of(inspect_dit(files[name]))
        assert weight_candidates(src)[0] in ("bf16", "fp16"), (name, src)
