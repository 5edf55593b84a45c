// Pure logic of the WanMeter web extension: the estimate request, number formatting (estimate_view.js draws).
// No DOM and no ComfyUI imports, so `node --test web/tests/` covers it; wanmeter.js is the glue.

// The graph is read on the server (wanmeter/estimator/graph.py, with the widget names and defaults
// of wanmeter/data/node_schema.json): this module holds no widget tables and no defaults.

export const ESTIMATOR_TYPE = "WanMeterEstimator";
export const LOADER_TYPE = "WanMeterModelLoader";
export const DEBOUNCE_MS = 300;

export function isSamplerType(type) {
  return typeof type === "string" && type.startsWith("WanMeter") && type.includes("Sampler");
}

/**
 * What POST /wanmeter/estimate takes: the serialized graph as the frontend saves it (UI format, with
 * subgraph definitions), and the sampler the user last touched (null: the server takes the first).
 */
export function estimateRequest(serialized, samplerId = null) {
  return { graph: serialized, sampler_id: samplerId === null || samplerId === undefined ? null : String(samplerId) };
}

/** A stable key of what can change an estimate (not node positions or sizes): unchanged graphs send nothing. */
export function graphKey(serialized, samplerId = null) {
  if (!serialized) return "";
  const nodes = (n) => (Array.isArray(n) ? n : []).map((x) => [x.id, x.type, x.mode, x.widgets_values,
    (x.inputs || []).map((i) => [i.name, i.link])]);
  const subs = ((serialized.definitions && serialized.definitions.subgraphs) || []).map((g) => [g.id, nodes(g.nodes), g.links]);
  return JSON.stringify([nodes(serialized.nodes), serialized.links, subs, samplerId]);
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
