import { test } from "node:test";
import assert from "node:assert/strict";
import {
  COLOR, FONT_PX, MeasuredStore, approxMeasure, badge, cheapestBars, detailLines, estimateFor, fitLevel, headline,
  layoutBadge, layoutEstimate, measuredLines, paint, timeBar, vramBar, wrap,
} from "../estimate_view.js";

/** A reply in the schema's field names (docs: the estimate reply), T2V-A14B on an H100. */
function reply(extra = {}) {
  return {
    variant: "t2v_a14b", label: "T2V-A14B", width: 1280, height: 720, frames: 81, steps: 40,
    runtime: "wanmeter", sampler_id: "5",
    gpu: { name: "H100 SXM", key: "h100_sxm", vram_gib: 79.6, detected: false, note: null, measured: true },
    plan: "fp8 weights, everything in VRAM, sdpa attention",
    fits: true, peak_vram_gib: 41.2, budget_gib: 78.6, free_vram_gib: null, ram_gib: 30.1, ram_fits: null,
    seconds_per_video: 978, first_video_seconds: 1040, seconds_per_step: 23.4,
    time_parts: { load: 62, text: 3, transfers: 0, denoise: 936, decode: 39 },
    cost_per_video: 1.29, cost_per_month: 129, videos_per_month: 100, price_per_hour: 4.75,
    cheapest: [
      { name: "L40S", key: "l40s", cost_per_video: 0.95, seconds_per_video: 2300, peak_vram_gib: 41, vram_gib: 44.7, changes: [] },
      { name: "H100 SXM", key: "h100_sxm", cost_per_video: 1.29, seconds_per_video: 978, peak_vram_gib: 41, vram_gib: 79.6, changes: [] },
      { name: "RTX 4090", key: "rtx_4090", cost_per_video: 1.9, seconds_per_video: 3400, peak_vram_gib: 21, vram_gib: 22.5,
        changes: ["stream 30 blocks"] },
    ],
    suggestion: "", alternative: null, warnings: [], notes: ["offload auto: everything stays in VRAM"],
    pipelines: [],
    ...extra,
  };
}

test("VRAM bar: fill is peak over capacity, green / amber / red by headroom and fit", () => {
  const v = vramBar(reply());
  assert.equal(v.level, "ok");
  assert.equal(v.color, COLOR.ok);
  assert.ok(Math.abs(v.fraction - 41.2 / 79.6) < 1e-9);
  assert.ok(Math.abs(v.budgetFraction - 78.6 / 79.6) < 1e-9);
  assert.equal(vramBar(reply({ peak_vram_gib: 75 })).level, "tight"); // > 90% of the budget
  assert.equal(vramBar(reply({ ram_fits: false })).level, "tight");
  const over = vramBar(reply({ fits: false, peak_vram_gib: 120 }));
  assert.equal(over.level, "over");
  assert.equal(over.fitText, "DOES NOT FIT");
  assert.equal(over.fraction, 1); // the bar is scaled to the larger of peak and capacity
});

test("capacity falls back to today's vram_gb (the table's GiB figure) and then to the budget", () => {
  const r = reply();
  r.gpu = { name: "H100 SXM", vram_gb: 80 };
  assert.equal(vramBar(r).capacity, 80);
  r.gpu = { name: "?" };
  assert.equal(vramBar(r).capacity, 78.6);
});

test("time bar: parts in order, fractions of their sum, load marked as first video only", () => {
  const parts = timeBar(reply());
  assert.deepEqual(parts.map((p) => p.key), ["load", "text", "denoise", "decode"]); // zero transfers left out
  const sum = 62 + 3 + 936 + 39;
  assert.ok(Math.abs(parts.find((p) => p.key === "denoise").fraction - 936 / sum) < 1e-12);
  assert.ok(Math.abs(parts.reduce((a, p) => a + p.fraction, 0) - 1) < 1e-12);
  assert.match(parts[0].label, /1st video/);
  assert.deepEqual(timeBar(reply({ time_parts: undefined })), []); // a reply without it: no bar
});

test("cheapest GPUs: at most 3, bars relative to the dearest", () => {
  const rows = cheapestBars(reply());
  assert.equal(rows.length, 3);
  assert.equal(rows[2].fraction, 1);
  assert.ok(Math.abs(rows[0].fraction - 0.95 / 1.9) < 1e-12);
  assert.match(rows[0].text, /\$0\.95/);
  assert.deepEqual(cheapestBars(reply({ cheapest: undefined })), []);
});

test("headline: time and cost per video in the reply's units; S2V per clip", () => {
  const h = headline(reply());
  assert.equal(h.time, "16 min 18 s");
  assert.equal(h.cost, "$1.29");
  assert.match(h.gpuLine, /H100 SXM at \$4\.75\/h/);
  assert.equal(headline(reply({ variant: "s2v_14b" })).timeCaption, "per clip");
  assert.equal(headline(reply({ cost_per_video: null })).cost, "–");
});

test("the view holds the headline, VRAM, where the time goes, the cheapest GPUs and the plan", () => {
  const v = layoutEstimate(reply(), 440);
  const all = v.texts.join("\n");
  for (const s of ["T2V-A14B · 1280x720 · 81 frames · 40 steps", "16 min 18 s", "$1.29", "VRAM", "fits",
    "Where the time goes", "denoise 15 min 36 s", "Cheapest GPUs that fit", "L40S", "Plan: fp8 weights"]) {
    assert.ok(all.includes(s), `missing ${JSON.stringify(s)} in\n${all}`);
  }
  assert.ok(!all.includes("note: offload auto"), "notes are details, shown on expand");
  assert.ok(layoutEstimate(reply(), 440, { expanded: true }).texts.join("\n").includes("note: offload auto"));
  assert.ok(v.hits.details, "a details toggle");
});

test("the view stays inside the node's width and its headline is readable at 50% zoom", () => {
  for (const width of [400, 440, 600]) {
    const v = layoutEstimate(reply({ plan: "x ".repeat(200), warnings: ["w ".repeat(100)] }), width, { expanded: true });
    for (const o of v.ops) {
      if (o.t === "rect") assert.ok(o.x >= 0 && o.x + o.w <= width + 0.5, JSON.stringify(o));
      if (o.t === "text") {
        const w = approxMeasure(o.text, o.font);
        const x0 = o.align === "right" ? o.x - w : o.x;
        assert.ok(x0 >= 0 && x0 + w <= width + 0.5, `${JSON.stringify(o)} (width ${w})`);
        assert.ok(o.y <= v.height, "inside the view's height");
      }
    }
  }
  // At 50% zoom every canvas pixel is half a screen pixel: the headline must stay >= 16 px there
  // and nothing drawn below 7 px.
  assert.ok(FONT_PX.big * 0.5 >= 16);
  assert.ok(Math.min(...Object.values(FONT_PX)) * 0.5 >= 7);
});

test("a reply that does not fit says so in red with the fix", () => {
  const v = layoutEstimate(reply({ fits: false, peak_vram_gib: 120, suggestion: "Try: stream 20 blocks (20 min per video)." }), 440);
  const all = v.texts.join("\n");
  assert.match(all, /DOES NOT FIT/);
  assert.match(all, /Does not fit: needs 120 GiB VRAM/);
  assert.match(all, /stream 20/);
  assert.ok(v.ops.some((o) => o.t === "text" && o.color === COLOR.over));
});

test("the GPU note (no GPU on this machine) is drawn; a reply without it draws none", () => {
  const note = "no GPU on this machine: showing H100 SXM";
  const r = reply();
  r.gpu.note = note;
  assert.ok(wrap(note, "17px sans-serif", 420).length >= 1);
  const all = layoutEstimate(r, 440).texts.join(" ");
  assert.ok(all.includes("no GPU on this machine"), all);
  const plain = layoutEstimate(reply(), 440).texts.join(" ");
  assert.ok(!plain.includes("no GPU"), plain);
});

test("errors and the waiting state", () => {
  const e = layoutEstimate({ error: "No diffusion model selected. Pick a model in WanMeter Model Loader." }, 440);
  assert.equal(e.texts[0], "Cannot estimate");
  assert.ok(e.texts.join(" ").includes("Pick a model"));
  assert.equal(e.hits.details, undefined);
  assert.match(layoutEstimate(null, 440).texts[0], /waiting/);
});

test("details list what the compact view leaves out", () => {
  const d = detailLines(reply({ free_vram_gib: 70.5 })).join("\n");
  assert.match(d, /GPU: H100 SXM \(80 GiB\), speeds measured/);
  assert.match(d, /Free VRAM now: 71 GiB/);
  assert.match(d, /First video with loading: 17 min 20 s/);
  assert.match(d, /RTX 4090: stream 30 blocks/);
});

// ------------------------------------------------------------------ per-sampler estimate, badge, measured

test("estimateFor: the sampler's own estimate, never another sampler's", () => {
  const r = reply({
    sampler_id: "5",
    pipelines: [
      { sampler_id: "5", label: "Draft 832x480", seconds_per_video: 300, cost_per_video: 0.4, peak_vram_gib: 30, fits: true },
      { sampler_id: "12", label: "Refine 1280x720", seconds_per_video: 500, cost_per_video: 0.66, peak_vram_gib: 38, fits: true },
    ],
  });
  assert.equal(estimateFor(r, 5).seconds_per_step, 23.4); // top level is sampler 5's
  assert.equal(estimateFor(r, "12").seconds_per_video, 500);
  assert.equal(estimateFor(r, "12").seconds_per_step, undefined); // the draft's s/step is not the refine's
  assert.equal(estimateFor(r, 99), null);
  // A reply that names no sampler: only a graph with that one sampler takes it.
  const anon = reply({ sampler_id: undefined, pipelines: undefined });
  assert.equal(estimateFor(anon, 5, [5]), anon);
  assert.equal(estimateFor(anon, 12, [5, 12]), null);
  assert.equal(estimateFor({ error: "x" }, 5, [5]), null);
});

test("draft_then_final: the refinement sampler's measured line is not compared with the draft's estimate", () => {
  // Today's server estimates the first sampler and does not say which: before issue 14 the measured
  // line of the refinement compared its speed with the draft's estimate.
  const draftReply = reply({ sampler_id: undefined, pipelines: undefined, width: 832, height: 480, seconds_per_step: 8.1 });
  const refine = { seconds_per_step: 30.2, total_seconds: 302, peak_vram_gib: 40, device: "cuda" };
  const ids = [5, 12];
  const lines = measuredLines(refine, estimateFor(draftReply, 12, ids), "Refine 1280x720");
  assert.ok(!lines.join(" ").includes("estimated"), lines.join("\n"));
  assert.match(lines[0], /Measured Refine 1280x720: 30\.20 s\/step/);
  // With the reply naming the sampler, each compares with its own.
  const named = reply({ sampler_id: "5", seconds_per_step: 8.1,
    pipelines: [{ sampler_id: "12", label: "Refine", seconds_per_video: 500, cost_per_video: 0.66, peak_vram_gib: 38, fits: true }] });
  assert.match(measuredLines(refine, estimateFor(named, 5, ids))[0], /estimated 8\.10/);
  assert.match(measuredLines(refine, estimateFor(named, 12, ids))[1], /estimated 38 GiB/);
});

test("measured state is per workflow and per sampler, and a loaded workflow starts clean", () => {
  const s = new MeasuredStore();
  const stats = { seconds_per_step: 2.1, total_seconds: 8.4, peak_vram_gib: null, device: "cpu" };
  s.record("draft_then_final", 5, stats);
  s.record("draft_then_final", 12, { ...stats, seconds_per_step: 3 });
  assert.equal(s.get("draft_then_final", "12").seconds_per_step, 3);
  assert.equal(s.get("i2v", 5), null, "another workflow's run is not shown");
  assert.deepEqual(s.entries("draft_then_final").map(([k]) => k), ["5", "12"]);
  s.clear("draft_then_final"); // the glue clears a workflow when it is loaded
  assert.deepEqual(s.entries("draft_then_final"), []);
});

test("badge: time, cost and fits for the sampler the estimate is for", () => {
  const b = badge(reply(), 5, [5]);
  assert.equal(b.text, "16 min 18 s · $1.29 · fits");
  assert.equal(b.level, "ok");
  assert.equal(badge(reply(), 7, [5, 7]), null);
  const over = badge(reply({ fits: false }), 5, [5]);
  assert.match(over.text, /does not fit/);
  assert.equal(over.color, COLOR.over);
  const p = badge(reply({ pipelines: [{ sampler_id: "7", seconds_per_video: 60, cost_per_video: 0.05, fits: true }] }), 7, [5, 7]);
  assert.equal(p.text, "1 min 0 s · $0.050 · fits");
});

test("badge sits in the title bar when there is room, else just above it", () => {
  const b = badge(reply(), 5, [5]);
  const inTitle = layoutBadge(b, 600, 30, approxMeasure, 100);
  assert.ok(inTitle.inTitle && inTitle.box.y < 0 && inTitle.box.y + inTitle.box.h <= 0);
  assert.ok(inTitle.box.x + inTitle.box.w <= 600);
  const above = layoutBadge(b, 340, 30, approxMeasure, 200);
  assert.ok(!above.inTitle && above.box.y + above.box.h <= -30);
});

test("paint draws every op through the 2-D context", () => {
  const calls = [];
  const ctx = new Proxy({}, {
    get: (_, k) => (k in Object.prototype ? undefined : (...a) => calls.push([k, ...a])),
    set: (_, k, v) => (calls.push(["set", k, v]), true),
  });
  const v = layoutEstimate(reply(), 440);
  paint(ctx, v.ops, 0, 100);
  const texts = calls.filter((c) => c[0] === "fillText").map((c) => c[1]);
  assert.deepEqual(texts, v.texts);
  assert.ok(calls.filter((c) => c[0] === "fillText").every((c) => c[3] >= 100), "shifted by dy");
  assert.equal(calls[0][0], "save");
  assert.equal(calls.at(-1)[0], "restore");
});
