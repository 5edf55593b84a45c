// Pure logic of the WanMeter web extension: graph -> settings, number formatting (estimate_view.js draws).
// No DOM and no ComfyUI imports, so `node --test web/tests/` covers it; wanmeter.js is the glue.

/** Where each settings key comes from: node type -> { widget name: settings key }. */
export const WIDGET_SOURCES = {
  WanMeterModelLoader: {
    model: "model",
    model_low_noise: "model_low_noise",
    weight_dtype: "weight_dtype",
    offload: "offload",
    blocks_to_stream: "blocks_to_stream",
    attention: "attention",
    fp8_compute: "fp8_compute",
    compile: "compile",
  },
  WanMeterSampler: {
    width: "width",
    height: "height",
    frames: "frames",
    steps: "steps",
    cfg_high: "cfg_high",
    cfg_low: "cfg_low",
    step_cache: "step_cache",
    num_gpus: "num_gpus",
  },
  WanMeterS2VSampler: { width: "width", height: "height", steps: "steps", cfg: "cfg_high" },
  WanMeterS2VAudio: { clips: "s2v_clips" },
  WanMeterLoRA: {},
  WanMeterTextEncoderLoader: { device: "text_encoder_device" },
  WanMeterVAELoader: { tiled: "vae_tiled" },
  WanMeterVAEDecode: { tiled: "vae_tiled_override" },
  WanMeterEstimator: {
    gpu: "gpu",
    price_per_hour: "price_per_hour",
    videos_per_month: "videos_per_month",
    budget_gb: "budget_gb",
  },
};

export const ESTIMATOR_TYPE = "WanMeterEstimator";
export const LOADER_TYPE = "WanMeterModelLoader";
export const SAMPLER_TYPE = "WanMeterSampler";
export const S2V_SAMPLER_TYPE = "WanMeterS2VSampler";
export const S2V_AUDIO_TYPE = "WanMeterS2VAudio";
export const LORA_TYPE = "WanMeterLoRA";
/** Frames of one S2V clip (5 s at 16 fps); the clip count goes in s2v_clips (0 = from the audio). */
export const S2V_CLIP_FRAMES = 80;
export const DEBOUNCE_MS = 300;

/** Node types whose widgets change the estimate (any WanMeter sampler counts, e.g. S2V's). */
export function isRelevantType(type) {
  return typeof type === "string" && (type in WIDGET_SOURCES || isSamplerType(type));
}

export function isSamplerType(type) {
  return typeof type === "string" && type.startsWith("WanMeter") && type.includes("Sampler");
}

const DEFAULTS = {
  model_low_noise: "none",
  width: 1280,
  height: 720,
  frames: 81,
  steps: 40,
  cfg_high: 4.0,
  cfg_low: 3.0,
  weight_dtype: "bf16",
  offload: "auto",
  blocks_to_stream: 0,
  attention: "auto",
  text_encoder_device: "gpu",
  vae_tiled: false,
  gpu: "",
  price_per_hour: 0,
  videos_per_month: 100,
  budget_gb: 0,
  num_gpus: 1,
  fp8_compute: false,
  compile: false,
  step_cache: "none",
  loras: 0,
};

const SAMPLER_KEYS = ["width", "height", "frames", "steps", "cfg_high", "cfg_low", "step_cache", "num_gpus"];

function byId(a, b) {
  return Number(a.id) - Number(b.id);
}

function firstOfType(nodes, type) {
  return nodes.filter((n) => n.type === type && n.mode !== 2 && n.mode !== 4).sort(byId)[0];
}

/**
 * Build the flat settings dict the server's /wanmeter/estimate takes.
 *
 * `graph` is a plain description: { nodes: [{ id, type, mode, widgets: {name: value},
 * inputs: {name: sourceNodeId|null} }] } (the glue builds it from app.graph). Muted (mode 2)
 * and bypassed (mode 4) nodes are ignored. The model loader is the one wired into the first
 * sampler when there is one, else the first loader. Returns null when the graph has no model
 * loader (nothing to estimate).
 */
export function graphToSettings(graph) {
  const nodes = (graph && graph.nodes) || [];
  const active = nodes.filter((n) => n.mode !== 2 && n.mode !== 4);
  const samplers = active.filter((n) => isSamplerType(n.type)).sort(byId);
  const sampler = samplers[0];
  let loader;
  if (sampler && sampler.inputs && sampler.inputs.model != null) {
    loader = active.find((n) => String(n.id) === String(sampler.inputs.model) && n.type === LOADER_TYPE);
  }
  loader = loader || firstOfType(active, LOADER_TYPE);
  if (!loader) return null;

  const s = { ...DEFAULTS };
  const take = (node, type) => {
    if (!node) return;
    const map = WIDGET_SOURCES[type] || {};
    for (const [widget, key] of Object.entries(map)) {
      const v = node.widgets ? node.widgets[widget] : undefined;
      if (v !== undefined && v !== null) s[key] = v;
    }
  };
  take(loader, LOADER_TYPE);
  if (sampler && sampler.type === S2V_SAMPLER_TYPE) {
    // S2V: frames are per 80-frame clip; the clip count comes from the audio node (0 = auto).
    take(sampler, S2V_SAMPLER_TYPE);
    s.frames = S2V_CLIP_FRAMES;
    s.s2v_clips = 0;
    take(firstOfType(active, S2V_AUDIO_TYPE), S2V_AUDIO_TYPE);
    s.s2v_clips = Math.max(0, Math.round(Number(s.s2v_clips) || 0));
  } else if (sampler) {
    for (const key of SAMPLER_KEYS) {
      const v = sampler.widgets ? sampler.widgets[key] : undefined;
      if (v !== undefined && v !== null) s[key] = v;
    }
  }
  s.loras = active.filter((n) => n.type === LORA_TYPE).length;
  take(firstOfType(active, "WanMeterTextEncoderLoader"), "WanMeterTextEncoderLoader");
  take(firstOfType(active, "WanMeterVAELoader"), "WanMeterVAELoader");
  take(firstOfType(active, "WanMeterVAEDecode"), "WanMeterVAEDecode");
  take(firstOfType(active, ESTIMATOR_TYPE), ESTIMATOR_TYPE);

  // The decode node's tiled combo overrides the loader's default unless it says "auto".
  const o = s.vae_tiled_override;
  delete s.vae_tiled_override;
  if (o === "enable") s.vae_tiled = true;
  else if (o === "disable") s.vae_tiled = false;
  s.vae_tiled = Boolean(s.vae_tiled);
  s.fp8_compute = Boolean(s.fp8_compute);
  s.compile = Boolean(s.compile);

  for (const k of ["width", "height", "frames", "steps", "blocks_to_stream", "videos_per_month", "num_gpus"]) {
    s[k] = Math.round(Number(s[k]));
  }
  for (const k of ["cfg_high", "cfg_low", "price_per_hour", "budget_gb"]) s[k] = Number(s[k]);
  return s;
}

/** A stable key: the glue skips a request when nothing that matters changed. */
export function settingsKey(settings) {
  if (!settings) return "";
  return JSON.stringify(Object.keys(settings).sort().map((k) => [k, settings[k]]));
}

/** Debounce with injectable timers (tests pass fakes). */
export function debounce(fn, ms = DEBOUNCE_MS, timers = globalThis) {
  let handle = null;
  const wrapped = (...args) => {
    if (handle !== null) timers.clearTimeout(handle);
    handle = timers.setTimeout(() => {
      handle = null;
      fn(...args);
    }, ms);
  };
  wrapped.cancel = () => {
    if (handle !== null) timers.clearTimeout(handle);
    handle = null;
  };
  return wrapped;
}

// ------------------------------------------------------------------ formatting

export function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "?";
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${m - h * 60} min`;
}

export function fmtMoney(x) {
  if (x === null || x === undefined || !isFinite(x)) return "?";
  if (x < 0.1) return `$${x.toFixed(3)}`;
  if (x < 1000) return `$${x.toFixed(2)}`;
  return `$${Math.round(x).toLocaleString("en-US")}`;
}

export function fmtGB(x, unit = "GB") {
  if (x === null || x === undefined || !isFinite(x)) return "?";
  return `${x < 10 ? x.toFixed(1) : Math.round(x)} ${unit}`;
}

export function fmtGiB(x) {
  return fmtGB(x, "GiB");
}

/** A one-line warning when the plan does not fit the budget; "" when it fits. */
export function fitWarning(r) {
  if (!r || r.error || r.fits) return "";
  const need = fmtGiB(r.peak_vram_gib);
  const have = fmtGiB(r.budget_gib);
  const hint = r.suggestion ? ` ${r.suggestion}` : " Try offload=blocks, fp8 weights, fewer frames or a smaller size.";
  return `needs ${need} VRAM but only ${have} available.${hint}`;
}
