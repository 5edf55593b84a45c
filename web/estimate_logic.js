// Pure logic of the WanMeter web extension: the estimate request, estimate reply -> text.
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

/** The multi-line text the estimator node shows for a /wanmeter/estimate reply. */
export function formatEstimate(r, measured = null) {
  if (!r) return "WanMeter: waiting for an estimate...";
  if (r.error) return `WanMeter: cannot estimate\n${r.error}`;
  const lines = [];
  const head = [r.label || r.variant, r.width && r.height ? `${r.width}x${r.height}` : null,
    r.frames ? `${r.frames} frames` : null, r.steps ? `${r.steps} steps` : null].filter(Boolean);
  lines.push(head.join(" · "));
  const g = r.gpu || {};
  lines.push(`GPU: ${g.name || "?"}${g.vram_gib ? ` (${fmtGiB(g.vram_gib)})` : ""}${g.note ? ` (${g.note})` : ""}`);
  let vram = `Peak VRAM: ${fmtGiB(r.peak_vram_gib)} of ${fmtGiB(r.budget_gib)} usable`;
  if (r.free_vram_gib !== null && r.free_vram_gib !== undefined) vram += ` (free now ${fmtGiB(r.free_vram_gib)})`;
  vram += r.fits ? "  OK, fits" : "  DOES NOT FIT";
  lines.push(vram);
  if (r.plan) lines.push(`Plan: ${r.plan}`);
  if (r.ram_gib) lines.push(`CPU RAM: ${fmtGiB(r.ram_gib)}${r.ram_fits === false ? " (more than this machine has)" : ""}`);
  let t = `Time per video: ${fmtSeconds(r.seconds_per_video)}`;
  if (r.seconds_per_step) t += ` (${r.seconds_per_step.toFixed(r.seconds_per_step < 10 ? 2 : 1)} s/step)`;
  if (r.first_video_seconds && r.first_video_seconds > r.seconds_per_video + 1) {
    t += `; first video ${fmtSeconds(r.first_video_seconds)} with loading`;
  }
  lines.push(t);
  lines.push(`Cost: ${fmtMoney(r.cost_per_video)} per video · ${fmtMoney(r.cost_per_month)} per month` +
    ` (${r.videos_per_month ?? "?"} videos at ${fmtMoney(r.price_per_hour)}/h)`);
  if (Array.isArray(r.cheapest) && r.cheapest.length) {
    lines.push("Cheapest GPUs that fit:");
    r.cheapest.slice(0, 3).forEach((c, i) => {
      lines.push(`  ${i + 1}. ${c.name}: ${fmtMoney(c.cost_per_video)}/video, ${fmtSeconds(c.seconds_per_video)}` +
        `${c.peak_vram_gib ? `, ${fmtGiB(c.peak_vram_gib)}` : ""}` +
        `${c.changes && c.changes.length ? ` (${c.changes.join(", ")})` : ""}`);
    });
  }
  const warn = fitWarning(r);
  if (warn) lines.push(`WARNING: ${warn}`);
  for (const w of r.warnings || []) lines.push(`WARNING: ${w}`);
  for (const n of r.notes || []) lines.push(`note: ${n}`);
  if (measured) lines.push(...formatMeasured(measured, r));
  return lines.join("\n");
}

/** A one-line warning when the plan does not fit the budget; "" when it fits. */
export function fitWarning(r) {
  if (!r || r.error || r.fits) return "";
  const need = fmtGiB(r.peak_vram_gib);
  const have = fmtGiB(r.budget_gib);
  const hint = r.suggestion ? ` ${r.suggestion}` : " Try offload=blocks, fp8 weights, fewer frames or a smaller size.";
  return `needs ${need} VRAM but only ${have} available.${hint}`;
}

/** Lines comparing the sampler's measured stats (ui.wanmeter_stats) with the estimate. */
export function formatMeasured(m, r = null) {
  if (!m) return [];
  const est = r && !r.error ? r : null;
  const sps = isFinite(m.seconds_per_step) ? `${m.seconds_per_step.toFixed(2)} s/step` : "? s/step";
  const lines = [`Measured (last run on ${m.device || "?"}): ${sps}` +
    (est && est.seconds_per_step ? ` (estimated ${est.seconds_per_step.toFixed(2)})` : "") +
    `, ${fmtSeconds(m.total_seconds)} sampling`];
  const peak = m.peak_vram_gib === null || m.peak_vram_gib === undefined ? "n/a" : fmtGiB(m.peak_vram_gib);
  lines.push(`  peak VRAM ${peak}` + (est ? ` (estimated ${fmtGiB(est.peak_vram_gib)})` : ""));
  return lines;
}
