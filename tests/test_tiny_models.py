"""Tiny DiT fixtures: real key layout, determinism, registry behaviour."""
from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors import safe_open

from wanmeter.loader.dit_keys import official_layout
from wanmeter.tiny import ensure_tiny_models, register, registered
from wanmeter.tiny.dit import fixture_name, tiny_official_state_dict
from wanmeter.tiny.spec import TINY_DIT

DIT_FIXTURES = [("t2v_a14b", "high"), ("t2v_a14b", "low"), ("i2v_a14b", "high"), ("i2v_a14b", "low"), ("ti2v_5b", None)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    names = [fixture_name(v, e, s) for v, e in DIT_FIXTURES for s in (False, True)]
    return ensure_tiny_models(names=names)


def _expected_tiny_layout(variant: str) -> dict[str, tuple[int, ...]]:
    """The official layout with real dims replaced by the tiny ones and blocks cut to the tiny depth."""
    real = {"t2v_a14b": (5120, 13824), "i2v_a14b": (5120, 13824), "ti2v_5b": (3072, 14336)}[variant]
    dim, ffn = real
    subst = {dim: TINY_DIT["dim"], ffn: TINY_DIT["ffn_dim"], 6 * dim: 6 * TINY_DIT["dim"], 4096: TINY_DIT["text_dim"]}
    out = {}
    for k, shape in official_layout(variant).items():
        if k.startswith("blocks.") and int(k.split(".")[1]) >= TINY_DIT["num_layers"]:
            continue
        out[k] = tuple(subst.get(s, s) for s in shape)
    return out


@pytest.mark.parametrize("variant,expert", DIT_FIXTURES)
def test_tiny_file_has_the_official_layout(tiny, variant, expert):
    path = tiny[fixture_name(variant, expert)]
    with safe_open(str(path), "pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert got == _expected_tiny_layout(variant)
    assert dtypes == {"BF16"}


@pytest.mark.parametrize("variant,expert", DIT_FIXTURES)
def test_tiny_fp8_scaled_file_has_comfyui_layout(tiny, variant, expert):
    path = tiny[fixture_name(variant, expert, True)]
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        fp8 = {k for k in keys if f.get_slice(k).get_dtype() == "F8_E4M3"}
    base = set(_expected_tiny_layout(variant))
    scales = {k for k in keys if k.endswith(".scale_weight")}
    assert keys == base | scales | {"scaled_fp8"}
    # every 2-D block linear is fp8 with a scale, nothing else is
    linears = {k for k, s in _expected_tiny_layout(variant).items() if k.startswith("blocks.") and len(s) == 2}
    assert fp8 - {"scaled_fp8"} == linears
    assert {k[: -len(".scale_weight")] + ".weight" for k in scales} == linears


def test_generation_is_deterministic(tiny):
    a = tiny_official_state_dict("t2v_a14b", "high")
    b = tiny_official_state_dict("t2v_a14b", "high")
    c = tiny_official_state_dict("t2v_a14b", "low")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.self_attn.q.weight"], c["blocks.0.self_attn.q.weight"])
    # weights have the intended realistic scale
    w = a["blocks.0.ffn.0.weight"].float()
    assert 0.015 < w.std().item() < 0.025


def test_registry_regenerates_missing_and_outdated(tmp_path):
    calls = []

    def write(dest):
        calls.append(dest.name)
        dest.write_bytes(b"x" * 3)

    register("_test_fixture", write, "misc/fixture.bin")
    try:
        p = ensure_tiny_models(tmp_path, names=["_test_fixture"])["_test_fixture"]
        assert p == tmp_path / "misc/fixture.bin" and p.read_bytes() == b"xxx"
        ensure_tiny_models(tmp_path, names=["_test_fixture"])
        assert len(calls) == 1          # cached
        p.unlink()
        ensure_tiny_models(tmp_path, names=["_test_fixture"])
        assert len(calls) == 2          # regenerated when missing
        register("_test_fixture", write, "misc/fixture.bin", version="2")
        ensure_tiny_models(tmp_path, names=["_test_fixture"])
        assert len(calls) == 3          # regenerated when the generator's version changes
        assert not [q for q in (tmp_path / "misc").iterdir() if q.name.startswith(".tmp")]
    finally:
        from wanmeter import tiny as tiny_mod
        tiny_mod._REGISTRY.pop("_test_fixture", None)
    with pytest.raises(KeyError):
        ensure_tiny_models(tmp_path, names=["no_such_fixture"])


def test_registered_names_and_file_names():
    reg = registered()
    assert reg["dit_t2v_high"].relpath == "diffusion_models/tiny_wan2.2_t2v_high_noise.safetensors"
    assert reg["dit_i2v_low_fp8_scaled"].relpath == "diffusion_models/tiny_wan2.2_i2v_low_noise_fp8_scaled.safetensors"
    assert reg["dit_ti2v"].relpath == "diffusion_models/tiny_wan2.2_ti2v_5B.safetensors"


def test_files_are_byte_identical_across_runs(tmp_path):
    a = ensure_tiny_models(tmp_path / "a", names=["dit_ti2v_fp8_scaled"])["dit_ti2v_fp8_scaled"]
    b = ensure_tiny_models(tmp_path / "b", names=["dit_ti2v_fp8_scaled"])["dit_ti2v_fp8_scaled"]
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
