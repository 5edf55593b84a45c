import { test } from "node:test";
import assert from "node:assert/strict";
import { debounce, estimateRequest, fitWarning, fmtMoney, fmtSeconds, graphKey, isSamplerType } from "../estimate_logic.js";

// The graph itself is read on the server (tests/test_graph_reader.py): the browser sends it as saved.
function saved() {
  return {
    nodes: [
      { id: 5, type: "WanMeterSampler", mode: 0, pos: [10, 10], size: [300, 400],
        inputs: [{ name: "model", link: 1 }], widgets_values: [832, 480, 81, 30, 4, 3, 12, 1, "fixed", 1] },
      { id: 2, type: "WanMeterModelLoader", mode: 0, pos: [0, 0], inputs: [], widgets_values: ["a.safetensors", "bf16"] },
    ],
    links: [[1, 2, 0, 5, 0, "WANMETER_MODEL"]],
    definitions: { subgraphs: [] },
  };
}

test("the request is the saved graph and the sampler the user touched", () => {
  const g = saved();
  assert.deepEqual(estimateRequest(g, 5), { graph: g, sampler_id: "5" });
  assert.deepEqual(estimateRequest(g), { graph: g, sampler_id: null });
});

test("graphKey changes with widgets, links, modes and the sampler, not with positions", () => {
  const a = saved();
  const moved = saved();
  moved.nodes[0].pos = [500, 500];
  moved.nodes[0].size = [10, 10];
  assert.equal(graphKey(a), graphKey(moved));
  const steps = saved();
  steps.nodes[0].widgets_values[3] = 40;
  assert.notEqual(graphKey(a), graphKey(steps));
  const bypass = saved();
  bypass.nodes[1].mode = 4;
  assert.notEqual(graphKey(a), graphKey(bypass));
  assert.notEqual(graphKey(a, 5), graphKey(a, 6));
  const sub = saved();
  sub.definitions.subgraphs.push({ id: "x", nodes: [{ id: 1, type: "KSampler", widgets_values: [20] }], links: [] });
  assert.notEqual(graphKey(a), graphKey(sub));
  assert.equal(graphKey(null), "");
});

test("any WanMeter sampler type counts as a sampler", () => {
  assert.ok(isSamplerType("WanMeterS2VSampler") && isSamplerType("WanMeterSampler"));
  assert.ok(!isSamplerType("KSampler") && !isSamplerType("WanMeterEstimator"));
});


test("debounce runs once, after the last call", () => {
  const calls = [];
  let now = 0;
  const timers = [];
  const fake = {
    setTimeout: (fn, ms) => { timers.push({ fn, at: now + ms, live: true }); return timers.length - 1; },
    clearTimeout: (h) => { timers[h].live = false; },
  };
  const d = debounce((x) => calls.push(x), 300, fake);
  d(1); now = 100; d(2); now = 250; d(3);
  now = 1000;
  for (const t of timers) if (t.live && t.at <= now) t.fn();
  assert.deepEqual(calls, [3]);
});

const reply = {
  variant: "t2v_a14b", label: "T2V-A14B", width: 1280, height: 720, frames: 81, steps: 40,
  gpu: { name: "RTX 4090", vram_gb: 24 }, budget_gib: 23.1, peak_vram_gib: 31.4, free_vram_gib: null, plan: "fp8_e4m3fn, no offload, attn sdpa", fits: false,
  seconds_per_video: 3725, seconds_per_step: 93.1, cost_per_video: 0.6208, cost_per_month: 62.08,
  videos_per_month: 100, price_per_hour: 0.6,
  cheapest: [
    { name: "H100 SXM", cost_per_video: 1.05, seconds_per_video: 1000, peak_vram_gib: 41, changes: ["stream 3 blocks"] },
    { name: "A100 80GB SXM", cost_per_video: 1.4, seconds_per_video: 2100, peak_vram_gib: 41 },
    { name: "H200", cost_per_video: 1.6, seconds_per_video: 950, peak_vram_gib: 41 },
    { name: "B200", cost_per_video: 2.0, seconds_per_video: 500, peak_vram_gib: 41 },
  ],
  warnings: [], notes: ["assumed from the name"],
};

test("fitWarning is empty when the plan fits or on errors", () => {
  assert.equal(fitWarning({ ...reply, fits: true }), "");
  assert.match(fitWarning(reply), /needs 31 GiB/);
  assert.match(fitWarning({ ...reply, suggestion: "Try: stream 3 blocks." }), /Try: stream 3 blocks\.$/);
  assert.equal(fitWarning({ error: "No diffusion model selected." }), "");
});

test("number formatting", () => {
  assert.equal(fmtSeconds(5.25), "5.3 s");
  assert.equal(fmtSeconds(61), "1 min 1 s");
  assert.equal(fmtSeconds(7260), "2 h 1 min");
  assert.equal(fmtMoney(0.0123), "$0.012");
  assert.equal(fmtMoney(12.5), "$12.50");
  assert.equal(fmtMoney(12345), "$12,345");
  assert.equal(fmtSeconds(NaN), "?");
});
