"""fleet run on a local Ray cluster with two simulated tiers (custom resources), tiny models on CPU.

One cluster for the module (2 CPUs, one worker slot per tier; the node is also labelled
wanmeter-tier=lab, a third tier placed by Ray's label selector). The tiers: "small" (an RTX 4090 box
with 24 GiB RAM: TI2V-5B fits, A14B's 27 GiB of pinned weights do not) and "big" (an H100).
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="fleet run needs Ray (pip install ray; .ci/run installs it)")

from wanmeter.cli import main  # noqa: E402
from wanmeter.errors import WanMeterError  # noqa: E402
from wanmeter.fleet import load_tiers, parse_jobs, read_jobs, run_fleet  # noqa: E402
from wanmeter.fleet.manifest import NAME as MANIFEST  # noqa: E402
from wanmeter.fleet.runner import tier_capacity  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIERS = [{"name": "small", "gpu": "rtx4090", "on_demand": 0.6, "ram_gib": 24},
         {"name": "big", "gpu": "h100_sxm", "on_demand": 4.76}]
TINY = {"width": 64, "height": 64, "frames": 5, "steps": 2}


def _line(jid: str, variant: str, **kw) -> str:
    settings = {"variant": variant, **TINY, **kw.pop("settings", {})}
    return json.dumps({"id": jid, "settings": settings, "prompt": f"video {jid}", **kw})


@pytest.fixture(scope="module")
def cluster():
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    ray.init(num_cpus=2, resources={"tier:small": 1, "tier:big": 1}, labels={"wanmeter-tier": "lab"},
             include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def _manifest(out: Path) -> list[dict]:
    p = out / MANIFEST
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def _done_counts(out: Path) -> collections.Counter:
    return collections.Counter(e["video"] for e in _manifest(out) if e["status"] == "done")


def test_twenty_jobs_run_where_the_plan_routes_them(cluster, tmp_path):
    lines = [_line(f"d{i:02d}", "ti2v_5b", seed=i) for i in range(10)] + \
            [_line(f"f{i:02d}", "t2v_a14b", seed=i) for i in range(10)]
    rep = run_fleet(parse_jobs("\n".join(lines)), load_tiers(TIERS), tmp_path, progress=False)
    assert rep.ok, rep.format()
    planned = rep.plan.video_tiers()
    assert len(planned) == 20 and set(planned.values()) == {"small", "big"}
    assert {r["video"]: r["tier"] for r in rep.results} == planned          # ran where the plan said
    assert all(planned[v] == ("small" if v.startswith("d") else "big") for v in planned)
    assert set(_done_counts(tmp_path).values()) == {1} and len(_done_counts(tmp_path)) == 20
    assert len(list(tmp_path.glob("*.mp4"))) == 20
    # one worker per tier, models loaded once: same-model jobs ran back to back
    loads = collections.Counter(r["tier"] for r in rep.results if r["load_s"] > 0)
    assert loads == {"small": 1, "big": 1} and rep.workers == {"small": 1, "big": 1}
    saved = json.loads((tmp_path / "fleet-report.json").read_text())
    assert {(j["job"], j["tier"]) for j in saved["per_job"]} == {(r["job"], r["tier"]) for r in rep.results}
    assert all(j["estimated_s_per_run"] > 0 and j["measured_s_per_run"] > 0 for j in saved["per_job"])
    assert {t["tier"] for t in saved["per_tier"]} == {"small", "big"}
    assert all(0 < t["utilisation"] <= 1 for t in saved["per_tier"])


def test_worker_killed_mid_job_its_video_completes_exactly_once(cluster, tmp_path):
    jobs = parse_jobs(_line("k", "ti2v_5b", count=4, settings={"steps": 8, "frames": 9}))
    killed: dict[str, int] = {}

    def kill_when_started(ev: dict) -> None:
        if ev["event"] == "dispatched" and ev["video"] == "k-0001" and ev["attempt"] == 1:
            def killer() -> None:
                f = Path(ev["running_file"])
                for _ in range(6000):
                    if f.exists() and f.read_text().strip():
                        break
                    time.sleep(0.01)
                killed["pid"] = int(f.read_text())
                os.kill(killed["pid"], signal.SIGKILL)          # a spot reclaim: no cleanup, no warning
            threading.Thread(target=killer, daemon=True).start()

    rep = run_fleet(jobs, load_tiers(TIERS), tmp_path, progress=False, on_event=kill_when_started)
    assert rep.ok, rep.format()
    assert rep.retries == 1 and killed
    done = _done_counts(tmp_path)
    assert done == {f"k-{i:04d}": 1 for i in range(4)}                  # each video recorded exactly once
    again = next(e for e in _manifest(tmp_path) if e["video"] == "k-0001")
    assert again["attempt"] == 2 and again["pid"] != killed["pid"]     # made by the replacement worker
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [f"k-{i:04d}.mp4" for i in range(4)]


def test_driver_killed_and_resumed_redoes_and_loses_nothing(cluster, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(_line("r", "ti2v_5b", count=8) + "\n", encoding="utf-8")
    tiers = tmp_path / "tiers.json"
    tiers.write_text(json.dumps(TIERS), encoding="utf-8")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen([sys.executable, "-m", "wanmeter", "fleet", "run", str(jobs), "--tiers", str(tiers),
                             "--out", str(out), "--no-progress"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 400
        while sum(_done_counts(out).values()) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first run made no videos"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)                               # the driver dies mid-run
        proc.wait(timeout=60)
    finally:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)    # what the dead driver's embedded cluster left behind
        except ProcessLookupError:
            pass
    first = set(_done_counts(out))
    assert 2 <= len(first) < 8
    rep = run_fleet(read_jobs(jobs), load_tiers(tiers), out, progress=False)
    assert rep.ok, rep.format()
    assert set(rep.skipped) == first                                   # nothing finished is redone
    assert not first & {r["video"] for r in rep.results if not r.get("adopted")}
    assert _done_counts(out) == {f"r-{i:04d}": 1 for i in range(8)}    # nothing lost, nothing twice
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"r-{i:04d}.mp4" for i in range(8)]


def test_bad_input_is_reported_and_the_rest_runs(cluster, tmp_path):
    text = "\n".join([
        _line("good", "ti2v_5b", count=2),
        _line("lost", "ti2v_5b", tier="gone"),
        "{broken json",
        _line("pinned", "ti2v_5b", tier="gold"),
        _line("nofit", "t2v_a14b", tier="small"),
        _line("hurry", "t2v_a14b", deadline="1s"),
        _line("badimg", "ti2v_5b", image=str(tmp_path / "missing.png")),
    ])
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(text, encoding="utf-8")
    tiers = tmp_path / "tiers.json"
    tiers.write_text(json.dumps(TIERS + [{"name": "gone", "gpu": "a100_80gb", "on_demand": 100.0}]), encoding="utf-8")
    rep = run_fleet(read_jobs(jobs), load_tiers(tiers), tmp_path / "out", progress=False)
    errs = "\n".join(rep.errors)
    assert "line 3: not valid JSON" in errs
    assert "job 'pinned' (line 4): unknown tier 'gold'" in errs
    assert "job 'nofit' (line 5)" in errs and "fits no tier (small" in errs and "The smallest GPU it fits is" in errs
    assert "job 'hurry' (line 6): deadline 1 s is met by no tier" in errs
    failed = dict(rep.failed)
    assert sorted(failed) == ["badimg-0000", "lost-0000"] and "Cannot read the image" in failed["badimg-0000"]
    assert "the cluster has no GPUs of tier 'gone'" in failed["lost-0000"]
    assert _done_counts(tmp_path / "out") == {"good-0000": 1, "good-0001": 1}
    assert not rep.ok


def test_unreachable_cluster_is_a_clear_error_and_runs_nothing(tmp_path, capsys):
    jobs = parse_jobs(_line("u", "ti2v_5b"))
    with pytest.raises(WanMeterError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:9 .*leave out --address"):
        run_fleet(jobs, load_tiers(TIERS), tmp_path, address="127.0.0.1:9", progress=False)
    assert not (tmp_path / MANIFEST).exists()
    (tmp_path / "j.jsonl").write_text(_line("u", "ti2v_5b"), encoding="utf-8")
    rc = main(["fleet", "run", str(tmp_path / "j.jsonl"), "--tiers", "rtx4090", "--address", "127.0.0.1:9",
               "--out", str(tmp_path)])
    assert rc == 2 and "cannot reach the Ray cluster" in capsys.readouterr().err


def test_tier_from_node_labels(cluster, tmp_path):
    """A tier with no 'tier:<name>' resource runs on the nodes labelled wanmeter-tier=<name>."""
    from wanmeter.tiny import ensure_tiny_models

    tiny = ensure_tiny_models(names=["dit_ti2v", "umt5_fp16", "vae_wan22"])
    models = {"dit": [str(tiny["dit_ti2v"])], "text_encoder": str(tiny["umt5_fp16"]), "vae": str(tiny["vae_wan22"])}
    tiers = load_tiers([{"name": "lab", "gpu": "rtx4090", "on_demand": 0.6}])
    # model files named in the job (the path real weights take), here the tiny ones
    rep = run_fleet(parse_jobs(_line("l", "ti2v_5b", count=2, models=models, deadline="1h")), tiers, tmp_path,
                    progress=False)
    assert rep.ok, rep.format()
    assert rep.models == "files"
    assert rep.workers == {"lab": 1} and {r["tier"] for r in rep.results} == {"lab"}
    row = rep.to_dict()["per_job"][0]
    assert row["deadline_s"] == 3600 and row["deadline_met"] is (row["finished_after_s"] <= 3600)


def test_tier_capacity_counts_resources_then_labelled_gpus():
    tiers = load_tiers([{"name": "a", "gpu": "h100_sxm"}, {"name": "b", "gpu": "h100_sxm"},
                        {"name": "c", "gpu": "h100_sxm"}])
    nodes = [{"Alive": True, "Labels": {"wanmeter-tier": "b"}, "Resources": {"GPU": 8.0}},
             {"Alive": True, "Labels": {"wanmeter-tier": "b"}, "Resources": {"CPU": 4.0}},
             {"Alive": False, "Labels": {"wanmeter-tier": "b"}, "Resources": {"GPU": 8.0}}]
    cap = tier_capacity(tiers, {"tier:a": 3.0}, nodes)
    assert cap["a"] == (3, {"resources": {"tier:a": 1}})
    assert cap["b"] == (9, {"label_selector": {"wanmeter-tier": "b"}})    # 8 GPUs + 1 GPU-less node; the dead one not
    assert cap["c"] == (0, {})
