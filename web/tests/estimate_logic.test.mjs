import { test } from "node:test";
import assert from "node:assert/strict";
import {
  debounce, fitWarning, fmtMoney, fmtSeconds, graphToSettings,
  isRelevantType, settingsKey,
} from "../estimate_logic.js";

function t2vGraph() {
  return {
    nodes: [
      { id: 5, type: "WanMeterSampler", mode: 0, inputs: { model: 2, positive: 3, negative: 3 },
        widgets: { width: 832, height: 480, frames: 81, steps: 30, cfg_high: 4, cfg_low: 3, shift: 12,
          seed: 1, batch_size: 1, scheduler: "unipc", boundary: 0, denoise: 1 } },
      { id: 1, type: "WanMeterModelLoader", mode: 0, inputs: {},
        widgets: { model: "other_high.safetensors", weight_dtype: "bf16", compute_dtype: "bf16",
          offload: "none", blocks_to_stream: 0, attention: "auto", model_low_noise: "none" } },
      { id: 2, type: "WanMeterModelLoader", mode: 0, inputs: {},
        widgets: { model: "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", weight_dtype: "fp8_e4m3fn",
          compute_dtype: "bf16", offload: "blocks", blocks_to_stream: "12", attention: "sdpa",
          model_low_noise: "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors" } },
      { id: 3, type: "WanMeterTextEncoderLoader", mode: 0, inputs: {}, widgets: { text_encoder: "umt5.safetensors", device: "cpu", dtype: "bf16" } },
      { id: 4, type: "WanMeterVAELoader", mode: 0, inputs: {}, widgets: { vae: "wan_2.1_vae.safetensors", tiled: false, dtype: "bf16" } },
      { id: 6, type: "WanMeterVAEDecode", mode: 0, inputs: { samples: 5, vae: 4 }, widgets: { tiled: "enable" } },
      { id: 7, type: "WanMeterEstimator", mode: 0, inputs: {},
        widgets: { gpu: "RTX 4090", price_per_hour: 0.5, videos_per_month: 200, budget_gb: 0 } },
      { id: 8, type: "CreateVideo", mode: 0, inputs: { images: 6 }, widgets: { fps: 16 } },
    ],
  };
}

test("graphToSettings reads the loader wired into the sampler, not the first loader", () => {
  const s = graphToSettings(t2vGraph());
  assert.equal(s.model, "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors");
  assert.equal(s.model_low_noise, "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors");
  assert.equal(s.weight_dtype, "fp8_e4m3fn");
  assert.equal(s.offload, "blocks");
  assert.equal(s.blocks_to_stream, 12); // coerced to a number
  assert.equal(s.attention, "sdpa");
});

test("graphToSettings produces exactly the flat settings keys", () => {
  const s = graphToSettings(t2vGraph());
  assert.deepEqual(Object.keys(s).sort(), [
    "attention", "blocks_to_stream", "budget_gb", "cfg_high", "cfg_low", "compile", "fp8_compute", "frames", "gpu",
    "height", "loras", "model", "model_low_noise", "num_gpus", "offload", "price_per_hour", "step_cache", "steps",
    "text_encoder_device", "vae_tiled", "videos_per_month", "weight_dtype", "width",
  ]);
  assert.equal(s.fp8_compute, false);
  assert.equal(s.compile, false);
  assert.equal(s.step_cache, "none");
  assert.equal(s.loras, 0);
  assert.equal(s.width, 832);
  assert.equal(s.height, 480);
  assert.equal(s.steps, 30);
  assert.equal(s.text_encoder_device, "cpu");
  assert.equal(s.vae_tiled, true); // decode's "enable" overrides the loader's false
  assert.equal(s.gpu, "RTX 4090");
  assert.equal(s.price_per_hour, 0.5);
  assert.equal(s.videos_per_month, 200);
  assert.equal(s.num_gpus, 1);
});

test("decode 'auto' keeps the loader's tiled default; bypassed nodes are ignored", () => {
  const g = t2vGraph();
  g.nodes.find((n) => n.type === "WanMeterVAEDecode").widgets.tiled = "auto";
  g.nodes.find((n) => n.type === "WanMeterVAELoader").widgets.tiled = true;
  assert.equal(graphToSettings(g).vae_tiled, true);
  g.nodes.find((n) => n.type === "WanMeterVAELoader").mode = 4;
  assert.equal(graphToSettings(g).vae_tiled, false);
});

test("without a sampler the first loader is used; without a loader there is nothing to estimate", () => {
  const g = t2vGraph();
  g.nodes = g.nodes.filter((n) => n.type !== "WanMeterSampler");
  assert.equal(graphToSettings(g).model, "other_high.safetensors");
  assert.equal(graphToSettings(g).frames, 81); // default
  g.nodes = g.nodes.filter((n) => n.type !== "WanMeterModelLoader");
  assert.equal(graphToSettings(g), null);
  assert.equal(graphToSettings(null), null);
});

test("any WanMeter sampler type (e.g. S2V) counts as the sampler", () => {
  const g = t2vGraph();
  g.nodes[0].type = "WanMeterS2VSampler";
  assert.equal(graphToSettings(g).width, 832);
  assert.ok(isRelevantType("WanMeterS2VSampler"));
  assert.ok(isRelevantType("WanMeterEstimator"));
  assert.ok(!isRelevantType("KSampler"));
  assert.ok(!isRelevantType("CreateVideo"));
});

test("settingsKey ignores key order and changes with any value", () => {
  const a = graphToSettings(t2vGraph());
  const b = Object.fromEntries(Object.entries(a).reverse());
  assert.equal(settingsKey(a), settingsKey(b));
  assert.notEqual(settingsKey(a), settingsKey({ ...a, frames: 85 }));
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

test("speed widgets, GPU count and LoRA nodes reach the settings", () => {
  const g = t2vGraph();
  const loader = g.nodes.find((n) => n.id === 2);
  loader.widgets.fp8_compute = true;
  loader.widgets.compile = 1;
  Object.assign(g.nodes[0].widgets, { step_cache: "first_block", cache_threshold: 0.1, num_gpus: "4" });
  g.nodes.push({ id: 10, type: "WanMeterLoRA", mode: 0, inputs: { model: 2 }, widgets: { lora: "a.safetensors" } });
  g.nodes.push({ id: 11, type: "WanMeterLoRA", mode: 0, inputs: { model: 10 }, widgets: { lora: "b.safetensors" } });
  g.nodes.push({ id: 12, type: "WanMeterLoRA", mode: 4, inputs: { model: 11 }, widgets: { lora: "c.safetensors" } });
  const s = graphToSettings(g);
  assert.equal(s.fp8_compute, true);
  assert.equal(s.compile, true);
  assert.equal(s.step_cache, "first_block");
  assert.equal(s.num_gpus, 4);
  assert.equal(s.loras, 2); // the bypassed one does not count
  assert.equal("cache_threshold" in s, false);
  assert.ok(isRelevantType("WanMeterLoRA") && isRelevantType("WanMeterS2VAudio"));
});

function s2vGraph(clips) {
  return {
    nodes: [
      { id: 1, type: "WanMeterModelLoader", mode: 0, inputs: {},
        widgets: { model: "wan2.2_s2v_14B_bf16.safetensors", weight_dtype: "fp8_e4m3fn", compute_dtype: "bf16",
          offload: "auto", blocks_to_stream: 0, attention: "auto", fp8_compute: false, compile: false,
          model_low_noise: "none" } },
      { id: 4, type: "WanMeterS2VAudio", mode: 0, inputs: { audio: 3 },
        widgets: { audio_encoder: "wav2vec2_large_english_fp16.safetensors", audio_scale: 1, device: "gpu", clips } },
      { id: 5, type: "WanMeterS2VSampler", mode: 0, inputs: { model: 1, s2v_audio: 4 },
        widgets: { width: 832, height: 480, steps: 40, cfg: 4.5, shift: 3, seed: 0, drop_first_motion: true } },
      { id: 9, type: "WanMeterEstimator", mode: 0, inputs: {},
        widgets: { gpu: "H100 SXM", price_per_hour: 0, videos_per_month: 100, budget_gb: 0 } },
    ],
  };
}

test("S2V: frames per 80-frame clip, clips from the audio node, cfg from the S2V sampler", () => {
  const s = graphToSettings(s2vGraph(3));
  assert.equal(s.frames, 80);
  assert.equal(s.s2v_clips, 3);
  assert.equal(s.width, 832);
  assert.equal(s.height, 480);
  assert.equal(s.steps, 40);
  assert.equal(s.cfg_high, 4.5);
  assert.equal(s.model, "wan2.2_s2v_14B_bf16.safetensors");
  const auto = graphToSettings(s2vGraph(0));
  assert.equal(auto.s2v_clips, 0); // 0 = from the audio: the server estimates one clip with a note
  assert.equal(auto.frames, 80);
  const g = s2vGraph(2);
  g.nodes = g.nodes.filter((n) => n.type !== "WanMeterS2VAudio");
  assert.equal(graphToSettings(g).s2v_clips, 0);
  // a T2V graph sends no clip count
  assert.equal("s2v_clips" in graphToSettings(t2vGraph()), false);
});
