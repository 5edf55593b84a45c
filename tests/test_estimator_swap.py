"""Expert swaps, pinning and first-call compile in the estimator (timing.model_move_seconds,
expert_transfer_seconds, first_call_seconds) and the planner's pinned_swap choice."""
from __future__ import annotations

import math

import pytest

from wanmeter.estimator import Plan, Workload, estimate, get_gpu
from wanmeter.estimator.calibration import load_calibration
from wanmeter.estimator.sizes import GIB, compute_sizes
from wanmeter.estimator.timing import expert_transfer_seconds, first_call_seconds, model_move_seconds
from wanmeter.memplan import apply_plan, plan_for

W = Workload("t2v_a14b", width=1280, height=720, frames=81)
CAL = load_calibration()


def test_move_rates_come_from_the_calibration():
    g = get_gpu("h200")
    b = 28.64e9
    assert model_move_seconds(b, "in", False, g, CAL) == pytest.approx(b / (CAL.v("swap.pageable_h2d_gbps") * 1e9))
    assert model_move_seconds(b, "out", False, g, CAL) == pytest.approx(b / (CAL.v("swap.pageable_d2h_gbps") * 1e9))
    assert model_move_seconds(b, "out", True, g, CAL) == 0.0   # the pinned master is still valid
    pinned_in = model_move_seconds(b, "in", True, g, CAL)
    assert pinned_in == pytest.approx(b / (g.host_link_gbps * 1e9 * CAL.v("swap.pinned_fraction_of_link")))
    # the measured H200 swap of a bf16 A14B expert: 23.75 s pageable, 0.59 s pinned (bench/results/2026-12-01_h200)
    swap = model_move_seconds(b, "in", False, g, CAL) + model_move_seconds(b, "out", False, g, CAL)
    assert swap == pytest.approx(23.75, rel=0.02) and pinned_in == pytest.approx(0.594, rel=0.02)


def test_pinned_swap_moves_faster_and_costs_pinned_ram():
    g = get_gpu("rtx4090")
    page = estimate(W, Plan(offload="model"), g)
    pin = estimate(W, Plan(offload="model", pinned_swap=True), g)
    assert pin.transfers_s < page.transfers_s / 5
    s = compute_sizes(W, Plan(offload="model", pinned_swap=True), CAL)
    t, _ = expert_transfer_seconds(s, Plan(offload="model", pinned_swap=True), g, CAL)
    assert t == pytest.approx(2 * s.expert_bytes / (g.host_link_gbps * 1e9 * CAL.v("swap.pinned_fraction_of_link")))
    key = next(k for k in pin.ram_breakdown if "pinned masters" in k)
    assert pin.ram_breakdown[key] >= 2 * math.ceil(s.expert_bytes / GIB)
    # pinning is paid once, at the first video, not per video
    assert pin.first_video_s - pin.per_video_s > page.first_video_s - page.per_video_s
    assert estimate(W, Plan(pinned_swap=True), g).transfers_s == estimate(W, Plan(), g).transfers_s


def test_compile_is_a_first_call_cost():
    g = get_gpu("h200")
    plain, comp = estimate(W, Plan(), g), estimate(W, Plan(compile=True), g)
    fast = estimate(W, Plan(compile=True, weight_dtype="fp8_e4m3fn", fp8_compute=True, attention="8bit"), g)
    c = CAL.v("compile.first_call_s")
    assert comp.load_cold_s - plain.load_cold_s == pytest.approx(c)
    assert fast.load_cold_s - estimate(W, Plan(weight_dtype="fp8_e4m3fn"), g).load_cold_s == pytest.approx(
        c + CAL.v("compile.fast_paths_extra_s"))
    s = compute_sizes(W, Plan(), CAL)
    assert first_call_seconds(s, Plan(), CAL) == (0.0, [])


def test_planner_pins_only_when_the_ram_estimate_is_known_to_fit():
    g = get_gpu("rtx4090")
    roomy = plan_for(W, 24 * GIB, 256 * GIB, g)
    assert roomy.plan.offload != "none" and roomy.plan.pinned_swap
    assert apply_plan(roomy.plan).runtime_options(device="cpu").pinned_swap
    unknown = plan_for(W, 24 * GIB, None, g)
    assert not unknown.plan.pinned_swap and not apply_plan(unknown.plan).pinned_swap


def test_saved_whole_video_run_is_reproduced_by_todays_estimator():
    """bench/results/2026-12-01_h200/whole_video.json (H200, measured): the fast path's composed 40-step video
    vs estimate(), per video and first video (pinning + compilation), within 15%; keeps the README table true."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("wanmeter_bench_whole_video", root / "bench" / "whole_video.py")
    wv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wv)
    res = json.loads((root / "bench/results/2026-12-01_h200/whole_video.json").read_text(encoding="utf-8"))
    row = next(r for r in res["rows"] if r["config"] == "ours_fast")
    c = wv.compose(row, res["full_steps"]["high"], res["full_steps"]["low"], res["text_encode_s"])
    est = wv.estimator_rows(wv.STEPS_FULL)["ours_fast"]
    assert est["per_video_s"] == pytest.approx(c["per_video_40_s"], rel=0.15)
    assert est["first_video_s"] == pytest.approx(c["first_video_40_s"], rel=0.15)
