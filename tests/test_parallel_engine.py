"""run_parallel on 2 CPU processes (gloo) equals wanmeter.sampler.sample in one process, for the
CFG pair and for diffusers' Ulysses; the callback runs in the caller and can interrupt."""
import functools

import pytest
import torch

from wanmeter.errors import WanMeterError
from wanmeter.parallel import run_parallel
from wanmeter.sampler import sample
from wanmeter.sampler.bundle import WanModelBundle
from wanmeter.sampler.request import SampleRequest
from wanmeter.runtime.options import RuntimeOptions

REQ = SampleRequest(64, 64, 5, steps=3, cfg=(4.0, 3.0), shift=5.0, seed=3, boundary=0.5)


def tiny_t2v_bundle(device):
    """Module-level (picklable) factory: both tiny A14B experts, float32, on `device`."""
    from wanmeter.tiny.dit import tiny_reference_model

    torch.set_num_threads(1)
    experts = [tiny_reference_model("t2v_a14b", e) for e in ("high", "low")]
    return WanModelBundle("t2v_a14b", experts, runtime=RuntimeOptions(device=str(device.type), attention="sdpa"))


def _embeds():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 512, 64, generator=g), torch.randn(1, 512, 64, generator=g)


@pytest.fixture(scope="module")
def reference():
    pos, neg = _embeds()
    return sample(tiny_t2v_bundle(torch.device("cpu")), pos, neg, REQ)


@pytest.mark.parametrize("scheme", ["cfg", "ulysses"])
def test_two_processes_match_one(reference, scheme):
    pos, neg = _embeds()
    steps = []
    out = run_parallel(tiny_t2v_bundle, pos, neg, REQ, 2, scheme, callback=lambda s, n, x: steps.append(s),
                       backend="gloo")
    assert steps == [1, 2, 3]
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_callback_interrupts_all_workers():
    pos, neg = _embeds()

    def cb(step, total, latent):
        if step == 1:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        run_parallel(tiny_t2v_bundle, pos, neg, REQ, 2, "cfg", callback=cb, backend="gloo")


def test_bad_requests_fail_before_any_worker_starts():
    pos, neg = _embeds()
    with pytest.raises(WanMeterError, match="multiple of 16"):
        run_parallel(tiny_t2v_bundle, pos, neg, SampleRequest(60, 64, 5, steps=2), 2, "ulysses", backend="gloo",
                     variant="t2v_a14b")
    with pytest.raises(WanMeterError, match="even GPU count"):
        run_parallel(tiny_t2v_bundle, pos, neg, REQ, 3, backend="gloo")
