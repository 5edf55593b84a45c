"""LoRA merging: ComfyUI/kijai-format Wan LoRA -> diffusers names (diffusers' converter) -> merged.

The independent reference is ComfyUI's LoRA semantics applied in the *official* key space:
W_official += strength * (alpha / rank) * up @ down, bias += strength * diff_b, then the
weights are mapped to diffusers names with diffusers' own key converter.
"""
from __future__ import annotations

import pytest
import torch

from wanmeter.accel import attach_lora, lora_to_diffusers, merge_lora
from wanmeter.errors import WanMeterError
from wanmeter.loader.dit_keys import diffusers_to_official
from wanmeter.tiny.dit import tiny_reference_model
from wanmeter.tiny.spec import TINY_DIT

RANK = 4
# (official module, out, in) for the tiny DiT (dim 256, ffn 512)
_TARGETS = [("blocks.0.self_attn.q", 256, 256), ("blocks.1.cross_attn.k", 256, 256),
            ("blocks.0.ffn.0", 512, 256), ("blocks.1.ffn.2", 256, 512)]


def _comfy_lora(alpha_style: str = "lora_down") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    up_k, down_k = ("lora_up", "lora_down") if alpha_style == "lora_down" else ("lora_B", "lora_A")
    sd = {}
    for name, out_f, in_f in _TARGETS:
        sd[f"diffusion_model.{name}.{down_k}.weight"] = 0.2 * torch.randn(RANK, in_f, generator=g)
        sd[f"diffusion_model.{name}.{up_k}.weight"] = 0.2 * torch.randn(out_f, RANK, generator=g)
        sd[f"diffusion_model.{name}.alpha"] = torch.tensor(2.0)
    sd["diffusion_model.blocks.0.ffn.0.diff_b"] = 0.1 * torch.randn(512, generator=g)
    return sd


def _reference_merge(model, lora: dict, strength: float) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    o2d = diffusers_to_official(sd.keys(), TINY_DIT["num_layers"])  # {official: diffusers}
    for name, _, _ in _TARGETS:
        keys = [k for k in lora if k.startswith(f"diffusion_model.{name}.")]
        down = next(lora[k] for k in keys if ".lora_down." in k or ".lora_A." in k)
        up = next(lora[k] for k in keys if ".lora_up." in k or ".lora_B." in k)
        alpha = float(lora[f"diffusion_model.{name}.alpha"])
        dk = o2d[f"{name}.weight"]
        sd[dk] = sd[dk] + strength * (alpha / down.shape[0]) * (up @ down)
    sd[o2d["blocks.0.ffn.0.bias"]] += strength * lora["diffusion_model.blocks.0.ffn.0.diff_b"]
    return sd


def _out(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    ctx = torch.randn(1, 16, TINY_DIT["text_dim"], generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=ctx, return_dict=False)[0]


@pytest.mark.parametrize("style", ["lora_down", "lora_A"])
def test_merge_matches_comfyui_semantics(style):
    lora = _comfy_lora(style)
    model = tiny_reference_model("t2v_a14b", "high")
    base = _out(model)
    want = _reference_merge(model, lora, 0.8)
    changed = merge_lora(model, lora, strength=0.8)
    assert len(changed) == len(_TARGETS)
    got = model.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    assert (_out(model) - base).abs().max() > 1e-3  # the LoRA changes the output


def test_unprefixed_keys_and_converter_names():
    lora = {k.removeprefix("diffusion_model."): v for k, v in _comfy_lora().items()}
    before = {k: v.clone() for k, v in lora.items()}
    conv = lora_to_diffusers(lora)
    assert all(torch.equal(lora[k], before[k]) for k in lora)  # the caller's tensors are not scaled in place
    assert "blocks.0.attn1.to_q.lora_A.weight" in conv and "blocks.0.ffn.net.0.proj.lora_B.bias" in conv


def test_merge_errors():
    model = tiny_reference_model("t2v_a14b", "high")
    with pytest.raises(WanMeterError, match="not a Wan LoRA|No LoRA"):
        merge_lora(model, {"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)})
    bad = _comfy_lora()
    bad["diffusion_model.blocks.0.self_attn.q.lora_down.weight"] = torch.zeros(RANK, 128)
    with pytest.raises(WanMeterError, match="another Wan model size"):
        merge_lora(model, bad)
    with pytest.raises(WanMeterError, match="does not exist"):
        merge_lora(model, "/nonexistent/lora.safetensors")


def test_attached_equals_merged():
    pytest.importorskip("peft")
    lora = _comfy_lora()
    merged = tiny_reference_model("t2v_a14b", "high")
    merge_lora(merged, lora, strength=1.0)
    attached = tiny_reference_model("t2v_a14b", "high")
    attach_lora(attached, lora, strength=1.0)
    torch.testing.assert_close(_out(attached), _out(merged), rtol=1e-4, atol=1e-5)
