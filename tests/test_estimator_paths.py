"""Fast paths and multi-GPU layouts against the GPU runs they were fitted to (2026-11-22):
bench/results/2026-11-22_h100/speed_*.json (one forward per path, current runtime),
bench/results/2026-11-22_h200/speed_*.json (compiled paths; its eager rows predate the fused-rotary
processor and are not compared) and bench/results/2026-11-22_h200x4/multigpu.json (one guided
A14B 720p step per layout)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wanmeter.errors import WanMeterError
from wanmeter.estimator import Plan, Workload, load_gpus
from wanmeter.estimator.calibration import load_calibration
from wanmeter.estimator.estimate import estimate
from wanmeter.estimator.memory import vram_phases
from wanmeter.estimator.parallel import gpu_layout
from wanmeter.estimator.reply import estimate_reply
from wanmeter.estimator.settings import validate_settings, workload_from_settings
from wanmeter.estimator.sizes import GIB, compute_sizes
from wanmeter.estimator.timing import forward_time, phase_times

RES = Path(__file__).resolve().parents[1] / "bench" / "results"
H200 = load_gpus()["h200"]
H100 = load_gpus()["h100_sxm"]
PATHS = {"ours": {}, "compile": dict(compile=True), "fp8": dict(weight_dtype="fp8_e4m3fn", fp8_compute=True),
         "fp8_compile": dict(weight_dtype="fp8_e4m3fn", fp8_compute=True, compile=True),
         "8bit": dict(attention="8bit"),
         "fp8_8bit_compile": dict(weight_dtype="fp8_e4m3fn", fp8_compute=True, compile=True, attention="8bit")}
H200_COMPARED = ("compile", "fp8_compile")  # eager rows there ran diffusers' rotary (before the fused processor)


def _speed_rows():
    out = []
    for gpu, folder, paths in (("h100", "2026-11-22_h100", tuple(PATHS)), ("h200", "2026-11-22_h200", H200_COMPARED)):
        for f in sorted((RES / folder).glob("speed_NVIDIA_*.json")):
            for r in json.loads(f.read_text(encoding="utf-8"))["results"]:
                if r.get("config") in paths and "seconds" in r:
                    out.append(pytest.param(gpu, r, id=f"{gpu} {r['case']} {r['config']}"))
    return out


@pytest.mark.parametrize("gpu,row", _speed_rows())
def test_reproduces_measured_fast_path_forwards(gpu, row):
    """Each path's measured forward within 8%; its peak within 8% (A14B: the TI2V-5B speed run uses one
    timestep per sample, so it lacks the per-token modulation the estimator counts)."""
    cal = load_calibration()
    spec = H100 if gpu == "h100" else H200
    w, h, f = (int(x) for x in row["size"].split("x"))
    wl = Workload(variant=row["variant"], width=w, height=h, frames=f)
    p = Plan(offload="model", **PATHS[row["config"]])
    s = compute_sizes(wl, p, cal)
    assert forward_time(s, wl, p, spec, cal).total == pytest.approx(row["seconds"], rel=0.08)
    if row["variant"] != "ti2v_5b":
        got = sum(vram_phases(s, wl, p, cal)["sampling"].values()) / GIB
        assert got == pytest.approx(row["peak_vram_gib"], rel=0.08)


def test_fast_paths_order_and_fp8_needs_hardware_and_weights():
    w = Workload(width=832, height=480)
    t = {k: estimate(w, Plan(**v), H200).denoise_s for k, v in PATHS.items()}
    assert t["fp8_compile"] < t["compile"] < t["ours"] and t["fp8_compile"] < t["fp8"] < t["ours"]
    a100 = load_gpus()["a100_80gb"]
    fp8_on_a100 = estimate(w, Plan(weight_dtype="fp8_e4m3fn", fp8_compute=True), a100)
    assert fp8_on_a100.denoise_s >= estimate(w, Plan(weight_dtype="fp8_e4m3fn"), a100).denoise_s * 0.999
    assert any("no fp8" in n for n in fp8_on_a100.notes)
    no_fp8_weights = estimate(w, Plan(fp8_compute=True), H200)
    assert no_fp8_weights.denoise_s == pytest.approx(t["ours"], rel=1e-6)
    # fp8 compute keeps the fp8 weights (no bf16 layer copy)
    p = Plan(weight_dtype="fp8_e4m3fn", fp8_compute=True)
    assert "cast buffer" not in vram_phases(compute_sizes(w, p, load_calibration()), w, p, load_calibration())["sampling"]


def _multigpu():
    return {r["scheme"]: r for r in json.loads((RES / "2026-11-22_h200x4" / "multigpu.json").read_text())["results"]}


SCHEME_PLAN = {"cfg2": dict(num_gpus=2), "ulysses2": dict(num_gpus=2, parallel_scheme="ulysses"),
               "cfg2xulysses2": dict(num_gpus=4), "ulysses4": dict(num_gpus=4, parallel_scheme="ulysses")}


@pytest.mark.parametrize("scheme", sorted(SCHEME_PLAN))
def test_reproduces_measured_multi_gpu_speedups(scheme):
    """One guided A14B 720p step (2 forwards) per layout: the speedup over one GPU within 3%."""
    m = _multigpu()
    cal = load_calibration()
    w = Workload(width=1280, height=720, frames=81, steps=1, high_noise_steps=1)
    one = phase_times(compute_sizes(w, Plan(), cal), w, Plan(), H200, cal).denoise
    p = Plan(**SCHEME_PLAN[scheme])
    got = phase_times(compute_sizes(w, p, cal), w, p, H200, cal).denoise
    assert one / got == pytest.approx(m[scheme]["speedup"], rel=0.03)
    assert one - w.steps * float(cal.v("overhead.per_step_overhead_s")) == pytest.approx(m["single"]["step_s"], rel=0.05)


def test_multi_gpu_memory_per_gpu():
    """CFG keeps the single-GPU peak, Ulysses splits activations, FSDP halves the weights (measured 26.7 -> 13.4 GiB)."""
    m = _multigpu()
    cal = load_calibration()
    w = Workload(width=1280, height=720, frames=81)
    samp = lambda **kw: vram_phases(compute_sizes(w, Plan(offload="model", **kw), cal), w,  # noqa: E731
                                    Plan(offload="model", **kw), cal)["sampling"]
    one, cfg2, uly2 = samp(), samp(num_gpus=2), samp(num_gpus=2, parallel_scheme="ulysses")
    fsdp = samp(num_gpus=2, parallel_scheme="ulysses", shard_weights=True)
    assert cfg2 == one
    assert uly2["activations"] == pytest.approx(one["activations"] / 2)
    assert uly2["DiT weights (resident)"] == one["DiT weights (resident)"]
    assert fsdp["DiT weights (resident)"] / GIB == pytest.approx(m["fsdp2_mem"]["weights_gib_sharded"], rel=0.03)
    drop = (sum(one.values()) - sum(uly2.values())) / GIB
    assert drop == pytest.approx(m["single"]["peak_gib"] - m["ulysses2"]["peak_gib"], rel=0.25)


@pytest.mark.parametrize("n,guided,scheme", [(2, True, "auto"), (4, True, "auto"), (8, True, "auto"), (2, False, "auto"),
                                             (4, True, "ulysses"), (6, False, "auto"), (3, True, "auto"),
                                             (2, False, "cfg"), (16, False, "auto")])
def test_layout_mirror_agrees_with_the_engine(n, guided, scheme):
    layout = pytest.importorskip("wanmeter.parallel.layout")
    w = Workload(cfg=4.0 if guided else 1.0)
    try:
        want = layout.choose_layout(n, guidance=guided, heads=40, scheme=scheme)
    except WanMeterError:
        with pytest.raises(WanMeterError):
            gpu_layout(Plan(num_gpus=n, parallel_scheme=scheme), w, 40)
        return
    got = gpu_layout(Plan(num_gpus=n, parallel_scheme=scheme), w, 40)
    assert (got.cfg, got.ulysses) == (want.cfg, want.ulysses)


def test_settings_accept_the_new_keys_and_notes_name_each_path():
    s = validate_settings({"gpu": "h200", "variant": "t2v_a14b", "width": 832, "height": 480, "weight_dtype": "fp8_e4m3fn",
                           "fp8_compute": True, "compile": True, "step_cache": "first_block", "cache_threshold": 0.05,
                           "num_gpus": 2, "loras": 1})
    w, p = workload_from_settings(s)
    assert p.fp8_compute and p.compile and p.step_cache == "first_block" and p.num_gpus == 2 and w.loras == 1
    notes = " | ".join(estimate_reply(s)["notes"])
    assert "compile: -" in notes and "fp8 compute: -" in notes and "not predicted" in notes and "cfg2" in notes
    for bad in ({"compile": "yes"}, {"step_cache": "magic"}, {"cache_threshold": -1}, {"fp8_compute": 1}):
        with pytest.raises(WanMeterError):
            validate_settings(bad)
    with pytest.raises(WanMeterError, match="step_cache"):
        Plan(cache_skip_fraction=0.3)


def test_cache_skip_fraction_scales_denoising():
    w = Workload(width=832, height=480)
    base = estimate(w, Plan(step_cache="first_block"), H200)
    half = estimate(w, Plan(step_cache="first_block", cache_skip_fraction=0.5), H200)
    assert base.denoise_s == pytest.approx(estimate(w, Plan(), H200).denoise_s)
    assert half.denoise_s == pytest.approx(base.denoise_s * 0.5, rel=0.02) and half.denoise_s >= half.flop_floor_s
