"""Wan VAEs: parity with the official vae2_1.py / vae2_2.py modules on the tiny files (the proof of
the Wan2.2 key map), agreement with diffusers' Wan2.1 converter, tiling, normalization, errors."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from wanmeter import variants
from wanmeter.errors import WanMeterError
from wanmeter.loader.vae_keys import diffusers_to_official_names, official_to_diffusers_names
from wanmeter.loader.vae_loader import check_vae_matches, inspect_vae, load_vae
from wanmeter.tiny import ensure_tiny_models
from wanmeter.tiny.spec import TINY_VAE
from wanmeter.tiny.vae import _config


@pytest.fixture(scope="module")
def files():
    return ensure_tiny_models(names=["vae_wan21", "vae_wan22", "umt5_fp16"])


@pytest.fixture(scope="module")
def vaes(files):
    return {fam: load_vae(files[f"vae_{fam}"]) for fam in ("wan21", "wan22")}


def _video(frames=5, h=32, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, h, w, 3, generator=g)


# ---------------------------------------------------------------- official reference modules

def _official(ref_root, name):
    pytest.importorskip("einops", reason="the official VAE code needs einops (pip install einops)")
    modname = f"_wanref_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, ref_root / "wan" / "modules" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[modname] = mod
    return mod


def _official_vae(ref_root, family, path):
    spec = TINY_VAE[family]
    if family == "wan21":
        ref = _official(ref_root, "vae2_1").WanVAE_(dim=spec["base_dim"], z_dim=spec["z_dim"], dim_mult=[1, 2, 4, 4],
                                                    num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True])
    else:
        ref = _official(ref_root, "vae2_2").WanVAE_(dim=spec["base_dim"], dec_dim=_config("wan22")["decoder_base_dim"],
                                                    z_dim=spec["z_dim"], dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                                    attn_scales=[], temperal_downsample=[False, True, True])
    sd = {k: v.float() for k, v in load_file(str(path)).items()}
    ref.load_state_dict(sd, strict=True)  # the tiny file has exactly the official module names and shapes
    return ref.eval()


@pytest.mark.parametrize("family", ["wan21", "wan22"])
def test_encode_decode_match_official_vae(wan22_ref, files, vaes, family):
    ref = _official_vae(wan22_ref, family, files[f"vae_{family}"])
    vae = vaes[family]
    img = _video()
    ours = vae.encode(img)
    x = img.permute(3, 0, 1, 2)[None] * 2 - 1
    with torch.no_grad():
        mu = ref.encode(x, [0, 1])                 # scale [0, 1] = the raw (un-normalized) mean
    assert ours.shape == mu.shape == (1, vae.z_dim, 2, 32 // vae.stride_s, 64 // vae.stride_s)
    torch.testing.assert_close(ours, mu, atol=1e-4, rtol=1e-4)
    assert ours.std() > 0.05

    z = torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
    dec = vae.decode(z)
    with torch.no_grad():
        out = ref.decode(z, [0, 1]).clamp(-1, 1)   # the official wrappers clamp to [-1, 1]
    expect = ((out + 1) / 2).permute(0, 2, 3, 4, 1).reshape(-1, 32, 64, 3)
    assert dec.shape == (5, 32, 64, 3)
    torch.testing.assert_close(dec, expect, atol=1e-4, rtol=1e-4)
    assert 0.05 < dec.std() and 0.05 < dec.mean() < 0.95


def test_wan22_latent_constants_equal_official(wan22_ref):
    src = (wan22_ref / "wan" / "modules" / "vae2_2.py").read_text()
    body = src[src.index("class Wan2_2_VAE"):]
    blocks = re.findall(r"torch\.tensor\(\s*\[([^\]]*)\]", body)
    mean, std = ([float(x) for x in b.replace("\n", " ").split(",") if x.strip()] for b in blocks[:2])
    facts = variants.vae_family("wan22")
    assert facts["latents_mean"] == mean and facts["latents_std"] == std and len(mean) == 48


# ---------------------------------------------------------------- diffusers' own pieces

def test_our_wan21_table_equals_diffusers_converter(files):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = load_file(str(files["vae_wan21"]))
    theirs = convert_wan_vae_to_diffusers(dict(sd))
    table = official_to_diffusers_names("wan21")
    ours = {table[k]: v for k, v in sd.items()}
    assert set(ours) == set(theirs)
    assert all(ours[k] is theirs[k] for k in ours)


@pytest.mark.parametrize("family", ["wan21", "wan22"])
def test_tables_cover_autoencoderklwan_exactly(family):
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        m = AutoencoderKLWan(**_config(family))
    names = diffusers_to_official_names(family)
    assert all(k in names for k in m.state_dict())
    assert len(set(official_to_diffusers_names(family).values())) == len(official_to_diffusers_names(family))


def test_diffusers_layout_file_loads_too(tmp_path, vaes):
    """A diffusers-layout export (e.g. from a Diffusers repo folder) loads to the same model."""
    vae = vaes["wan22"]
    p = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in vae.model.state_dict().items()}, str(p))
    other = load_vae(p)
    assert other.family == "wan22"
    z = torch.randn(1, 48, 1, 2, 2)
    torch.testing.assert_close(other.decode(z), vae.decode(z))


# ---------------------------------------------------------------- config, tiling, normalization

def test_config_from_shapes(files):
    i21, i22 = inspect_vae(files["vae_wan21"]), inspect_vae(files["vae_wan22"])
    assert (i21.family, i21.config["z_dim"], i21.config["patch_size"], i21.config["is_residual"]) == ("wan21", 16, None, False)
    assert (i22.family, i22.config["z_dim"], i22.config["patch_size"], i22.config["is_residual"]) == ("wan22", 48, 2, True)
    assert i22.config["decoder_base_dim"] == _config("wan22")["decoder_base_dim"] != i22.config["base_dim"]
    assert i22.config["scale_factor_spatial"] == 16 and i21.config["scale_factor_spatial"] == 8
    assert i22.config["latents_mean"] == variants.vae_family("wan22")["latents_mean"]


@pytest.mark.parametrize("family", ["wan21", "wan22"])
def test_tiled_decode(vaes, family):
    vae = vaes[family]
    s = vae.stride_s
    z = torch.randn(1, vae.z_dim, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    full = vae.decode(z)
    # a tile as large as the frame: no tiling happens, identical output
    torch.testing.assert_close(vae.decode(z, tiled=True, tile_size=6 * s, tile_stride=4 * s), full)
    tiled = vae.decode(z, tiled=True, tile_size=4 * s, tile_stride=3 * s)
    assert tiled.shape == full.shape == (1, 6 * s, 6 * s, 3)
    assert not torch.equal(tiled, full)  # tiling really happened
    assert not vae.model.use_tiling  # switched off again
    # same as calling diffusers' tiled decode directly with those settings
    m = vae.model
    m.enable_tiling(tile_sample_min_height=4 * s, tile_sample_min_width=4 * s,
                    tile_sample_stride_height=3 * s, tile_sample_stride_width=3 * s)
    try:
        with torch.no_grad():
            direct = m.decode(z).sample
    finally:
        m.use_tiling = False
    torch.testing.assert_close(tiled, ((direct + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).reshape(full.shape))
    # (No closeness check against the untiled decode: these random weights have a frame-wide receptive
    # field through the mid-block attention, so tiles legitimately differ; trained VAEs are local.)


@pytest.mark.parametrize("family", ["wan21", "wan22"])
def test_normalize_uses_family_constants(vaes, family):
    vae = vaes[family]
    facts = variants.vae_family(family)
    raw = torch.randn(1, vae.z_dim, 2, 3, 3)
    norm = vae.normalize(raw)
    c = 5
    torch.testing.assert_close(norm[0, c], (raw[0, c] - facts["latents_mean"][c]) / facts["latents_std"][c])
    torch.testing.assert_close(vae.denormalize(norm), raw, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- errors

def test_variant_mismatch_error():
    check_vae_matches("wan22", "ti2v_5b")
    check_vae_matches("wan21", "t2v_a14b")
    check_vae_matches("wan21", "s2v_14b")
    with pytest.raises(WanMeterError, match=r"TI2V-5B needs wan2\.2_vae\.safetensors"):
        check_vae_matches("wan21", "ti2v_5b")
    with pytest.raises(WanMeterError, match=r"I2V-A14B needs wan_2\.1_vae\.safetensors"):
        check_vae_matches("wan22", "i2v_a14b")


def test_non_vae_files(tmp_path, files):
    with pytest.raises(WanMeterError, match=r"text encoder.*wan_2\.1_vae\.safetensors.*wan2\.2_vae\.safetensors"):
        load_vae(files["umt5_fp16"])
    p = tmp_path / "dit.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(2, 2), "patch_embedding.weight": torch.zeros(2, 2)}, str(p))
    with pytest.raises(WanMeterError, match=r"diffusion model.*models/vae"):
        load_vae(p)
    p = tmp_path / "sdxl_vae.safetensors"
    save_file({"decoder.up.0.block.0.conv1.weight": torch.zeros(2, 2, 3, 3)}, str(p))
    with pytest.raises(WanMeterError, match="another model family"):
        load_vae(p)


def test_damaged_vae(tmp_path, files):
    sd = load_file(str(files["vae_wan22"]))
    sd.pop("decoder.upsamples.1.upsamples.2.residual.6.weight")
    p = tmp_path / "broken.safetensors"
    save_file(sd, str(p))
    with pytest.raises(WanMeterError, match=r"wan2\.2_vae\.safetensors again"):
        load_vae(p)


def test_bad_inputs(vaes):
    v21, v22 = vaes["wan21"], vaes["wan22"]
    with pytest.raises(WanMeterError, match="multiple of 16"):
        v22.encode(torch.rand(1, 40, 64, 3))
    with pytest.raises(WanMeterError, match="1 \\+ 4k frames"):
        v21.encode(torch.rand(3, 32, 32, 3))
    with pytest.raises(WanMeterError, match="wan2\\.2_vae"):
        v21.decode(torch.randn(1, 48, 1, 2, 2))
    assert v21.encode(torch.rand(1, 32, 32, 3)).shape == (1, 16, 1, 4, 4)  # a single image


@pytest.mark.parametrize("family,module,kwargs,expect", [
    ("wan21", "vae2_1", dict(dim=96, z_dim=16), dict(base_dim=96, decoder_base_dim=96, z_dim=16)),
    ("wan22", "vae2_2", dict(dim=160, dec_dim=256, z_dim=48), dict(base_dim=160, decoder_base_dim=256, z_dim=48)),
])
def test_real_size_official_layout(wan22_ref, tmp_path, family, module, kwargs, expect):
    """The real-size official VAE (built on the meta device): header -> the real config, and every
    official key converts onto the real-size AutoencoderKLWan, shapes included."""
    from diffusers import AutoencoderKLWan

    from wanmeter.loader.vae_loader import to_diffusers_state_dict
    from wanmeter.tiny.fake_headers import write_header_only

    with torch.device("meta"):
        ref = _official(wan22_ref, module).WanVAE_(dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                                   temperal_downsample=[False, True, True], **kwargs)
    official = ref.state_dict()
    p = write_header_only(tmp_path / "vae.safetensors", {k: ("BF16", tuple(v.shape)) for k, v in official.items()})
    info = inspect_vae(p)
    assert info.family == family and {k: info.config[k] for k in expect} == expect
    converted = to_diffusers_state_dict(dict(official), family)
    with torch.device("meta"):
        target = AutoencoderKLWan(**info.config).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in target.items()}


# ---------------------------------------------------------------- CPU dtype and interruption (issue 14)

def test_cpu_vae_runs_in_fp32_whatever_was_asked(files):
    """On the CPU a bf16 VAE is several times slower than fp32 (no fast bf16 3-D convolutions)."""
    from wanmeter.loader.vae_loader import vae_dtype

    v = load_vae(files["vae_wan21"], dtype=torch.bfloat16, device="cpu")
    assert v.dtype == torch.float32
    assert {p.dtype for p in v.model.parameters()} == {torch.float32}
    assert vae_dtype(torch.bfloat16, "cuda:0") == torch.bfloat16  # a GPU keeps the workflow's choice
    assert vae_dtype(torch.float16, torch.device("cpu")) == torch.float32


class _Stop(Exception):
    pass


@pytest.mark.parametrize("tiled", [False, True])
def test_decode_stops_inside_the_decode_and_frees_it(vaes, tiled):
    """check() runs before each decoder chunk (latent frame, per tile when tiled); what it raises stops
    the decode there, leaves no cached features, and nothing of the partial decode stays alive."""
    import gc
    import weakref

    vae = vaes["wan21"]
    s = vae.stride_s
    z = torch.randn(1, vae.z_dim, 6, 6, 6, generator=torch.Generator().manual_seed(5))
    kw = {"tiled": True, "tile_size": 4 * s, "tile_stride": 3 * s} if tiled else {}
    calls, outputs = [], []
    hook = vae.model.decoder.register_forward_hook(lambda m, a, out: outputs.append(weakref.ref(out)))
    try:
        vae.decode(z, check=lambda: calls.append(1), **kw)
        chunks = len(calls)
        assert chunks == (6 * 4 if tiled else 6), chunks  # once per latent frame (and tile)
        calls.clear()
        outputs.clear()

        def stop_at_third():
            calls.append(1)
            if len(calls) == 3:
                raise _Stop("interrupted")

        with pytest.raises(_Stop) as info:
            vae.decode(z, check=stop_at_third, **kw)
    finally:
        hook.remove()
    assert len(calls) == 3  # stopped at once: no further chunk ran
    assert len(outputs) == 2
    assert all(f is None for f in vae.model._feat_map)  # the decoder's frame cache is dropped
    del info
    gc.collect()
    assert all(r() is None for r in outputs), "the interrupted decode's chunks are still referenced"
    # and the VAE decodes normally afterwards
    assert vae.decode(z[:, :, :2], **kw).shape[0] == 5

