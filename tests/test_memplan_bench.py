"""bench/budgets.py runs end to end on CPU with tiny models (--dry-run), incl. the simulated-GGUF path."""
from __future__ import annotations

import importlib.util
import json

from wanmeter.estimator import Workload
from wanmeter.memplan import plan_for

GIB = 1024 ** 3


def _bench():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "budgets.py"
    spec = importlib.util.spec_from_file_location("bench_budgets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_budgets_dry_run(tmp_path):
    b = _bench()
    assert b.main(["--dry-run", "--variants", "a14b", "--budgets", "24", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "budgets_dryrun.json").read_text())
    base, r24 = rep["rows"]
    assert base["budget_gb"] is None and base["status"] == r24["status"] == "ok"
    # the bench ran exactly the plan plan_for gives for that budget
    want = plan_for(Workload("t2v_a14b", width=832, height=480, frames=81), 24 * GIB, 120 * GIB, "h100_sxm")
    assert r24["plan"] == want.description
    assert r24["experts_per_step"] == [0, 1] and r24["swaps"] == 1      # step 1 high-noise, step 2 low-noise
    assert len(r24["step_seconds"]) == 2 and r24["s_per_step"] > 0 and "slowdown_per_step" in r24
    assert [t["metric"] for t in rep["targets"]] == ["slowdown_per_step"]


def test_budgets_dry_run_gguf(tmp_path):
    b = _bench()
    assert b.main(["--dry-run", "--variants", "ti2v", "--budgets", "8", "--source", "Q4_K_M", "--no-baseline",
                   "--out", str(tmp_path)]) == 0
    (r,) = json.loads((tmp_path / "budgets_dryrun.json").read_text())["rows"]
    assert r["status"] == "ok" and r["plan"].startswith("Q4_K_M GGUF weights") and r["under_budget"] is True


def test_to_gguf_keeps_the_model_close():
    import torch

    from wanmeter.sampler.synthetic import random_dit

    b = _bench()
    ref = random_dit("ti2v_5b", "tiny", std=0.02)
    q = b.to_gguf(random_dit("ti2v_5b", "tiny", std=0.02), "Q8_0", tile_rows=None)
    assert q.blocks[0].ffn.net[2].weight.dtype == torch.uint8
    x = dict(hidden_states=torch.randn(1, 48, 2, 8, 8), timestep=torch.tensor([500.0]),
             encoder_hidden_states=torch.randn(1, 16, 64), return_dict=False)
    with torch.no_grad():
        a, c = ref(**x)[0], q(**x)[0]
    assert ((a - c).norm() / a.norm()).item() < 0.03
