"""Runtime placement on CPU: every offload mode runs the same computation, hooks land where
they should, attention names resolve or fail with a fix, fp8 storage computes through casting."""
from __future__ import annotations

import pytest
import torch

from wanmeter.errors import WanMeterError
from wanmeter.runtime import Placement, RuntimeOptions, resolve_attention
from wanmeter.sampler import SampleRequest, SampleStats, WanModelBundle, sample
from wanmeter.sampler.synthetic import random_dit
from wanmeter.tiny.spec import TINY_DIT

REQ = dict(width=32, height=32, frames=5, steps=3, cfg=(4.0, 3.0), shift=12.0, seed=3)


def _embeds():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 16, TINY_DIT["text_dim"], generator=g), torch.randn(1, 16, TINY_DIT["text_dim"], generator=g)


def _experts():
    return random_dit("t2v_a14b", seed=1), random_dit("t2v_a14b", seed=2)


@pytest.fixture(scope="module")
def reference():
    pos, neg = _embeds()
    return sample(WanModelBundle("t2v_a14b", _experts()), pos, neg, SampleRequest(**REQ))


def _has_group_hook(module) -> bool:
    reg = getattr(module, "_diffusers_hook", None)
    return reg is not None and reg.get_hook("group_offloading") is not None


@pytest.mark.parametrize("offload, n", [("model", 0), ("blocks", 1), ("blocks", TINY_DIT["num_layers"])])
def test_offload_modes_match_no_offload(reference, offload, n):
    pos, neg = _embeds()
    experts = _experts()
    b = WanModelBundle("t2v_a14b", experts, runtime=RuntimeOptions(device="cpu", offload=offload, blocks_to_stream=n))
    stats = SampleStats()
    out = sample(b, pos, neg, SampleRequest(**REQ), stats=stats)
    assert torch.allclose(out, reference, atol=1e-5, rtol=0)
    assert stats.expert_per_step == [0, 0, 1] and stats.swaps == 1
    high = experts[0]
    if offload == "blocks" and n < len(high.blocks):
        # only the last n blocks carry streaming hooks; the block before them triggers the prefetch
        assert [_has_group_hook(blk) for blk in high.blocks] == [False] * (len(high.blocks) - n) + [True] * n
    elif offload == "blocks":
        assert all(_has_group_hook(blk) for blk in high.blocks) and _has_group_hook(high)
    else:
        assert not any(_has_group_hook(blk) for blk in high.blocks)
    info = b.placement.describe()
    total = sum(t.numel() * t.element_size() for t in list(high.parameters()) + list(high.buffers()))
    e0 = info["experts"][0]
    assert e0["resident_bytes"] + e0["streamed_bytes"] == total
    assert e0["streamed_blocks"] == n
    assert (e0["streamed_bytes"] > 0) == (offload == "blocks")
    # a second run swaps back to the high-noise expert first, and still matches
    again = sample(b, pos, neg, SampleRequest(**REQ), stats=(s2 := SampleStats()))
    assert torch.allclose(again, reference, atol=1e-5, rtol=0) and s2.swaps == 2


def test_interrupted_blocks_run_recovers_and_set_runtime_switches(reference):
    pos, neg = _embeds()
    b = WanModelBundle("t2v_a14b", _experts(), runtime=RuntimeOptions(device="cpu", offload="blocks", blocks_to_stream=1))

    def stop(step, total, latent):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample(b, pos, neg, SampleRequest(**REQ), stop)
    assert torch.allclose(sample(b, pos, neg, SampleRequest(**REQ)), reference, atol=1e-5, rtol=0)
    b.set_runtime(RuntimeOptions(device="cpu", offload="none"))
    assert not any(_has_group_hook(blk) for e in b.experts for blk in e.blocks)
    assert torch.allclose(sample(b, pos, neg, SampleRequest(**REQ)), reference, atol=1e-5, rtol=0)


def test_model_offload_keeps_inactive_expert_on_cpu_and_single_expert_needs_no_swap():
    pos, neg = _embeds()
    m = random_dit("ti2v_5b", seed=5)
    p = Placement([m], RuntimeOptions(device="cpu", offload="model"))
    assert p.activate(0) is m and p.swaps == 0
    b = WanModelBundle("ti2v_5b", [m], runtime=RuntimeOptions(device="cpu", offload="model"),
                       latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    st = SampleStats()
    sample(b, pos, neg, SampleRequest(64, 64, 5, steps=2, cfg=5.0), stats=st)
    assert st.swaps == 0 and st.memory_kind == "process_rss" and st.peak_memory_bytes > 0
    assert len(st.step_seconds) == 2 and st.seconds_per_step > 0


def test_fp8_storage_computes_in_the_hooks_dtype():
    pos, neg = _embeds()
    ref_model = random_dit("ti2v_5b", seed=6)
    fp8 = random_dit("ti2v_5b", seed=6)
    fp8.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    p = Placement([fp8], RuntimeOptions(device="cpu"))
    assert p.compute_dtype == torch.float32
    kw = dict(latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    req = SampleRequest(32, 32, 5, steps=2, cfg=5.0)
    a = sample(WanModelBundle("ti2v_5b", [ref_model], **kw), pos, neg, req)
    b = sample(WanModelBundle("ti2v_5b", [fp8], **kw), pos, neg, req)
    diff = (a - b).abs().max().item()
    assert torch.isfinite(b).all() and 0 < diff < 0.5 * a.abs().max().item()
    with pytest.raises(WanMeterError, match="load it again"):
        Placement([fp8], RuntimeOptions(device="cpu", compute_dtype="bf16"))


def test_attention_names():
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu) == "native"
    assert resolve_attention("sdpa", cpu) == "native"
    with pytest.raises(WanMeterError, match="needs an NVIDIA GPU"):
        resolve_attention("sdpa_cudnn", cpu)
    with pytest.raises(WanMeterError, match="not a known kernel"):
        resolve_attention("xformers2", cpu)
    with pytest.raises(WanMeterError, match="needs an NVIDIA GPU"):
        resolve_attention("8bit", cpu)
    cuda = torch.device("cuda")  # resolution only: no kernel runs
    assert resolve_attention("sdpa_cudnn", cuda) == "_native_cudnn"
    assert resolve_attention("sdpa_flash", cuda) == "_native_flash"
    import importlib.util

    if importlib.util.find_spec("sageattention") is None:
        with pytest.raises(WanMeterError, match="sageattention"):
            resolve_attention("sage", cuda)
    if importlib.util.find_spec("flash_attn") is None and importlib.util.find_spec("flash_attn_interface") is None:
        with pytest.raises(WanMeterError, match="flash-attn"):
            resolve_attention("flash", cuda)


@pytest.mark.parametrize("opts, fix", [
    (dict(offload="disk"), "Unknown offload"),
    (dict(offload="blocks"), "blocks_to_stream >= 1"),
    (dict(offload="model", blocks_to_stream=3), "only applies with offload='blocks'"),
    (dict(compute_dtype="int8"), "Unknown compute_dtype"),
    (dict(device="cuda"), "no CUDA GPU") if not torch.cuda.is_available() else (dict(offload="x"), "Unknown offload"),
])
def test_runtime_options_validation(opts, fix):
    with pytest.raises(WanMeterError, match=fix):
        Placement([random_dit("ti2v_5b")], RuntimeOptions(**opts))


def test_too_many_streamed_blocks():
    with pytest.raises(WanMeterError, match="has 2 blocks"):
        Placement([random_dit("ti2v_5b")], RuntimeOptions(device="cpu", offload="blocks", blocks_to_stream=5))


def test_step_cache_runs_with_cfg_and_resets_between_videos():
    """The sampler gives diffusers' cache hooks separate cond/uncond contexts and resets them per video."""
    pos, neg = _embeds()
    kw = dict(latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    req = SampleRequest(64, 64, 5, steps=4, cfg=5.0)
    plain = sample(WanModelBundle("ti2v_5b", [random_dit("ti2v_5b", seed=8)], **kw), pos, neg, req)
    opts = RuntimeOptions(device="cpu", step_cache={"kind": "first_block", "threshold": 0.9})
    b = WanModelBundle("ti2v_5b", [random_dit("ti2v_5b", seed=8)], runtime=opts, **kw)
    first = sample(b, pos, neg, req)
    assert b.experts[0].is_cache_enabled and b.placement.fast_paths[0]["cache"] is not None
    assert not torch.equal(first, plain)  # steps were skipped
    assert torch.equal(sample(b, pos, neg, req), first)  # no state carried over


def test_fast_paths_refused_with_block_streaming():
    with pytest.raises(WanMeterError, match="offload='blocks'"):
        RuntimeOptions(offload="blocks", blocks_to_stream=1, compile=True).validate()
