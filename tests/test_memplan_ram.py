"""System RAM: loading a DiT holds one copy of the weights (plus the memory-mapped file), never two."""
from __future__ import annotations

import sys

import pytest
import torch

from wanmeter.memplan.rss import current_rss_bytes, measure_rss, peak_rss_bytes, reset_peak_rss

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
MIB = 2 ** 20


def _write_small_dit(path) -> int:
    """A ~100 MB fp32 Wan DiT file (dim 512, 6 blocks) with official key names; returns its weight bytes."""
    from safetensors.torch import save_file

    from wanmeter.loader import build_empty_transformer
    from wanmeter.loader.dit_keys import diffusers_to_official
    from wanmeter.tiny.dit import tiny_dit_config

    cfg = dict(tiny_dit_config("t2v_a14b"), num_attention_heads=4, ffn_dim=2048, num_layers=6)
    meta = build_empty_transformer(cfg)
    shapes = {n: tuple(p.shape) for n, p in meta.named_parameters()}
    g = torch.Generator().manual_seed(0)
    sd = {o: 0.02 * torch.randn(shapes[d], generator=g) for o, d in diffusers_to_official(shapes, 6).items()}
    save_file(sd, str(path))
    return sum(t.numel() * 4 for t in sd.values())


def test_rss_helpers_see_an_allocation():
    assert reset_peak_rss()
    with measure_rss() as m:
        x = torch.ones(64 * MIB // 4)
        del x
    assert m.peak_growth_bytes > 48 * MIB
    assert peak_rss_bytes() >= current_rss_bytes() > 0


def test_dit_load_peak_rss_is_at_most_two_copies(tmp_path):
    from safetensors.torch import load_file

    from wanmeter.loader import load_dit

    path = tmp_path / "small_wan_t2v.safetensors"
    size = _write_small_dit(path)
    assert size > 90 * MIB
    load_dit(path, weight_dtype="fp32")          # warm-up: imports and allocator pools are not the loader's
    # safetensors tensors are zero-copy views of the memory-mapped file: while loading, the touched
    # file pages (1x, page cache, reclaimable) and the model being built (1x) are both resident
    bound = 2.15 * size + 24 * MIB

    with measure_rss() as m:
        loaded = load_dit(path, weight_dtype="fp32")
    held = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert held == size
    assert m.peak_growth_bytes < bound, (m.peak_growth_bytes / MIB, size / MIB)
    # once loaded, the file is unmapped and only the model remains: no second copy lingers
    assert m.end_bytes - m.start_bytes < 1.25 * size + 24 * MIB, ((m.end_bytes - m.start_bytes) / MIB, size / MIB)
    del loaded

    # the measurement can tell: materialising the state dict and then building the model from it
    # (two anonymous copies plus the mapped file) exceeds the bound
    with measure_rss() as dup:
        raw = load_file(str(path))
        sd = {k: v.clone() for k, v in raw.items()}
        copy = {k: v.clone() for k, v in sd.items()}
    del raw, sd, copy
    assert dup.peak_growth_bytes > bound, (dup.peak_growth_bytes / MIB, bound / MIB)
