"""Multi-GPU paths on CPU: spawned gloo workers, diffusers' Ulysses CP and CFG-parallel, against
the single-process output of the same diffusers model (bench/multigpu.py --dry-run)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wanmeter.errors import WanMeterError
from wanmeter.parallel.layout import Layout, choose_layout

ROOT = Path(__file__).resolve().parents[1]


def test_bench_dry_run_matches_single_process(tmp_path):
    out = tmp_path / "mg.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "multigpu.py"), "--dry-run", "--schemes",
                        "single,cfg2,ulysses2", "--out", str(out)], capture_output=True, text=True, env=env,
                       timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {r["scheme"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"single", "cfg2", "ulysses2"}
    for name in ("cfg2", "ulysses2"):
        r = rows[name]
        assert r["cos"] > 1 - 1e-9 and r["max_abs"] <= 1e-5 * max(1.0, r["ref_max_abs"]), r
    # the sequence really was split over the 2 ranks (not two full copies)
    assert rows["ulysses2"]["local_tokens"] * 2 == rows["ulysses2"]["tokens"]
    assert rows["cfg2"]["local_tokens"] == rows["cfg2"]["tokens"]


def test_choose_layout():
    assert choose_layout(1) == Layout()
    assert choose_layout(2) == Layout(cfg=2)
    assert choose_layout(4) == Layout(cfg=2, ulysses=2)
    assert choose_layout(8) == Layout(cfg=2, ulysses=4)
    assert choose_layout(2, guidance=False) == Layout(ulysses=2)
    assert choose_layout(4, scheme="ulysses") == Layout(ulysses=4)
    assert choose_layout(4, scheme="cfg_ulysses").world == 4


@pytest.mark.parametrize("kw, fix", [
    (dict(num_gpus=3), "even GPU count"),
    (dict(num_gpus=4, scheme="cfg"), "exactly 2 GPUs"),
    (dict(num_gpus=2, guidance=False, scheme="cfg"), "needs guidance"),
    (dict(num_gpus=6, scheme="ulysses", heads=40), "must divide"),
    (dict(num_gpus=4, scheme="ulysses", tokens=75601), "do not split evenly"),
    (dict(num_gpus=2, scheme="ring"), "Unknown multi-GPU scheme"),
    (dict(num_gpus=0), "at least 1"),
])
def test_choose_layout_errors_name_the_fix(kw, fix):
    with pytest.raises(WanMeterError, match=fix):
        choose_layout(**kw)
