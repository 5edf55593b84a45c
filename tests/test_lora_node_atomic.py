"""WanMeter LoRA node: a LoRA that fails leaves the (upstream-cached) model exactly as it was,
including when the same node re-runs with another file (old LoRA out + new in is one step);
a LoRA file named for one A14B expert is refused for the other."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs_lora", Path(__file__).with_name("comfy_stubs.py"))
stubs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stubs)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    from wanmeter.tiny import ensure_tiny_models

    models = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "audio_encoders", "loras"):
        (models / sub).mkdir(parents=True)
    paths = ensure_tiny_models(names=["dit_t2v_high", "dit_t2v_low"])
    for p in paths.values():
        (models / "diffusion_models" / p.name).symlink_to(p)
    for name, mod in stubs.make_stubs(models).items():
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules["folder_paths"].folder_names_and_paths["loras"] = ([str(models / "loras")], set(stubs.SUPPORTED))
    pack = stubs.import_pack()
    yield pack, models, {k: v.name for k, v in paths.items()}
    for k in [k for k in sys.modules if k == stubs.PACK or k.startswith(stubs.PACK + ".")]:
        del sys.modules[k]


def _lora(scale: float, bad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    sd = {}
    for name, o, i in [("blocks.0.self_attn.q", 256, 256), ("blocks.1.ffn.2", 256, 512)]:
        sd[f"diffusion_model.{name}.lora_down.weight"] = scale * torch.randn(4, i, generator=g)
        sd[f"diffusion_model.{name}.lora_up.weight"] = scale * torch.randn(o, 4, generator=g)
    if bad:
        sd["diffusion_model.blocks.1.ffn.2.lora_down.weight"] = torch.zeros(4, 100)
    return sd


def test_failed_lora_node_changes_nothing(env):
    from safetensors.torch import save_file

    pack, models, names = env
    save_file(_lora(0.2), str(models / "loras" / "good.safetensors"))
    save_file(_lora(0.2, bad=True), str(models / "loras" / "bad.safetensors"))
    m = pack.NODE_CLASS_MAPPINGS
    (model,) = m["WanMeterModelLoader"]().load(names["dit_t2v_high"], "fp32", "bf16", "none", 0, "sdpa",
                                                model_low_noise=names["dit_t2v_low"])
    node = m["WanMeterLoRA"]()
    node.apply(model, "good.safetensors", 1.0, "both", unique_id="1")
    snap = [{k: v.clone() for k, v in e.state_dict().items()} for e in model.experts]
    # the same node, now with a bad file: the good LoRA must not come out, the bad must not go in
    with pytest.raises(Exception, match="another Wan model size"):
        node.apply(model, "bad.safetensors", 1.0, "both", unique_id="1")
    for e, s in zip(model.experts, snap):
        for k, v in e.state_dict().items():
            assert torch.equal(v, s[k]), k
    assert [lo.path.endswith("good.safetensors") for lo in model.wanmeter_source.loras] == [True]


def test_lora_named_for_the_other_expert_is_refused(env):
    from safetensors.torch import save_file

    pack, models, names = env
    save_file(_lora(0.2), str(models / "loras" / "Wan2.2-Lightning_T2V-A14B-4steps-lora_HIGH_fp16.safetensors"))
    m = pack.NODE_CLASS_MAPPINGS
    (model,) = m["WanMeterModelLoader"]().load(names["dit_t2v_high"], "fp32", "bf16", "none", 0, "sdpa",
                                                model_low_noise=names["dit_t2v_low"])
    with pytest.raises(Exception, match="high-noise expert but apply_to is low_noise"):
        m["WanMeterLoRA"]().apply(model, "Wan2.2-Lightning_T2V-A14B-4steps-lora_HIGH_fp16.safetensors", 1.0,
                                  "low_noise", unique_id="2")
    m["WanMeterLoRA"]().apply(model, "Wan2.2-Lightning_T2V-A14B-4steps-lora_HIGH_fp16.safetensors", 1.0,
                              "high_noise", unique_id="3")
