"""`python -m wanmeter inspect`: kind, variant, format, sizes and workflow slot from headers only,
on the tiny fixtures and on header-only real-size files (fake_headers: real shapes, no data)."""
from __future__ import annotations

import json

import pytest
import torch

from wanmeter.cli import main
from wanmeter.loader.audit import audit_file
from wanmeter.loader.dit_keys import official_layout
from wanmeter.tiny import ensure_tiny_models
from wanmeter.tiny.fake_headers import write_fake_release, write_header_only

GIB = 1024 ** 3


@pytest.fixture(scope="module")
def tiny():
    return ensure_tiny_models(names=["dit_t2v_high", "dit_t2v_low_fp8_scaled", "dit_ti2v_q4_0", "umt5_fp16",
                                     "vae_wan21", "vae_wan22", "dit_t2v_high_kj_fp8_scaled"])


def test_tiny_parts_and_slots(tiny):
    a = {n: audit_file(p) for n, p in tiny.items()}
    assert (a["dit_t2v_high"].kind, a["dit_t2v_high"].variant, a["dit_t2v_high"].slot) == \
        ("diffusion model", "t2v_a14b", "DiT high noise (model)")
    assert a["dit_t2v_low_fp8_scaled"].format == "ComfyUI fp8_scaled" and "low noise" in a["dit_t2v_low_fp8_scaled"].slot
    assert a["dit_t2v_high_kj_fp8_scaled"].format.startswith("kijai fp8_e4m3fn_scaled")
    assert a["dit_ti2v_q4_0"].format == "GGUF Q4_0" and a["dit_ti2v_q4_0"].slot.startswith("DiT (model;")
    assert a["umt5_fp16"].kind == "text encoder" and a["umt5_fp16"].format == "fp16"
    assert a["vae_wan21"].slot.startswith("VAE (wan21") and a["vae_wan22"].slot.startswith("VAE (wan22")
    assert all(not x.problem for x in a.values())


def test_real_size_headers(tmp_path):
    bf16 = audit_file(write_fake_release("t2v_a14b", tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors", dtype="F16"))
    assert bf16.params == pytest.approx(14.29e9, rel=0.01) and bf16.format == "fp16"
    assert bf16.vram_bytes["bf16"] / GIB == pytest.approx(26.6, rel=0.02)
    assert bf16.vram_bytes["fp8_e4m3fn"] / GIB == pytest.approx(13.3, rel=0.02)
    # a real-size ComfyUI NVFP4 file: block linears packed 2 per byte + fp8 block scales
    layout = {}
    for k, shape in official_layout("ti2v_5b").items():
        if k.startswith("blocks.") and len(shape) == 2:
            g = k[: -len(".weight")]
            out_f, in_f = shape
            layout[k] = ("U8", (out_f, in_f // 2))
            layout[g + ".weight_scale"] = ("F8_E4M3", (-(-out_f // 128) * 128, -(-(in_f // 16) // 4) * 4))
            layout[g + ".weight_scale_2"] = ("F32", ())
            layout[g + ".comfy_quant"] = ("U8", (len(b'{"format": "nvfp4"}'),))
        else:
            layout[k] = ("BF16", shape)
    nv = audit_file(write_header_only(tmp_path / "wan2.2_ti2v_5B_nvfp4.safetensors", layout))
    assert nv.variant == "ti2v_5b" and "nvfp4" in nv.format and nv.params == pytest.approx(5.0e9, rel=0.02)
    assert nv.vram_bytes["file (kept quantized)"] < 0.33 * nv.vram_bytes["bf16"]
    assert any("Blackwell" in n for n in nv.notes)


def test_loras_and_problems(tmp_path, capsys):
    from safetensors.torch import save_file

    lora = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(64, 5120),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, 64)}
    save_file(lora, str(tmp_path / "Wan2.2-Lightning_T2V-A14B-4steps-lora_LOW_fp16.safetensors"))
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)},
              str(tmp_path / "sdxl_style.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    lo = audit_file(tmp_path / "Wan2.2-Lightning_T2V-A14B-4steps-lora_LOW_fp16.safetensors")
    assert lo.kind == "LoRA" and "low_noise" in lo.slot and "rank 64" in lo.notes and any("14B" in n for n in lo.notes)
    sd = audit_file(tmp_path / "sdxl_style.safetensors")
    assert "SDXL" in sd.problem and sd.slot == "none"
    assert "truncated" in audit_file(tmp_path / "cut.safetensors").problem or \
        "not a valid" in audit_file(tmp_path / "cut.safetensors").problem
    rc = main(["inspect", "--json", str(tmp_path / "Wan2.2-Lightning_T2V-A14B-4steps-lora_LOW_fp16.safetensors"),
               str(tmp_path / "sdxl_style.safetensors")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and [o["kind"] for o in out] == ["LoRA", "LoRA"]
