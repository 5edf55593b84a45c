"""fleet plan: jobs and tiers parsing, routing, GPUs and monthly bills (no Ray, no torch).

The cost-guide test writes its arithmetic out so it can be checked by hand against
../shared/reference/cost_guide.md (hybrid: an RTX 6000 Ada resident at 3/h + an H100 on demand at
12/h, 5 h a week; the guide's "216 a month" for the resident card is 72 billed hours, not a month).
"""
from __future__ import annotations

import json
import math

import pytest

from wanmeter.cli import main
from wanmeter.errors import WanMeterError
from wanmeter.estimator import Plan, Workload, estimate, get_gpu
from wanmeter.estimator.estimate import HOURS_PER_MONTH
from wanmeter.fleet import format_plan, load_tiers, parse_jobs, parse_mix, plan_fleet
from wanmeter.memplan import plan_for

GIB = 1 << 30


# -- the estimator's monthly figures (issue 15's pricing fixes) -----------------------------------------
def test_reserved_is_billed_every_hour_of_the_month():
    """300 videos using ~81 GPU-hours: reserved bills 1 GPU x 730 h, so it is not cheaper than on-demand.
    Before the fix reserved was hours used x 0.65 x on-demand (always 35% below on-demand)."""
    gpu = get_gpu("h100_sxm")
    e = estimate(Workload("i2v_a14b", width=832, height=480), Plan(weight_dtype="fp8_e4m3fn"), gpu)
    m = e.monthly(300)
    hours = 300 * e.seconds_per_video / 3600
    assert m["gpu_hours"] == pytest.approx(hours)
    assert m["gpus"] == math.ceil(hours / 730)
    assert m["on_demand"] == pytest.approx(hours * gpu.on_demand_per_hour)
    assert m["reserved"] == pytest.approx(m["gpus"] * 730 * gpu.reserved_per_hour)
    assert hours < 0.65 * 730        # busy less than reserved/on-demand of the month...
    assert m["reserved"] > m["on_demand"]  # ...so on-demand is cheaper


def test_per_video_figures_are_per_video_at_any_batch():
    """A batch-4 run's time is shared by 4 videos (before the fix cost_per_video was per batch)."""
    gpu = get_gpu("h100_sxm")
    e1 = estimate(Workload("ti2v_5b", batch=1), Plan(), gpu, prices=2.0)
    e4 = estimate(Workload("ti2v_5b", batch=4), Plan(), gpu, prices=2.0)
    assert e4.cost_per_video == pytest.approx(e4.per_video_s / 4 / 3600 * 2.0)
    assert e4.seconds_per_video == pytest.approx(e4.per_video_s / 4)
    assert e4.monthly(100)["gpu_hours"] == pytest.approx(100 * e4.per_video_s / 4 / 3600)
    assert e4.cost_per_video < e1.cost_per_video * 1.5   # not ~4x: per video, not per batch


# -- the cost guide's hybrid example -----------------------------------------------------------------
GUIDE_TIERS = {"tiers": [
    {"name": "resident", "gpu": "rtx6000ada", "reserved": 3.0, "billing": "reserved", "gpus": 1},
    {"name": "burst", "gpu": "h100_sxm", "on_demand": 12.0, "billing": "on_demand", "hours_per_week": 5},
]}
GUIDE_MIX = "2000 TI2V-5B drafts + 60 I2V-A14B 720p finals on burst"


def test_cost_guide_hybrid_by_hand():
    tiers = load_tiers(GUIDE_TIERS)
    fp = plan_fleet(parse_mix(GUIDE_MIX), tiers)
    assert not fp.errors
    res, burst = (next(t for t in fp.tiers if t.tier.name == n) for n in ("resident", "burst"))

    # Resident card, reserved: billed every hour of the month, busy or not.
    #   1 GPU x 730 h x $3.00 = $2,190.00   (the guide's $216 = 72 h x $3.00: 72 billed hours, not a month)
    assert HOURS_PER_MONTH == 730
    assert res.gpus == 1 and res.billing == "reserved"
    assert res.cost == pytest.approx(1 * 730 * 3.00) == pytest.approx(2190.00)
    assert 216 / 3.00 == 72 and res.cost / 3.00 == pytest.approx(730)
    assert "1 GPU x 730 h x $3.00 = $2,190.00" in res.arithmetic and "billed every hour of the month" in res.arithmetic

    # H100 on demand, switched on 5 h a week: 5 h x 730/168 weeks = 21.726 h a month per GPU
    #   1 GPU x 21.726 h x $12.00 = $260.71   (the guide's $240 = 20 h: a 4-week month)
    on_h = 5 * 730 / 168
    assert burst.gpus == 1 and burst.billing == "on_demand"
    assert burst.cost == pytest.approx(1 * on_h * 12.00) == pytest.approx(260.714, abs=1e-3)
    assert fp.cost == pytest.approx(2190.00 + 260.714, abs=1e-3)     # vs the guide's 456

    # The pack's own figures: the work each tier does, from the estimator's seconds per video on that GPU
    # under the fastest plan that fits it (plan_for), and one model load per GPU.
    ti2v = plan_for(Workload("ti2v_5b"), get_gpu("rtx6000ada").usable_gib * GIB, None, "rtx6000ada").estimate
    i2v = plan_for(Workload("i2v_a14b", width=1280, height=720), get_gpu("h100_sxm").usable_gib * GIB, None,
                   "h100_sxm").estimate
    assert res.work_gpu_hours == pytest.approx(2000 * ti2v.seconds_per_video / 3600)
    assert res.load_gpu_hours == pytest.approx(ti2v.load_cold_s / 3600)
    assert burst.work_gpu_hours == pytest.approx(60 * i2v.seconds_per_video / 3600)
    assert burst.work_gpu_hours + burst.load_gpu_hours <= on_h            # 60 finals fit 5 h a week
    assert res.utilisation == pytest.approx(res.work_gpu_hours / 730)
    assert burst.utilisation == pytest.approx(burst.work_gpu_hours / on_h)

    # Single-tier alternative "all on the H100, on demand, stopped when idle": the same jobs' hours x $12.
    ti2v_h100 = plan_for(Workload("ti2v_5b"), get_gpu("h100_sxm").usable_gib * GIB, None, "h100_sxm").estimate
    alt = next(a for a in fp.alternatives if a.tier == "burst")
    hours = (2000 * ti2v_h100.seconds_per_video + ti2v_h100.load_cold_s + 60 * i2v.seconds_per_video
             + i2v.load_cold_s) / 3600
    assert alt.cost == pytest.approx(hours * 12.00)
    best, saving = fp.savings()
    assert saving == pytest.approx(1 - fp.cost / best.cost)
    text = format_plan(fp)
    assert "$2,190.00" in text and "$260.71" in text and "Single-tier alternatives" in text


def test_reserved_card_needs_enough_gpus_for_the_hours():
    """Without a fixed count, a reserved tier gets ceil(busy hours / 730) GPUs, each billed 730 h."""
    tiers = load_tiers([{"name": "r", "gpu": "h100_sxm", "reserved": 2.0, "billing": "reserved"}])
    fp = plan_fleet(parse_mix("3000 I2V-A14B 720p"), tiers)
    t = fp.tiers[0]
    assert t.gpus == math.ceil(t.work_gpu_hours / 730) >= 2
    assert t.cost == pytest.approx(t.gpus * 730 * 2.0)


# -- routing ---------------------------------------------------------------------------------------
TWO = [{"name": "small", "gpu": "rtx4090", "on_demand": 0.6, "ram_gib": 24},
       {"name": "big", "gpu": "h100_sxm", "on_demand": 4.76}]


def _jobs(*lines: dict) -> str:
    return "\n".join(json.dumps(d) for d in lines)


def test_routes_to_cheapest_tier_that_fits_and_meets_the_deadline():
    tiers = load_tiers(TWO)
    jl = parse_jobs(_jobs(
        {"id": "draft", "settings": {"variant": "ti2v_5b"}, "count": 4},                  # fits both: cheaper on small
        {"id": "a14b", "settings": {"variant": "t2v_a14b", "width": 832, "height": 480}},  # needs 27 GiB RAM: big
        {"id": "rush", "settings": {"variant": "ti2v_5b"}, "deadline": "5m"}))             # small is too slow
    fp = plan_fleet(jl, tiers)
    assert not fp.errors, fp.errors
    got = {jid: [t for t, _ in parts] for jid, parts in fp.tier_of().items()}
    assert got == {"draft": ["small"], "a14b": ["big"], "rush": ["big"]}
    small_draft = fp.estimate_for("draft", "small")
    big_draft = plan_for(jl.jobs[0].workload, get_gpu("h100_sxm").usable_gib * GIB, None, "h100_sxm").estimate
    assert small_draft.seconds_per_video * 0.6 < big_draft.seconds_per_video * 4.76      # why small is chosen
    assert small_draft.per_video_s + small_draft.load_cold_s > 300                        # why rush is not
    vt = fp.video_tiers()
    assert sorted(vt) == ["a14b-0000", "draft-0000", "draft-0001", "draft-0002", "draft-0003", "rush-0000"]


def test_limited_tier_overflows_to_the_next():
    """A fixed single card takes what fits its month; the rest of the job goes to the next cheapest tier."""
    tiers = load_tiers([{"name": "one", "gpu": "rtx4090", "on_demand": 0.6, "gpus": 1},
                        {"name": "more", "gpu": "h100_sxm", "on_demand": 4.76}])
    fp = plan_fleet(parse_mix("20000 TI2V-5B"), tiers)
    parts = dict(fp.tier_of()["ti2v_5b-704p"])
    e = fp.estimate_for("ti2v_5b-704p", "one")
    assert parts["one"] == math.floor(730 * 3600 / e.per_video_s + 1e-9)
    assert parts["one"] + parts["more"] == 20000


# -- bad input -------------------------------------------------------------------------------------
def test_bad_lines_are_reported_with_line_numbers_and_the_rest_is_planned():
    tiers = load_tiers(TWO)
    text = _jobs({"id": "ok", "settings": {"variant": "ti2v_5b"}}) + "\n{not json\n" + _jobs(
        {"id": "x", "settings": {"variant": "ti2v_5b", "frames": 10}},
        {"id": "ok", "settings": {"variant": "ti2v_5b"}},
        {"id": "pin", "settings": {"variant": "ti2v_5b"}, "tier": "gold"},
        {"id": "huge", "settings": {"variant": "t2v_a14b", "width": 1280, "height": 720, "frames": 801}},
        {"id": "now", "settings": {"variant": "t2v_a14b"}, "deadline": 30},
        {"id": "ok2", "settings": {"variant": "ti2v_5b"}, "count": 2})
    jl = parse_jobs(text)
    assert [str(e).split(":")[0] for e in jl.errors] == ["line 2", "line 3", "line 4"]
    assert "not valid JSON" in str(jl.errors[0]) and "4k+1" in str(jl.errors[1]) and "already used on line 1" in str(jl.errors[2])
    fp = plan_fleet(jl, tiers)
    errs = "\n".join(fp.errors)
    assert "unknown tier 'gold'; the tiers are small, big" in errs
    assert "job 'huge' (line 6)" in errs and "fits no tier" in errs and "The smallest GPU it fits is H20 (96 GB" in errs
    assert "job 'now' (line 7): deadline 30 s is met by no tier" in errs
    assert sorted(fp.tier_of()) == ["ok", "ok2"]          # the rest is planned
    assert sum(n for parts in fp.tier_of().values() for _, n in parts) == 3


def test_smallest_gpu_named_for_a_job_that_fits_no_tier():
    tiers = load_tiers([{"name": "tiny", "gpu": "rtx3090", "vram_gib": 8, "ram_gib": 16}])
    fp = plan_fleet(parse_jobs(_jobs({"id": "a", "settings": {"variant": "t2v_a14b"}})), tiers,
                    single_tier_alternatives=False)
    assert len(fp.errors) == 1 and "`a10g`" in fp.errors[0]
    # independently: the A10G (24 GB) fits it, the 8 GiB budget does not
    plan_for(Workload("t2v_a14b"), get_gpu("a10g").usable_gib * GIB, None, "a10g")
    with pytest.raises(WanMeterError):
        plan_for(Workload("t2v_a14b"), 8 * GIB, 16 * GIB, "rtx3090")


@pytest.mark.parametrize("tiers, match", [
    ([{"name": "a", "gpu": "nosuchgpu"}], "Unknown GPU 'nosuchgpu'"),
    ([{"name": "a", "gpu": "l40", "billing": "on_demand"}], "tier 'a' has no on-demand price"),
    ([{"name": "a", "gpu": "h100_sxm", "colour": "red"}], "unknown key"),
    ([{"name": "a", "gpu": "h100_sxm"}, {"name": "a", "gpu": "rtx4090"}], "used twice"),
    ([{"name": "a", "gpu": "h100_sxm", "reserved": 2, "billing": "reserved", "hours_per_week": 5}], "billed all month"),
])
def test_bad_tiers(tiers, match):
    with pytest.raises(WanMeterError, match=match):
        load_tiers(tiers)


def test_mix_parsing():
    jl = parse_mix("300 I2V-A14B 720p + 2,000 TI2V-5B drafts + 50 t2v-a14b 480p 20 steps on big")
    a, b, c = jl.jobs
    assert (a.count, a.workload.variant, a.workload.width, a.workload.height) == (300, "i2v_a14b", 1280, 720)
    assert (b.count, b.workload.variant, b.label.endswith("(drafts)")) == (2000, "ti2v_5b", True)
    assert (c.workload.width, c.workload.height, c.workload.steps, c.tier) == (832, 480, 20, "big")
    with pytest.raises(WanMeterError, match="no 480p size"):
        parse_mix("10 TI2V-5B 480p")
    with pytest.raises(WanMeterError, match="COUNT VARIANT"):
        parse_mix("many videos")


def test_cli_plan_json_and_exit_code(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(_jobs({"id": "ok", "settings": {"variant": "ti2v_5b"}}) + "\nbroken\n", encoding="utf-8")
    tiers = tmp_path / "tiers.json"
    tiers.write_text(json.dumps(TWO), encoding="utf-8")
    rc = main(["fleet", "plan", str(jobs), "--tiers", str(tiers), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["errors"] == ["line 2: not valid JSON (Expecting value at column 1)"]
    assert out["tiers"][0]["jobs"][0]["id"] == "ok" and out["hours_per_month"] == 730
    rc = main(["fleet", "plan", "300 I2V-A14B 720p + 2000 TI2V-5B", "--tiers", "rtx6000ada,h100_sxm"])
    assert rc == 0 and "Monthly total" in capsys.readouterr().out
