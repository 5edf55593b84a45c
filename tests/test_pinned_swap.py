"""Pinned expert swap (RuntimeOptions.pinned_swap) on CPU: the same samples as without it, the
masters are reused without copying out when nothing changed, and replaced tensors are copied out
(never a stale master). On a CPU device the masters are ordinary memory and "onload" clones, so
the bookkeeping that the GPU path uses is what runs here."""
from __future__ import annotations

import pytest
import torch

import wanmeter.runtime.placement as placement_mod
from wanmeter.errors import WanMeterError
from wanmeter.runtime import Placement, RuntimeOptions
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


def _masters_in_use(p: Placement, i: int) -> bool:
    park = p._parking[i]
    return all(placement_mod._slot_get(*s[1:]).data_ptr() == park.masters[s[0]].data_ptr() for s in p._slots(i))


@pytest.mark.parametrize("offload, n, chunk", [("model", 0, None), ("blocks", 1, None), ("model", 0, 4096)])
def test_pinned_swap_matches_and_copies_out_only_once(reference, monkeypatch, offload, n, chunk):
    if chunk:  # tiny chunks: tensors spread over many chunks, and some are larger than one
        monkeypatch.setattr(placement_mod, "_CHUNK", chunk)
    pos, neg = _embeds()
    b = WanModelBundle("t2v_a14b", _experts(), runtime=RuntimeOptions(device="cpu", offload=offload, blocks_to_stream=n,
                                                                      pinned_swap=True))
    p = b.placement
    copies = [p._parking[i].copies_out for i in (0, 1)]
    assert all(c > 0 for c in copies) and all(_masters_in_use(p, i) for i in (0, 1))
    info = p.describe()["experts"][0]
    assert info["pinned_master_bytes"] >= info["resident_bytes"]
    for _ in range(2):
        st = SampleStats()
        out = sample(b, pos, neg, SampleRequest(**REQ), stats=st)
        assert torch.allclose(out, reference, atol=1e-5, rtol=0)
        assert st.expert_per_step == [0, 0, 1] and st.swaps >= 1
    # the experts went out and in three times; nothing changed, so nothing was copied out again
    assert [p._parking[i].copies_out for i in (0, 1)] == copies
    assert _masters_in_use(p, 0)          # the expert that left is back on its masters


def test_replaced_tensor_is_copied_out_not_lost():
    """A tensor replaced while the expert is on the device (what fp8 compute does) must survive a swap."""
    a, b_ = random_dit("ti2v_5b", seed=3), random_dit("ti2v_5b", seed=4)
    p = Placement([a, b_], RuntimeOptions(device="cpu", offload="model", pinned_swap=True))
    m = p.activate(0)
    w = m.blocks[0].ffn.net[2].weight
    new = torch.randn_like(w.data)
    w.data = new.clone()                      # replaced on the "device"
    m.blocks[0].register_buffer("extra", torch.arange(5.0))   # a tensor the parking has never seen
    before = p._parking[0].copies_out
    p.activate(1)
    assert p._parking[0].copies_out > before
    assert torch.equal(w.data, new) and torch.equal(m.blocks[0].extra, torch.arange(5.0))
    p.activate(0)
    assert torch.equal(w.data, new) and torch.equal(m.blocks[0].extra, torch.arange(5.0))


def test_layerwise_cast_fp8_experts_swap_without_copy_out():
    """fp8 storage: diffusers' casting hooks re-create the weights at every forward (exactly), which is not a change."""
    pos, neg = _embeds()

    def fp8_experts():
        out = []
        for e in _experts():
            e.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
            out.append(e)
        return out

    ref = sample(WanModelBundle("t2v_a14b", fp8_experts(), runtime=RuntimeOptions(device="cpu", offload="model")),
                 pos, neg, SampleRequest(**REQ))
    b = WanModelBundle("t2v_a14b", fp8_experts(), runtime=RuntimeOptions(device="cpu", offload="model", pinned_swap=True))
    copies = [b.placement._parking[i].copies_out for i in (0, 1)]
    for _ in range(2):
        assert torch.equal(sample(b, pos, neg, SampleRequest(**REQ)), ref)
    assert [b.placement._parking[i].copies_out for i in (0, 1)] == copies


def test_teardown_leaves_weights_on_the_masters_and_a_new_placement_runs(reference):
    pos, neg = _embeds()
    b = WanModelBundle("t2v_a14b", _experts(), runtime=RuntimeOptions(device="cpu", offload="model", pinned_swap=True))
    sample(b, pos, neg, SampleRequest(**REQ))
    b.set_runtime(RuntimeOptions(device="cpu", offload="none"))
    assert torch.allclose(sample(b, pos, neg, SampleRequest(**REQ)), reference, atol=1e-5, rtol=0)
    b.set_runtime(RuntimeOptions(device="cpu", offload="blocks", blocks_to_stream=1, pinned_swap=True))
    assert torch.allclose(sample(b, pos, neg, SampleRequest(**REQ)), reference, atol=1e-5, rtol=0)


def test_pinned_swap_needs_an_offload_mode():
    with pytest.raises(WanMeterError, match="pinned_swap only applies"):
        RuntimeOptions(offload="none", pinned_swap=True).validate()
