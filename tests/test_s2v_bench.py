"""bench/s2v_forward.py --dry-run runs the whole benchmark path on the CPU at tiny size."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def test_s2v_forward_dry_run(capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "s2v_forward.py"
    spec = importlib.util.spec_from_file_location("wanmeter_bench_s2v_forward", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--dry-run", "--steps", "1"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["dry_run"] and res["forwards_per_step"] == 2 and res["out_finite"]
    assert res["video_tokens"] == 20 * 4 * 4 and res["s_per_step"] > 0
