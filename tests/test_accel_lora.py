"""LoRA merging: every Wan LoRA key layout -> the same change, equal to an independent reference.

The reference is ComfyUI's LoRA semantics applied in the *official* key space:
W_official += strength * (alpha / rank) * up @ down, W += strength * diff, bias += strength * diff_b,
then the weights are mapped to diffusers names with diffusers' own key converter (dit_keys).
One logical LoRA is written in each layout people download (ComfyUI/kijai, lightx2v, diffusers/PEFT,
musubi), merged, attached at run time (PEFT), and compared. A failed merge must change nothing.
"""
from __future__ import annotations

import pytest
import torch

from wanmeter.accel import attach_lora, lora_expert_hint, lora_to_diffusers, merge_lora, merge_loras_atomic
from wanmeter.errors import WanMeterError
from wanmeter.loader.dit_keys import diffusers_to_official, official_to_diffusers
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


# --- one logical LoRA, every layout ------------------------------------------------------------

def _logical(full_diffs: bool) -> dict[str, dict[str, torch.Tensor]]:
    """{official group: {down, up, alpha, diff, diff_b}}: pairs on attention/FFN/head/embeddings,
    bias diffs, and (full_diffs) lightx2v-style full differences of a norm, the head and a
    modulation table."""
    g = torch.Generator().manual_seed(11)
    d, f, t = TINY_DIT["dim"], TINY_DIT["ffn_dim"], TINY_DIT["text_dim"]
    pairs = {"blocks.0.self_attn.q": (d, d), "blocks.0.self_attn.o": (d, d), "blocks.1.cross_attn.v": (d, d),
             "blocks.1.ffn.0": (f, d), "blocks.0.ffn.2": (d, f), "text_embedding.0": (d, t),
             "time_projection.1": (6 * d, d)}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, (o, i) in pairs.items():
        out[name] = {"down": 0.2 * torch.randn(RANK, i, generator=g), "up": 0.2 * torch.randn(o, RANK, generator=g),
                     "alpha": torch.tensor(float(RANK) / 2)}
    out["blocks.1.ffn.0"]["diff_b"] = 0.1 * torch.randn(f, generator=g)
    out["blocks.0.self_attn.o"]["diff_b"] = 0.1 * torch.randn(d, generator=g)
    if full_diffs:
        out["blocks.1.norm3"] = {"diff": 0.05 * torch.randn(d, generator=g), "diff_b": 0.05 * torch.randn(d, generator=g)}
        out["head.head"] = {"diff": 0.02 * torch.randn(16 * 4, d, generator=g)}
        out["blocks.0.modulation"] = {"diff": 0.02 * torch.randn(1, 6, d, generator=g)}
    return out


def _reference(model, logical, strength) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    o2d = diffusers_to_official(sd.keys(), TINY_DIT["num_layers"])
    for name, parts in logical.items():
        if "down" in parts:
            scale = float(parts["alpha"]) / parts["down"].shape[0]
            sd[o2d[f"{name}.weight"]] += strength * scale * (parts["up"] @ parts["down"])
        if "diff" in parts:
            key = o2d[name] if name.endswith("modulation") else o2d[f"{name}.weight"]
            sd[key] += strength * parts["diff"].reshape(sd[key].shape)
        if "diff_b" in parts:
            sd[o2d[f"{name}.bias"]] += strength * parts["diff_b"]
    return sd


def _write(layout: str, logical) -> dict[str, torch.Tensor]:
    """The logical LoRA in the key layout of a producer."""
    to_d = {o.rsplit(".", 1)[0]: d.rsplit(".", 1)[0] for d, o in official_to_diffusers(
        [f"{n}.weight" for n in logical if not n.endswith("modulation")]).items()}
    sd: dict[str, torch.Tensor] = {}
    for name, parts in logical.items():
        if layout == "comfy":          # ComfyUI / kijai: diffusion_model. + lora_down/up + alpha
            base, dk, uk = f"diffusion_model.{name}", "lora_down.weight", "lora_up.weight"
        elif layout == "kijai_bare":   # kijai exports without the prefix, diff_m for the modulation
            base, dk, uk = name, "lora_down.weight", "lora_up.weight"
        elif layout == "lightx2v":     # lightx2v: diffusion_model. + lora_A/lora_B, no alpha (folded)
            base, dk, uk = f"diffusion_model.{name}", "lora_A.weight", "lora_B.weight"
        elif layout == "musubi":       # musubi-tuner: lora_unet_ + underscored module names
            base, dk, uk = "lora_unet_" + name.replace(".", "_"), "lora_down.weight", "lora_up.weight"
        elif layout == "diffusers":    # diffusers / PEFT: transformer. + diffusers module names
            base, dk, uk = f"transformer.{to_d[name]}", "lora_A.weight", "lora_B.weight"
        else:
            raise AssertionError(layout)
        if "down" in parts:
            down, up = parts["down"], parts["up"]
            if layout in ("lightx2v", "diffusers"):
                down = down * (float(parts["alpha"]) / down.shape[0])
            else:
                sd[f"{base}.alpha"] = parts["alpha"]
            sd[f"{base}.{dk}"], sd[f"{base}.{uk}"] = down, up
        if "diff" in parts:
            if layout == "kijai_bare" and name.endswith("modulation"):
                sd[f"{name.rsplit('.', 1)[0]}.diff_m"] = parts["diff"]
            else:
                sd[f"{base}.diff"] = parts["diff"]
        if "diff_b" in parts:
            sd[f"{base}.lora_B.bias" if layout == "diffusers" else f"{base}.diff_b"] = parts["diff_b"]
    return sd


LAYOUTS = ["comfy", "kijai_bare", "lightx2v", "musubi", "diffusers"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_merges_like_the_reference(layout):
    full = layout != "diffusers"   # diffusers/PEFT files carry only A/B pairs and biases
    logical = _logical(full)
    model = tiny_reference_model("t2v_a14b", "high")
    want = _reference(model, logical, 0.7)
    lora = _write(layout, logical)
    before = {k: v.clone() for k, v in lora.items()}
    changed = merge_lora(model, lora, strength=0.7)
    assert all(torch.equal(lora[k], before[k]) for k in lora)  # the caller's tensors are not scaled in place
    assert len(changed) == len(logical)                          # every group found its parameter
    got = model.state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("layout", ["comfy", "lightx2v", "musubi", "diffusers"])
def test_run_time_lora_equals_merged(layout):
    pytest.importorskip("peft")
    logical = _logical(False)
    logical["head.head"] = {"diff": 0.02 * torch.randn(64, 256, generator=torch.Generator().manual_seed(3))}
    if layout == "diffusers":
        logical.pop("head.head")
    lora = _write(layout, logical)
    merged = tiny_reference_model("t2v_a14b", "high")
    merge_lora(merged, lora, strength=0.8)
    attached = tiny_reference_model("t2v_a14b", "high")
    attach_lora(attached, lora, strength=0.8)
    torch.testing.assert_close(_out(attached), _out(merged), rtol=1e-4, atol=1e-5)
    assert (_out(attached) - _out(tiny_reference_model("t2v_a14b", "high"))).abs().max() > 1e-3


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


def test_converter_names():
    model = tiny_reference_model("t2v_a14b", "high")
    lora = {k.removeprefix("diffusion_model."): v for k, v in _comfy_lora().items()}
    conv = lora_to_diffusers(lora, model)
    assert "blocks.0.attn1.to_q.lora_A.weight" in conv and "blocks.0.ffn.net.0.proj.lora_B.bias" in conv


# --- all-or-nothing (issue 18, item 3) ---------------------------------------------------------

def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), f"{k} changed by a failed merge"


def test_failed_merge_changes_nothing():
    """The first layers match, a later one does not (wrong size): before the fix the first
    layers stayed changed; now nothing is."""
    model = tiny_reference_model("t2v_a14b", "high")
    snap = _snapshot(model)
    bad = _comfy_lora()
    bad["diffusion_model.blocks.1.ffn.2.lora_down.weight"] = torch.zeros(RANK, 128)  # the last target, wrong size
    with pytest.raises(WanMeterError, match="another Wan model size"):
        merge_lora(model, bad)
    _assert_unchanged(model, snap)
    nan = _comfy_lora()
    nan["diffusion_model.blocks.1.ffn.2.lora_up.weight"][0, 0] = float("nan")
    with pytest.raises(WanMeterError, match="NaN"):
        merge_lora(model, nan)
    _assert_unchanged(model, snap)


def test_failed_merge_into_second_expert_changes_neither():
    high, low = tiny_reference_model("t2v_a14b", "high"), tiny_reference_model("t2v_a14b", "low")
    s_high, s_low = _snapshot(high), _snapshot(low)
    bad = _comfy_lora()
    bad["diffusion_model.blocks.1.ffn.2.lora_up.weight"] = torch.zeros(128, RANK)
    with pytest.raises(WanMeterError):
        merge_loras_atomic([(high, _comfy_lora(), 1.0), (low, bad, 1.0)])
    _assert_unchanged(high, s_high)
    _assert_unchanged(low, s_low)


def test_interrupted_merge_is_restored(monkeypatch):
    """A failure while applying (after validation) takes back what was applied so far."""
    import wanmeter.accel.lora as lora_mod

    model = tiny_reference_model("t2v_a14b", "high")
    snap = _snapshot(model)
    real, calls = lora_mod._add_delta, []

    def flaky(c, sign):
        calls.append(sign)
        if len(calls) == 3 and sign > 0:
            raise RuntimeError("CUDA out of memory (simulated)")
        real(c, sign)

    monkeypatch.setattr(lora_mod, "_add_delta", flaky)
    with pytest.raises(WanMeterError, match="restored"):
        merge_lora(model, _comfy_lora())
    for k, v in model.state_dict().items():  # fp32 model: the subtraction restores to rounding
        torch.testing.assert_close(v, snap[k], rtol=0, atol=1e-6)


# --- refused by name ---------------------------------------------------------------------------

@pytest.mark.parametrize("keys,name", [
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
      "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"], "SDXL"),
    (["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight",
      "diffusion_model.single_blocks.0.linear1.lora_A.weight"], "Flux"),
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], "another family"),
    (["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], "text-encoder"),
])
def test_foreign_lora_refused_by_name(keys, name):
    model = tiny_reference_model("t2v_a14b", "high")
    snap = _snapshot(model)
    with pytest.raises(WanMeterError, match=name):
        merge_lora(model, {k: torch.zeros(4, 4) for k in keys})
    _assert_unchanged(model, snap)


def test_wrong_wan_size_and_no_match():
    model = tiny_reference_model("t2v_a14b", "high")
    wan13 = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(RANK, 1536),
             "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(1536, RANK)}
    with pytest.raises(WanMeterError, match="Wan2.1 1.3B"):
        merge_lora(model, wan13)
    with pytest.raises(WanMeterError, match="None of the"):
        merge_lora(model, {"something.lora_down.weight": torch.zeros(2, 2)})
    with pytest.raises(WanMeterError, match="does not exist"):
        merge_lora(model, "/nonexistent/lora.safetensors")
    with pytest.raises(WanMeterError, match="DoRA"):
        merge_lora(model, {"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.zeros(1, 256)})


def test_expert_hint_from_names():
    assert lora_expert_hint("Wan2.2-Lightning_T2V-A14B-4steps-lora_HIGH_fp16.safetensors") == "high"
    assert lora_expert_hint("wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors") == "low"
    assert lora_expert_hint("Wan22_A14B_T2V_HIGH_Lightning_4steps_lora_rank64_fp16.safetensors") == "high"
    assert lora_expert_hint("lightx2v_T2V_14B_cfg_step_distill_v2_lora_rank64_bf16.safetensors") is None
    assert lora_expert_hint("highlights_lowkey.safetensors") is None
