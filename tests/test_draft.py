"""Draft then final (wanmeter.draft): the refinement request on the tiny models, its expert use,
the cost model, the generated workflow and the GPU bench's dry run."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wanmeter.draft import draft_final_cost, refine_expert_steps, refine_request, refine_steps, upscale_frames
from wanmeter.errors import WanMeterError
from wanmeter.estimator import Workload
from wanmeter.sampler import SampleRequest, SampleStats, WanModelBundle, sample
from wanmeter.tiny import ensure_tiny_models

ROOT = Path(__file__).resolve().parents[1]
S = 32


@pytest.fixture(scope="module")
def chain():
    from wanmeter.loader import load_dit
    from wanmeter.loader.text_encoder import load_text_encoder
    from wanmeter.loader.vae_loader import load_vae

    tiny = ensure_tiny_models(names=["dit_t2v_high", "dit_t2v_low", "umt5_fp16", "vae_wan21"])
    vae = load_vae(tiny["vae_wan21"])
    high, low = (load_dit(tiny[n], weight_dtype="fp32") for n in ("dit_t2v_high", "dit_t2v_low"))
    te = load_text_encoder(tiny["umt5_fp16"], dtype=torch.float32)
    emb = te.encode(["a red fox in the snow", "blurry"])
    return {"vae": vae, "high": high, "low": low, "pos": emb[:1], "neg": emb[1:]}


def test_draft_then_refine_low_noise_only_and_deterministic(chain):
    vae, pos, neg = chain["vae"], chain["pos"], chain["neg"]
    both = WanModelBundle.from_loaded("t2v_a14b", chain["high"], chain["low"], vae=vae)
    dstats = SampleStats()
    draft_latent = sample(both, pos, neg, SampleRequest(S, S, 5, steps=4, cfg=1.0, seed=3), stats=dstats)
    assert dstats.expert_per_step == [0, 0, 0, 1]  # the draft is a normal two-expert run
    draft = vae.decode(draft_latent)
    assert draft.shape == (5, S, S, 3)

    # refine at 2x size, denoise 0.5 of a 4-step schedule, shift 5: starts at sigma ~0.83 < boundary 0.875
    req = refine_request(draft, vae, width=2 * S, height=2 * S, denoise=0.5, steps=4, shift=5.0, seed=9)
    assert (req.steps, req.denoise, req.frames) == (2, 0.5, 5)
    assert req.init_latent.shape == (1, 16, 2, 2 * S // 8, 2 * S // 8)
    low_only = WanModelBundle.from_loaded("t2v_a14b", None, chain["low"], vae=vae)  # no high-noise expert at all
    rstats = SampleStats()
    out = sample(low_only, pos, neg, req, stats=rstats)
    assert rstats.expert_per_step == [1, 1]
    assert refine_expert_steps("t2v_a14b", 4, 0.5, shift=5.0) == (0, 2)
    frames = vae.decode(out)
    assert frames.shape == (5, 2 * S, 2 * S, 3)

    # the same refinement as a direct sample() call, with the latent built independently and both experts loaded
    big = F.interpolate(draft.permute(0, 3, 1, 2), size=(2 * S, 2 * S), mode="bicubic", align_corners=False)
    init = vae.encode(big.clamp(0, 1).permute(0, 2, 3, 1))
    torch.testing.assert_close(init, req.init_latent)
    direct = sample(both, pos, neg, SampleRequest(2 * S, 2 * S, 5, steps=2, shift=5.0, seed=9, denoise=0.5,
                                                  init_latent=init))
    assert torch.equal(out, direct)
    # a raw draft latent is decoded with the given VAE first (a recording stand-in: no second VAE run)
    class Rec:
        def decode(self, z):
            self.decoded = z
            return draft

        def encode(self, x):
            self.encoded = x
            return init

    rec = Rec()
    again = refine_request(draft_latent, rec, width=2 * S, height=2 * S, denoise=0.5, steps=4, seed=9)
    assert rec.decoded is draft_latent and again.init_latent is init
    torch.testing.assert_close(rec.encoded, big.clamp(0, 1).permute(0, 2, 3, 1))


def test_refine_expert_split_matches_the_sampler(chain):
    """At the default shift (12) a denoise of 0.5 reaches above the boundary: the predicted split and
    the sampler's record agree (both experts loaded)."""
    both = WanModelBundle.from_loaded("t2v_a14b", chain["high"], chain["low"], vae=chain["vae"])
    init = torch.zeros(1, 16, 2, S // 8, S // 8)
    for shift, split in ((12.0, (1, 1)), (5.0, (0, 2))):
        st = SampleStats()
        sample(both, chain["pos"], chain["neg"], SampleRequest(S, S, 5, steps=2, cfg=1.0, shift=shift, denoise=0.5,
                                                               init_latent=init), stats=st)
        assert refine_expert_steps("t2v_a14b", 4, 0.5, shift=shift) == split
        assert st.expert_per_step.count(0) == split[0]
    assert refine_expert_steps("t2v_a14b", 40, 0.3) == (0, 12)  # the official schedule: low-noise only
    assert refine_expert_steps("ti2v_5b", 50, 0.3) == (15,)


def test_upscale_frames_crop_and_errors():
    f = torch.rand(5, 30, 52, 3)  # 52:30 is wider than 16:9... of 64x32 it is narrower: rows are cut
    out = upscale_frames(f, 64, 32, crop="center")
    assert out.shape == (5, 32, 64, 3) and 0 <= out.min() and out.max() <= 1
    ref = F.interpolate(f[:, 2:28].permute(0, 3, 1, 2), size=(32, 64), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, ref.clamp(0, 1).permute(0, 2, 3, 1))
    assert upscale_frames(f, 64, 32, "area", crop="disabled").shape == (5, 32, 64, 3)
    with pytest.raises(WanMeterError, match="upscale method"):
        upscale_frames(f, 64, 32, "lanczos3")
    with pytest.raises(WanMeterError, match="frames, height, width"):
        upscale_frames(f[0], 64, 32)
    with pytest.raises(WanMeterError, match="0.3 is a good start"):
        refine_steps(40, 0.0)


def test_draft_final_cost_default_settings():
    c = draft_final_cost(Workload("t2v_a14b", 1280, 720, 81), gpu="h200")
    assert c.refine_expert_steps == (0, 12) and c.refine.workload.expert_steps() == (0, 12)
    assert c.draft.workload.width == 832 and c.draft.workload.steps == 40
    assert c.draft_s < c.combined_s < c.full_s and 0 < c.ratio < 1
    assert c.draft_cost < c.combined_cost < c.full_cost
    # the refinement's denoising is its share of the full run's (same size, 12 of 40 low-noise steps)
    assert c.refine.denoise_s < 0.35 * c.full.denoise_s
    more = draft_final_cost(Workload("t2v_a14b", 1280, 720, 81), refine_denoise=0.6, gpu="h200")
    assert more.combined_s > c.combined_s
    assert json.dumps(c.to_dict())


def test_draft_workflow_in_sync_and_wired():
    spec = importlib.util.spec_from_file_location("wanmeter_make_workflows_draft", ROOT / "tools" / "make_workflows.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    saved = {k: sys.modules.get(k) for k in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils", "server")}
    try:
        pack = tool.load_pack()
        built = json.loads(json.dumps(tool.build_draft(pack)))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    wf = json.loads((ROOT / "workflows" / "wan22_draft_then_final.json").read_text(encoding="utf-8"))
    assert built == wf, "workflow is stale: run python tools/make_workflows.py"
    by_id = {n["id"]: n for n in wf["nodes"]}
    samplers = [n for n in wf["nodes"] if n["type"] == "WanMeterSampler"]
    assert [s["widgets_values"][:4] for s in samplers] == [[832, 480, 81, 40], [1280, 720, 81, 12]]
    assert [s["widgets_values"][12] for s in samplers] == [1.0, 0.3]  # denoise
    scale = next(n for n in wf["nodes"] if n["type"] == "ImageScale")
    assert scale["widgets_values"] == ["bicubic", 1280, 720, "center"]
    latent_in = next(i for i in samplers[1]["inputs"] if i["name"] == "latent")
    link = next(l for l in wf["links"] if l[0] == latent_in["link"])
    assert by_id[link[1]]["type"] == "WanMeterVAEEncode"
    assert {"WanMeterEstimator", "Note", "CreateVideo", "SaveVideo"} <= {n["type"] for n in wf["nodes"]}
    from tests.test_workflows import test_group_layout

    test_group_layout("wan22_draft_then_final.json")


def test_bench_dry_run(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_draft_final", ROOT / "bench" / "draft_final.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.main(["--dry-run", "--steps", "1"]) == 0
    res = json.loads((tmp_path / "draft_final.json").read_text())
    runs = res["measured"]["runs"]
    assert set(runs) == {"draft", "refine", "full"} and runs["refine"]["experts_per_step"] == [1]
    p = res["projection"]
    assert p["refine_steps"] == 12 and p["estimated_denoise_s"]["ratio"] < 1
    assert "estimator" in capsys.readouterr().out
