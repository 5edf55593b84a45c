"""The bundled workflows in a real ComfyUI frontend: drag-and-drop, the template browser, the
live estimate on the WanMeter Estimator node, and our nodes in the node search."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
IDS = [p.stem for p in WORKFLOWS]


def _has_estimator(wf: dict) -> bool:
    return any(n["type"] == "WanMeterEstimator" for n in wf["nodes"])


def _check_estimate(ui, wf: dict) -> str | None:
    """The estimator drew its view: the size, VRAM against capacity, time and cost per video, and
    each sampler the estimate is for carries the badge on its title."""
    if not _has_estimator(wf):
        return None
    text = ui.wait_estimate()
    assert "Cannot estimate" not in text, text
    sampler = next(n for n in wf["nodes"] if n["type"] in ("WanMeterSampler", "WanMeterS2VSampler"))
    w, h = sampler["widgets_values"][:2]
    assert f"{w}x{h}" in text, text
    assert re.search(r"[\d.]+ GiB of [\d.]+ GiB · (fits|fits, tight|DOES NOT FIT)", text), text
    assert _seconds(text) > 0 and re.search(r"^\$[\d.,]+$", text, re.M), text
    assert "Where the time goes" in text or "time_parts" not in text  # drawn when the server sends time_parts
    samplers = [n for n in wf["nodes"] if n["type"] in ("WanMeterSampler", "WanMeterS2VSampler") and n.get("mode", 0) == 0]
    if len(samplers) == 1:  # today's server does not name the sampler: one sampler, one badge
        ui.page.wait_for_function("(id) => !!app.graph.getNodeById(id).wanmeterBadge", arg=samplers[0]["id"],
                                  timeout=10_000)
        assert re.search(r" · (fits|does not fit)$", ui.badge(samplers[0]["id"])), ui.badge(samplers[0]["id"])
    return text


def _estimate_clip(ui, sampler_type: str) -> dict:
    s, e = ui.node_box(sampler_type), ui.node_box("WanMeterEstimator")
    x0, y0 = min(s["x"], e["x"]) - 10, min(s["y"], e["y"]) - 40
    x1 = max(s["x"] + s["width"], e["x"] + e["width"]) + 10
    y1 = max(s["y"] + s["height"], e["y"] + e["height"]) + 10
    return {"x": max(0, x0), "y": max(0, y0), "width": x1 - max(0, x0), "height": y1 - max(0, y0)}


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_workflow_loads_by_drag_and_drop(ui, path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    ui.drop_file(path)
    ui.wait_for_graph(wf)
    assert ui.graph_problems(wf) == []
    _check_estimate(ui, wf)
    ui.show_graph(scale=wf["extra"]["ds"]["scale"])
    ui.screenshot(f"{path.stem}.png")
    if _has_estimator(wf):
        # The estimator is inside the workflow's saved view (not cut off at the right edge).
        ui.page.evaluate("""(ds) => { app.canvas.ds.scale = ds.scale; app.canvas.ds.offset[0] = ds.offset[0];
          app.canvas.ds.offset[1] = ds.offset[1]; app.canvas.setDirty(true, true); }""", wf["extra"]["ds"])
        ui.page.wait_for_timeout(200)
        e = ui.node_box("WanMeterEstimator")
        assert e["x"] >= 0 and e["x"] + e["width"] <= 1366, f"estimator outside a 1366 px wide saved view: {e}"
        # The estimate up close at 100% and at 50% zoom: the text is drawn at both.
        sampler_type = next(n["type"] for n in wf["nodes"] if n["type"] in ("WanMeterSampler", "WanMeterS2VSampler"))
        for scale, tag in ((1.0, "100"), (0.5, "50")):
            # 100%: the estimator; 50%: the sampler (with its badge) and the estimator below it.
            ui.show_graph(scale=scale, left_of=sampler_type, top=60,
                          top_of="WanMeterEstimator" if scale == 1.0 else sampler_type)
            text = ui.wait_estimate()
            assert _seconds(text) > 0, text
            clip = _estimate_clip(ui, "WanMeterEstimator" if scale == 1.0 else sampler_type)
            shot = ui.screenshot(f"{path.stem}_estimate_{tag}.png", clip=clip)
            if path.stem == "wan22_t2v_a14b":
                ui.save_docs_image(shot, f"estimate_t2v_{tag}.png")
    ui.console.check()


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_workflow_opens_from_template_browser(ui, path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    ui.open_template(path.stem)
    ui.wait_for_graph(wf)
    assert ui.graph_problems(wf) == []
    _check_estimate(ui, wf)
    ui.console.check()


def test_estimate_follows_steps_and_size(ui):
    path = next(p for p in WORKFLOWS if p.stem == "wan22_t2v_a14b")
    wf = json.loads(path.read_text(encoding="utf-8"))
    ui.drop_file(path)
    ui.wait_for_graph(wf)
    before = ui.wait_estimate(contains="40 steps")
    assert "1280x720" in before
    sampler_id = ui.node_id("WanMeterSampler")
    badge_before = ui.badge(sampler_id)
    assert badge_before.startswith(before.splitlines()[1]), (badge_before, before)  # the badge's time is the headline

    ui.set_widget("WanMeterSampler", "steps", 20)
    after_steps = ui.wait_estimate(contains="20 steps")
    assert _seconds(after_steps) < _seconds(before), (before, after_steps)
    ui.page.wait_for_function("([id, old]) => app.graph.getNodeById(id).wanmeterBadge !== old", arg=[sampler_id, badge_before])

    ui.set_widget("WanMeterSampler", "width", 832)
    ui.set_widget("WanMeterSampler", "height", 480)
    after_size = ui.wait_estimate(contains="832x480")
    assert "20 steps" in after_size
    assert _seconds(after_size) < _seconds(after_steps), (after_steps, after_size)
    assert _peak(after_size) <= _peak(after_steps)

    # The estimator's own widgets: another GPU, then a VRAM budget the plan cannot meet.
    ui.set_widget("WanMeterEstimator", "gpu", "RTX 4090")
    on_4090 = ui.wait_estimate(contains="on RTX 4090")
    assert "832x480" in on_4090 and "20 steps" in on_4090
    ui.set_widget("WanMeterEstimator", "budget_gb", 4.0)
    tight = ui.wait_estimate(contains="DOES NOT FIT")
    assert "Does not fit: needs" in tight, tight
    warning = ui.page.evaluate("() => app.graph._nodes.find(n => n.type === 'WanMeterModelLoader').wanmeterWarning")
    assert warning and "needs" in warning, warning
    ui.show_graph(top=90)  # room for the loader's warning above its title
    ui.screenshot("estimate_does_not_fit.png")

    # Details expand on a click on "details" (and fold again).
    assert "note:" not in tight
    ui.click_estimate_details()
    expanded = ui.wait_estimate(contains="GPU: RTX 4090")
    assert "s per step" in expanded, expanded
    ui.click_estimate_details()
    ui.wait_estimate(absent="GPU: RTX 4090")

    # The display widget stays out of the saved workflow and of the API prompt.
    saved = ui.page.evaluate("() => app.graph.serialize().nodes.find(n => n.type === 'WanMeterEstimator').widgets_values")
    assert len(saved) == 4, saved
    assert "wanmeter" not in json.dumps(saved).lower()
    prompt = ui.page.evaluate("() => app.graphToPrompt().then(p => p.output)")
    est = next(v for v in prompt.values() if v["class_type"] == "WanMeterEstimator")
    assert "estimate" not in est["inputs"], est
    ui.console.check()


def _seconds(text: str) -> float:
    """The headline time per video: the first drawn string that is only a duration."""
    m = re.search(r"^((?:\d+ h )?(?:\d+ min )?[\d.]+ (?:h|min|s))$", text, re.M)
    assert m, text
    total = 0.0
    for value, unit in re.findall(r"([\d.]+) (h|min|s)\b", m.group(1)):
        total += float(value) * {"h": 3600, "min": 60, "s": 1}[unit]
    return total


def _peak(text: str) -> float:
    return float(re.search(r"([\d.]+) GiB of [\d.]+ GiB", text).group(1))


# Our nodes the test adds from the search, each found by its full display name (from /object_info).
NODE_SEARCH = ("WanMeterModelLoader", "WanMeterSampler", "WanMeterEstimator", "WanMeterTextEncode", "WanMeterVAEDecode")


def test_nodes_from_node_search(ui):
    ui.page.evaluate("() => app.graph.clear()")
    canvas = ui.page.locator("#graph-canvas").bounding_box()
    info = ui.comfy.get("/object_info")
    names = {t: info[t]["display_name"] for t in NODE_SEARCH}
    for i, type_ in enumerate(NODE_SEARCH):
        query = names[type_]
        # Empty spots far enough apart that a new node never lies under the next double-click.
        x = canvas["x"] + 150 + 450 * (i % 4)
        y = canvas["y"] + 100 + 500 * (i // 4)
        assert ui.page.evaluate("([x, y]) => !app.graph.getNodeOnPos(...app.canvas.convertEventToCanvasOffset("
                                "{clientX: x, clientY: y}))", [x, y]), "the double-click spot is not empty"
        # The search box: "Search Nodes..." (frontend 1.27.10), "Add a node..." (1.58.1).
        box = ui.page.get_by_placeholder(re.compile(r"^(Search Nodes|Add a node)\.\.\.$"))
        for attempt in range(3):
            ui.page.mouse.move(x, y)  # LiteGraph pairs the two clicks by pointer position: hover first
            ui.page.wait_for_timeout(300)
            ui.page.mouse.dblclick(x, y)
            try:  # 1.58.1 sometimes takes the first click after its dialog closed as focus only
                box.wait_for(state="visible", timeout=3_000 if attempt < 2 else 10_000)
                break
            except Exception:
                if attempt == 2:
                    ui.screenshot(f"node_search_fail_{i}.png")
                    raise
        box.fill(query)
        option = ui.page.get_by_role("option").filter(has_text=query).first
        try:
            option.wait_for(state="visible", timeout=10_000)
        except Exception:
            ui.screenshot(f"node_search_fail_{type_}.png")
            raise AssertionError(f"the node search finds nothing for the display name {query!r}") from None
        assert "WanMeter" in option.inner_text()
        option.click()
        ui.page.wait_for_function("(t) => app.graph._nodes.some(n => n.type === t)", arg=type_, timeout=10_000)
        # Out of the way of the next double-click (frontend 1.58.1 drops the node where the click was),
        # and nothing selected (its selection toolbox would sit over the next spot).
        ui.page.evaluate("""([t, i]) => { const n = app.graph._nodes.find(n => n.type === t);
          n.pos = [4000 + 600 * i, 4000]; app.canvas.deselectAll && app.canvas.deselectAll();
          app.canvas.setDirty(true, true); }""", [type_, i])
    types = ui.page.evaluate("() => app.graph._nodes.map(n => n.type)")
    assert sorted(types) == sorted(NODE_SEARCH), types
    # The estimator picks up the loader added next to it (its default model, the sampler's defaults).
    text = ui.wait_estimate()
    assert "Cannot estimate" not in text and "1280x720" in text, text
    ui.console.check()
