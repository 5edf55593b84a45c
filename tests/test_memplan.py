"""The automatic memory plan: fastest fitting plan per the estimator, clear errors, applied arguments."""
from __future__ import annotations

import itertools
import re

import pytest

from wanmeter.errors import WanMeterError
from wanmeter.estimator import Plan, Workload, estimate, get_gpu
from wanmeter.memplan import apply_plan, plan_for, quantize_int8_weight_only, torchao_available, weight_candidates

GIB = 1024 ** 3
A14B = Workload("t2v_a14b", width=832, height=480, frames=81)
TI2V = Workload("ti2v_5b", width=1280, height=704, frames=121)


def _brute_force(w: Workload, vram: float, ram: float, gpu, weights):
    """Every plan of the search space, incl. every N of blocks (no binary search): the fastest that fits."""
    layers = 40 if w.variant != "ti2v_5b" else 30
    best = None
    for wd, te, tiled in itertools.product(weights, ("gpu", "cpu"), (False, True)):
        base = Plan(weight_dtype=wd, text_encoder_device=te, vae_tiled=tiled, budget_gib=vram, ram_gib=ram)
        plans = [base, base.with_(offload="model")] + [base.with_(offload="blocks", blocks_to_stream=n)
                                                      for n in range(1, layers + 1)]
        for p in plans:
            e = estimate(w, p, gpu)
            if e.fits and e.ram_fits is not False and (best is None or e.per_video_s < best.per_video_s - 1e-3):
                best = e
            if p.offload != "none":  # pinned expert swaps, taken only when the RAM estimate is known to fit
                e = estimate(w, p.with_(pinned_swap=True), gpu)
                if e.fits and e.ram_fits is True and (best is None or e.per_video_s < best.per_video_s - 1e-3):
                    best = e
    return best


@pytest.mark.parametrize("w,vram,ram", [(A14B, 8, 64), (A14B, 12, 64), (A14B, 24, 64), (TI2V, 8, 32), (TI2V, 16, 32),
                                        (A14B, 80, 128)])
def test_choice_is_the_fastest_fitting_plan(w, vram, ram):
    gpu = get_gpu("h100_sxm")
    ap = plan_for(w, vram * GIB, ram * GIB, gpu)
    e = ap.estimate
    assert e.fits and e.vram_peak_gib <= vram and e.ram_gib <= ram
    ref = _brute_force(w, vram, ram, gpu, weight_candidates("bf16"))
    assert ap.estimate.per_video_s == pytest.approx(ref.per_video_s, abs=1e-3)
    if ap.plan.offload == "blocks" and ap.plan.blocks_to_stream > 1:   # the smallest N that fits
        fewer = estimate(w, ap.plan.with_(blocks_to_stream=ap.plan.blocks_to_stream - 1), gpu)
        assert not (fewer.fits and fewer.ram_fits is not False)
    assert ap.considered < 120          # binary search, not a scan


def test_less_memory_never_gives_a_faster_plan_and_description():
    gpu = get_gpu("rtx4090")
    times = [plan_for(A14B, v * GIB, 96 * GIB, gpu).estimate.per_video_s for v in (8, 12, 16, 24)]
    assert times == sorted(times, reverse=True)
    ap = plan_for(A14B, 8 * GIB, 96 * GIB, gpu)
    assert re.fullmatch(r"(bf16|fp8) weights, stream \d+ of 40 blocks(, text encoder on CPU)?(, tiled decode)?: "
                        r"\d+\.\d GiB peak, \d+ GiB RAM, \d+ s", ap.description), ap.description
    assert str(ap) == ap.description


def test_gguf_source_keeps_its_quantization():
    ap = plan_for(A14B, 12 * GIB, 64 * GIB, "rtx4090", source="Q4_K_M")
    assert ap.plan.weight_dtype == "Q4_K_M" and "Q4_K_M GGUF weights" in ap.description
    assert all(e.plan.weight_dtype == "Q4_K_M" for e in ap.alternatives)
    with pytest.raises(WanMeterError, match="source='int4'.*Use one of"):
        plan_for(A14B, 12 * GIB, 64 * GIB, "rtx4090", source="int4")


def test_nothing_fits_names_the_smallest_plan_and_the_fixes():
    with pytest.raises(WanMeterError) as ei:
        plan_for(A14B, 24 * GIB, 24 * GIB, "rtx4090")
    msg = str(ei.value)
    assert re.search(r"needs \d+\.\d GiB VRAM and \d+\.\d GiB RAM; you have 24\.0 GiB VRAM and 24\.0 GiB RAM free", msg)
    assert "use a Q4_K_M GGUF" in msg
    with pytest.raises(WanMeterError, match=r"you have 4\.0 GiB VRAM.*render at \d+x\d+"):
        plan_for(A14B, 4 * GIB, 64 * GIB, "rtx4090")
    with pytest.raises(WanMeterError, match="free VRAM must be a positive"):
        plan_for(A14B, 0, None, "rtx4090")


def test_apply_plan_gives_loader_and_runtime_arguments():
    ap = plan_for(A14B, 12 * GIB, 64 * GIB, "h100_sxm")
    a = apply_plan(ap.plan)
    assert a.loader_kwargs() == {"weight_dtype": ap.plan.weight_dtype}
    opts = a.runtime_options(device="cpu")
    opts.validate()
    assert (opts.offload, opts.blocks_to_stream) == ("blocks", ap.plan.blocks_to_stream) and opts.attention == "auto"
    assert a.text_encoder_device == ap.plan.text_encoder_device and a.vae_tiled == ap.plan.vae_tiled
    g = apply_plan(Plan(weight_dtype="Q6_K", offload="model", attention="cudnn"))
    assert g.loader_kwargs() == {} and g.gguf_type == "Q6_K" and g.attention == "sdpa_cudnn"
    g.runtime_options(device="cpu").validate()


@pytest.mark.skipif(torchao_available(), reason="torchao is installed: the guard does not apply")
def test_int8_needs_torchao_and_says_how_to_install():
    with pytest.raises(WanMeterError, match="pip install torchao"):
        quantize_int8_weight_only(object())


def test_source_of_files_and_free_memory():
    from wanmeter.loader import inspect_dit
    from wanmeter.memplan import free_memory, source_of
    from wanmeter.tiny import ensure_tiny_models
    from wanmeter.tiny.gguf_dit import gguf_fixture_name

    names = ["dit_ti2v", "dit_ti2v_fp8_scaled", "dit_ti2v_q4_0", gguf_fixture_name("ti2v_5b", "Q5_K_M"),
             gguf_fixture_name("ti2v_5b", "Q8_0")]
    p = ensure_tiny_models(names=names)
    assert [source_of(inspect_dit(p[n])) for n in names] == ["bf16", "fp8_e4m3fn", "Q4_K_M", "Q5_K_M", "Q8_0"]
    vram, ram, key = free_memory()
    assert ram is None or ram > 0
    import torch

    assert (vram is None) == (not torch.cuda.is_available())
