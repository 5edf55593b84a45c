"""Bad-file corpus over every loader (issue 18): each damaged, foreign or hostile file gives one
WanMeterError with its expected message, never a raw safetensors error, IndexError,
RecursionError, a hang or a silent load.

Loaders: inspect_dit, load_dit, load_s2v, load_vae, load_text_encoder, load_wav2vec2, read_lora.
Files: truncations of a real (tiny) file at many points, header corruptions (reversed and
overlapping offsets, gaps, unknown dtype, wrong byte count, huge shape, 5000-deep nesting, not
JSON, uncovered data, bad metadata), a FIFO, a symlink loop, pickles renamed .safetensors, a GGUF
renamed, NaN weights, and files of the other model families.
"""
from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch

from wanmeter.errors import WanMeterError


def _loaders():
    from wanmeter.accel.lora import read_lora
    from wanmeter.loader import inspect_dit, load_dit
    from wanmeter.loader.text_encoder import load_text_encoder
    from wanmeter.loader.vae_loader import load_vae
    from wanmeter.s2v.audio import load_wav2vec2
    from wanmeter.s2v.loader import load_s2v

    return {"inspect_dit": inspect_dit, "load_dit": load_dit, "load_s2v": load_s2v, "load_vae": load_vae,
            "load_text_encoder": load_text_encoder, "load_wav2vec2": load_wav2vec2, "read_lora": read_lora}


LOADERS = list(_loaders())


def write_st(path: Path, header: dict | bytes, data: bytes) -> Path:
    """A safetensors file from a header (dict, or raw JSON bytes) and data bytes, nothing checked."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def _two(a: list[int], b: list[int], *, dtype_a="F32", shape_a=(2,), shape_b=(2,), data=16) -> tuple[dict, bytes]:
    return ({"a.weight": {"dtype": dtype_a, "shape": list(shape_a), "data_offsets": a},
             "b.weight": {"dtype": "F32", "shape": list(shape_b), "data_offsets": b}}, bytes(data))


# name -> (writer(dir) -> path, expected message regex); the same for every loader.
def _header_cases():
    def st(name, header, data):
        return lambda d: write_st(d / f"{name}.safetensors", header, data)

    deep = b'{"a": {"dtype": "F32", "shape": ' + b"[" * 5000 + b"]" * 5000 + b', "data_offsets": [0, 0]}}'

    def pickled_zip(d):
        p = d / "pickle_zip.safetensors"
        torch.save({"w": torch.zeros(4)}, p)
        return p

    def pickled_legacy(d):
        p = d / "pickle_legacy.safetensors"
        p.write_bytes(pickle.dumps({"state_dict": {"w": [0.0] * 8}}, protocol=2))
        return p

    def gguf(d):
        p = d / "gguf_renamed.safetensors"
        p.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + bytes(64))
        return p

    def loop(d):
        a, b = d / "loop_a.safetensors", d / "loop_b.safetensors"
        os.symlink(b, a)
        os.symlink(a, b)
        return a

    return {
        "reversed offsets": (st("reversed", *_two([8, 0], [8, 16])), r"reversed or negative offsets"),
        "overlapping offsets": (st("overlap", *_two([0, 8], [4, 12], data=12)), r"overlaps the previous tensor"),
        "gap between tensors": (st("gap", *_two([0, 8], [12, 20], data=20)), r"leaves a gap of 4 bytes"),
        "unknown dtype": (st("dtype", *_two([0, 8], [8, 16], dtype_a="F7")), r"unknown dtype 'F7'"),
        "wrong byte count": (st("bytes", *_two([0, 8], [8, 16], shape_a=(3,))), r"\(12 bytes\) but its offsets span 8"),
        "huge shape": (st("huge", *_two([0, 8], [8, 16], shape_a=(2 ** 40, 2 ** 40))), r"offsets span 8 bytes"),
        "negative dim": (st("negdim", *_two([0, 8], [8, 16], shape_a=(-2, -1))), r"impossible shape"),
        "5000-deep nesting": (st("deep", deep, b""), r"nests deeper than 3 levels"),
        "not JSON": (st("notjson", b"{this is not json}", b""), r"corrupt safetensors header"),
        "header is a list": (st("list", b"[1, 2, 3]", b""), r"corrupt safetensors header"),
        "entry is not an object": (st("entry", {"a": [1, 2]}, b""), r"corrupt entry for tensor 'a'"),
        "data past the tensors": (st("trailing", *_two([0, 8], [8, 16], data=24)), r"the tensors cover 16 bytes but the file holds 24"),
        "offsets past the end": (st("pastend", *_two([0, 8], [8, 32], shape_b=(6,))), r"is truncated: tensor 'b.weight' ends at byte 32"),
        "metadata not text": (st("meta", {"__metadata__": {"format": 3}, **_two([0, 8], [8, 16])[0]}, bytes(16)),
                              r"__metadata__ is not a map of text to text"),
        "empty file": (lambda d: (d / "empty.safetensors").write_bytes(b"") or d / "empty.safetensors", r"empty or truncated \(0 bytes\)"),
        "zip pickle renamed": (pickled_zip, r"PyTorch pickle checkpoint .* never unpickles"),
        "legacy pickle renamed": (pickled_legacy, r"PyTorch pickle checkpoint .* never unpickles"),
        "GGUF renamed": (gguf, r"GGUF|holds no tensors"),
        "symlink loop": (loop, r"does not exist|cannot be read"),
    }


HEADER_CASES = list(_header_cases())


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", HEADER_CASES)
def test_corrupt_headers(tmp_path, case, loader):
    make, expected = _header_cases()[case]
    path = make(tmp_path)
    with pytest.raises(WanMeterError, match=expected):
        _loaders()[loader](path)


@pytest.fixture(scope="module")
def tiny():
    from wanmeter.tiny import ensure_tiny_models

    return ensure_tiny_models(names=["dit_ti2v", "s2v_14b", "vae_wan21", "umt5_fp16", "wav2vec2_large"])


OWN_FILE = {"inspect_dit": "dit_ti2v", "load_dit": "dit_ti2v", "load_s2v": "s2v_14b", "load_vae": "vae_wan21",
            "load_text_encoder": "umt5_fp16", "load_wav2vec2": "wav2vec2_large", "read_lora": "umt5_fp16"}


def _truncation_points(path: Path) -> list[tuple[int, str]]:
    size = path.stat().st_size
    n = int.from_bytes(path.read_bytes()[:8], "little")
    end = 8 + n
    pts = [(0, r"empty or truncated"), (5, r"empty or truncated"), (8, r"bad header length"),
           (9, r"bad header length"), (end // 2, r"bad header length"), (end - 1, r"bad header length"),
           (end, r"is truncated: tensor|the tensors cover 0 bytes"), (end + 1, r"is truncated: tensor"),
           (end + (size - end) // 3, r"is truncated: tensor"), ((end + size) // 2, r"is truncated: tensor"),
           (size - 1, r"is truncated: tensor")]
    return pts


@pytest.mark.parametrize("loader", LOADERS)
def test_truncations(tmp_path, tiny, loader):
    src = tiny[OWN_FILE[loader]]
    data = src.read_bytes()
    for i, (cut, expected) in enumerate(_truncation_points(src)):
        p = tmp_path / f"cut{i}_{src.name}"
        p.write_bytes(data[:cut])
        with pytest.raises(WanMeterError, match=expected):
            _loaders()[loader](p)


def test_fifo_is_refused_without_opening(tmp_path):
    """A FIFO named .safetensors: every loader refuses it before open(). If one did open it, a
    writer thread unblocks it after a few seconds, so the test fails instead of hanging CI."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock():
        while not done.wait(3.0):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:  # no reader: nothing was blocked
                pass

    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    try:
        for name, load in _loaders().items():
            with pytest.raises(WanMeterError, match=r"pipe\.safetensors is a FIFO \(named pipe\), not a regular"):
                load(fifo)
    finally:
        done.set()
        t.join()


def _with_nan(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(src))
    key = sorted(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)[-1]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = float("nan")
    save_file(sd, str(dst))
    return dst


@pytest.mark.parametrize("loader", ["load_dit", "load_s2v", "load_vae", "load_text_encoder", "load_wav2vec2"])
def test_nan_weights_name_the_file(tmp_path, tiny, loader):
    bad = _with_nan(tiny[OWN_FILE[loader]], tmp_path / f"nan_{tiny[OWN_FILE[loader]].name}")
    with pytest.raises(WanMeterError, match=rf"{bad.name} holds NaN/Inf values \(tensor '.+'\)"):
        _loaders()[loader](bad)


def _sd_unet(d: Path) -> Path:
    from safetensors.torch import save_file

    p = d / "sdxl_unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3)}, str(p))
    return p


# (loader, other family's file) -> expected message
FAMILIES = {
    ("load_dit", "vae_wan21"): r"is a VAE, not a diffusion model",
    ("load_dit", "umt5_fp16"): r"is a T5/umT5 text encoder, not a diffusion model",
    ("load_dit", "wav2vec2_large"): r"is a wav2vec2 audio encoder, not a diffusion model",
    ("load_dit", "sdxl_unet"): r"is a diffusers UNet \(Stable Diffusion family\), not Wan2.2",
    ("load_s2v", "dit_ti2v"): r"is Wan2.2 ti2v_5b, not S2V-14B",
    ("load_vae", "dit_ti2v"): r"is a Wan diffusion model \(DiT\), not a Wan VAE",
    ("load_vae", "umt5_fp16"): r"is a text encoder, not a Wan VAE",
    ("load_vae", "sdxl_unet"): r"is a file of no known kind, not a Wan VAE",
    ("load_text_encoder", "vae_wan21"): r"is a VAE, which belongs in models/vae, not umt5-xxl",
    ("load_text_encoder", "wav2vec2_large"): r"is an audio encoder, not umt5-xxl",
    ("load_text_encoder", "dit_ti2v"): r"is a Wan diffusion model \(DiT\), which belongs in models/diffusion_models",
    ("load_wav2vec2", "umt5_fp16"): r"is not a wav2vec2 model. Use wav2vec2_large_english_fp16",
    ("load_wav2vec2", "vae_wan21"): r"is not a wav2vec2 model",
}


@pytest.mark.parametrize("loader,other", list(FAMILIES))
def test_other_model_families(tmp_path, tiny, loader, other):
    path = _sd_unet(tmp_path) if other == "sdxl_unet" else tiny[other]
    with pytest.raises(WanMeterError, match=FAMILIES[(loader, other)]):
        _loaders()[loader](path)


def test_wrong_shapes_under_right_names(tmp_path):
    """Right key names, shapes of the wrong rank: a fix-naming error, not IndexError."""
    from wanmeter.loader.text_encoder import inspect_text_encoder
    from wanmeter.loader.vae_loader import inspect_vae

    q0 = "encoder.block.0.layer.0.SelfAttention.q.weight"
    te = {q0: ("F32", (4, 4)), "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": ("F32", (4,)),
          "encoder.block.1.layer.0.SelfAttention.q.weight": ("F32", (4, 4)),
          "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": ("F32", (4,)),
          "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": ("F32", (4, 4)), "shared.weight": ("F32", (8, 4))}
    vae = {"conv2.weight": ("F32", (16, 16, 1, 1, 1)), "encoder.conv1.weight": ("F32", (8, 3, 3, 3, 3)),
           "decoder.conv1.weight": ("F32", ())}

    def write(name, layout):
        header, off = {}, 0
        for k, (dt, shape) in layout.items():
            n = 4 * int(torch.tensor(shape).prod()) if shape else 4
            header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        return write_st(tmp_path / name, header, bytes(off))

    with pytest.raises(WanMeterError, match=r"umt5 key names but tensor shapes umt5-xxl does not have"):
        inspect_text_encoder(write("te.safetensors", te))
    with pytest.raises(WanMeterError, match=r"Wan VAE key names but tensor shapes no Wan VAE has"):
        inspect_vae(write("vae.safetensors", vae))


def test_valid_files_still_load_and_headers_are_cached(tiny):
    """The hardening refuses nothing real, and a second read of an unchanged file is a cache hit."""
    from wanmeter.loader import safetensors_io as sio

    for name in ("dit_ti2v", "s2v_14b", "vae_wan21", "umt5_fp16", "wav2vec2_large"):
        h1 = sio.read_header(tiny[name])
        assert sio.read_header(tiny[name]) is h1
    assert _loaders()["load_vae"](tiny["vae_wan21"]).family == "wan21"
