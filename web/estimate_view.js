// The estimate drawn, not printed: pure functions from a /wanmeter/estimate reply (the schema in
// the estimator's reply, one for Python and JS) to boxes and text, plus `paint`, the thin canvas
// part. No DOM and no ComfyUI imports: `node --test web/tests/` covers all of it.
//
// Sizes are canvas units (what the node sees); at 50% zoom they are half as many screen pixels, so
// the headline type is large (BIG) and nothing that matters is smaller than MAIN.
import { fitWarning, fmtGiB, fmtMoney, fmtSeconds } from "./estimate_logic.js";

export const FONT = {
  big: "bold 34px sans-serif",
  main: "bold 18px sans-serif",
  text: "17px sans-serif",
  small: "15px sans-serif",
};
export const FONT_PX = { big: 34, main: 18, text: 17, small: 15 };
export const COLOR = {
  ok: "#3fb950",
  tight: "#d29922",
  over: "#f85149",
  text: "#e6edf3",
  dim: "#a0a8b4",
  track: "#3a4150",
  link: "#58a6ff",
  parts: { load: "#8b949e", text: "#a371f7", transfers: "#db6d28", denoise: "#2f81f7", decode: "#3fb950" },
};
/** Above this share of the budget a plan that fits is drawn amber: little headroom for other apps. */
export const TIGHT_FRACTION = 0.9;
const PAD = 10;
const GAP = 8;
const PART_ORDER = ["load", "text", "transfers", "denoise", "decode"];
const PART_LABEL = { load: "load", text: "text", transfers: "transfers", denoise: "denoise", decode: "decode" };

const num = (x) => typeof x === "number" && isFinite(x);

/** GPU memory in GiB from the reply's gpu (vram_gib; today's server sends the GPU table's vram_gb,
 * the marketing figure, which is GiB: an "80 GB" H100 has 80 GiB). */
export function gpuCapacityGiB(r) {
  const g = (r && r.gpu) || {};
  if (num(g.vram_gib)) return g.vram_gib;
  if (num(g.vram_gb)) return g.vram_gb;
  return num(r && r.budget_gib) ? r.budget_gib : null;
}

/** "ok" (green), "tight" (amber: fits with under 10% to spare, or not in CPU RAM), "over" (red). */
export function fitLevel(r) {
  if (!r || r.error) return "over";
  if (!r.fits) return "over";
  if (r.ram_fits === false) return "tight";
  if (num(r.peak_vram_gib) && num(r.budget_gib) && r.peak_vram_gib > TIGHT_FRACTION * r.budget_gib) return "tight";
  return "ok";
}

/** The VRAM bar: fill = peak / capacity, a mark at the usable budget. */
export function vramBar(r) {
  const capacity = gpuCapacityGiB(r);
  const peak = num(r.peak_vram_gib) ? r.peak_vram_gib : null;
  const budget = num(r.budget_gib) ? r.budget_gib : capacity;
  const scale = Math.max(capacity || 0, peak || 0, budget || 0) || 1;
  const level = fitLevel(r);
  const fitText = level === "over" ? "DOES NOT FIT" : level === "tight" ? "fits, tight" : "fits";
  return {
    capacity, peak, budget, level, color: COLOR[level],
    fraction: Math.min(1, (peak || 0) / scale),
    budgetFraction: budget !== null ? Math.min(1, budget / scale) : null,
    label: `${fmtGiB(peak)} of ${fmtGiB(budget)}`, fitText,
  };
}

/** Where the time of the first video goes (load happens once, before the first video). */
export function timeBar(r) {
  const parts = (r && r.time_parts) || null;
  if (!parts) return [];
  const segs = PART_ORDER.filter((k) => num(parts[k]) && parts[k] > 0).map((k) => ({ key: k, seconds: parts[k] }));
  const total = segs.reduce((a, s) => a + s.seconds, 0);
  return segs.map((s) => ({
    ...s, fraction: total > 0 ? s.seconds / total : 0, color: COLOR.parts[s.key],
    label: `${PART_LABEL[s.key]} ${fmtSeconds(s.seconds)}${s.key === "load" ? " (1st video)" : ""}`,
  }));
}

/** Up to 3 cheapest GPUs that fit, with bar lengths relative to the dearest of them. */
export function cheapestBars(r) {
  const rows = Array.isArray(r && r.cheapest) ? r.cheapest.slice(0, 3) : [];
  const max = Math.max(0, ...rows.map((c) => (num(c.cost_per_video) ? c.cost_per_video : 0)));
  return rows.map((c) => ({
    name: c.name, cost: c.cost_per_video, seconds: c.seconds_per_video,
    fraction: max > 0 && num(c.cost_per_video) ? c.cost_per_video / max : 0,
    text: `${fmtMoney(c.cost_per_video)} · ${fmtSeconds(c.seconds_per_video)}`,
    changes: Array.isArray(c.changes) ? c.changes : [],
  }));
}

function unitOf(r) {
  return r && r.variant === "s2v_14b" ? "clip" : "video";
}

/** The headline: time and cost per video, and whether it fits. */
export function headline(r) {
  const g = (r && r.gpu) || {};
  const price = num(r.price_per_hour) ? ` at ${fmtMoney(r.price_per_hour)}/h` : "";
  return {
    time: fmtSeconds(r.seconds_per_video),
    cost: num(r.cost_per_video) ? fmtMoney(r.cost_per_video) : "–",
    timeCaption: `per ${unitOf(r)}`,
    costCaption: `per ${unitOf(r)}`,
    gpuLine: `on ${g.name || "?"}${price}${g.detected ? " (this machine)" : ""}`,
    level: fitLevel(r),
  };
}

/** The sampler ids a reply gives estimates for (top-level sampler_id and pipelines). */
function pipelinesOf(r) {
  return r && !r.error && Array.isArray(r.pipelines) ? r.pipelines : [];
}

/**
 * The estimate for one sampler node: its pipelines entry; the top-level fields when the reply
 * says they are that sampler's (sampler_id), or, when the reply names none, when the graph has
 * this one sampler only. null when the reply does not say (never another sampler's numbers).
 */
export function estimateFor(r, samplerId, samplerIds = null) {
  if (!r || r.error || samplerId === null || samplerId === undefined) return null;
  const id = String(samplerId);
  const p = pipelinesOf(r).find((x) => String(x.sampler_id) === id);
  if (r.sampler_id !== null && r.sampler_id !== undefined) {
    if (String(r.sampler_id) === id) return { ...(p || {}), ...r };
    return p ? { ...p } : null;
  }
  if (p) return { ...p };
  const ids = samplerIds ? samplerIds.map(String) : null;
  return ids && ids.length === 1 && ids[0] === id ? r : null;
}

/** The compact badge on a sampler node's title: time, cost, fits. null when there is none. */
export function badge(r, samplerId, samplerIds = null) {
  const e = estimateFor(r, samplerId, samplerIds);
  if (!e || !num(e.seconds_per_video)) return null;
  const level = e.fits === false ? "over" : fitLevel({ ...r, ...e, fits: e.fits !== false });
  const parts = [fmtSeconds(e.seconds_per_video)];
  if (num(e.cost_per_video)) parts.push(fmtMoney(e.cost_per_video));
  parts.push(e.fits === false ? "does not fit" : "fits");
  return { text: parts.join(" · "), level, color: COLOR[level] };
}

// ------------------------------------------------------------------ measured vs estimated

/**
 * What the samplers measured, per workflow and per sampler node. The glue records each sampler's
 * ui.wanmeter_stats under the workflow that is open and clears a workflow when it is loaded, so
 * one workflow never shows another's run.
 */
export class MeasuredStore {
  constructor() {
    this.byWorkflow = new Map();
  }

  record(workflow, samplerId, stats) {
    const k = String(workflow ?? "");
    if (!this.byWorkflow.has(k)) this.byWorkflow.set(k, new Map());
    this.byWorkflow.get(k).set(String(samplerId), stats);
  }

  get(workflow, samplerId) {
    const m = this.byWorkflow.get(String(workflow ?? ""));
    return (m && m.get(String(samplerId))) || null;
  }

  /** [[samplerId, stats]] of one workflow, in sampler id order. */
  entries(workflow) {
    const m = this.byWorkflow.get(String(workflow ?? ""));
    return m ? [...m.entries()].sort((a, b) => Number(a[0]) - Number(b[0])) : [];
  }

  clear(workflow) {
    this.byWorkflow.delete(String(workflow ?? ""));
  }
}

/** Lines comparing one sampler's measured stats with the estimate for that same sampler (or none). */
export function measuredLines(m, est = null, title = "") {
  if (!m) return [];
  const sps = num(m.seconds_per_step) ? `${m.seconds_per_step.toFixed(2)} s/step` : "? s/step";
  const estSps = est && num(est.seconds_per_step) ? ` (estimated ${est.seconds_per_step.toFixed(2)})` : "";
  const who = title ? `${title}: ` : "";
  const lines = [`Measured ${who}${sps}${estSps}, ${fmtSeconds(m.total_seconds)} sampling on ${m.device || "?"}`];
  const peak = num(m.peak_vram_gib) ? fmtGiB(m.peak_vram_gib) : "n/a";
  const estPeak = est && num(est.peak_vram_gib) ? ` (estimated ${fmtGiB(est.peak_vram_gib)})` : "";
  lines.push(`  peak VRAM ${peak}${estPeak}`);
  return lines;
}

// ------------------------------------------------------------------ text helpers

/** Approximate text width (tests; the glue passes the canvas's measureText). */
export function approxMeasure(text, font) {
  const px = Number((/(\d+)px/.exec(font) || [0, 16])[1]);
  return String(text).length * px * (font.includes("bold") ? 0.6 : 0.55);
}

export function wrap(text, font, maxW, measure = approxMeasure) {
  const out = [];
  for (const para of String(text).split("\n")) {
    let line = "";
    for (const word of para.split(" ")) {
      const next = line ? `${line} ${word}` : word;
      if (line && measure(next, font) > maxW) {
        out.push(line);
        line = word;
      } else {
        line = next;
      }
    }
    out.push(line);
  }
  return out;
}

export function ellipsize(text, font, maxW, measure = approxMeasure) {
  if (measure(text, font) <= maxW) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (measure(text.slice(0, mid) + "…", font) <= maxW) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + "…";
}

/** What "details" expands to: everything the compact view leaves out. */
export function detailLines(r) {
  if (!r || r.error) return [];
  const out = [];
  const g = r.gpu || {};
  const cap = gpuCapacityGiB(r);
  out.push(`GPU: ${g.name || "?"}${cap ? ` (${fmtGiB(cap)})` : ""}${g.detected ? ", this machine's" : ""}` +
    (g.measured === true ? ", speeds measured" : g.measured === false ? ", speeds assumed from specs" : ""));
  if (num(r.free_vram_gib)) out.push(`Free VRAM now: ${fmtGiB(r.free_vram_gib)}`);
  if (num(r.ram_gib)) out.push(`CPU RAM: ${fmtGiB(r.ram_gib)}${r.ram_fits === false ? " (more than this machine has)" : ""}`);
  if (num(r.seconds_per_step)) out.push(`${r.seconds_per_step.toFixed(r.seconds_per_step < 10 ? 2 : 1)} s per step`);
  if (num(r.first_video_seconds) && num(r.seconds_per_video) && r.first_video_seconds > r.seconds_per_video + 1) {
    out.push(`First ${unitOf(r)} with loading: ${fmtSeconds(r.first_video_seconds)}`);
  }
  if (num(r.cost_per_month)) {
    out.push(`${fmtMoney(r.cost_per_month)} per month (${r.videos_per_month ?? "?"} ${unitOf(r)}s)`);
  }
  for (const c of cheapestBars(r)) if (c.changes.length) out.push(`${c.name}: ${c.changes.join(", ")}`);
  if (r.alternative) out.push(`With WanMeter's nodes: ${r.alternative}`);
  for (const p of pipelinesOf(r)) {
    out.push(`${p.label || `sampler ${p.sampler_id}`}: ${fmtSeconds(p.seconds_per_video)}, ${fmtMoney(p.cost_per_video)}, ` +
      `${fmtGiB(p.peak_vram_gib)}${p.fits === false ? ", does not fit" : ""}`);
  }
  for (const n of r.notes || []) out.push(`note: ${n}`);
  return out;
}

// ------------------------------------------------------------------ layout

/**
 * Boxes and text for the estimator node's view, top at y = 0, `width` wide.
 * opts: { expanded, measured: [lines], measure(text, font) }.
 * Returns { ops: [{t: "text", x, y, text, font, color, align} | {t: "rect", x, y, w, h, color}],
 *           height, texts (every string drawn), hits: {details: {x, y, w, h}} }.
 */
export function layoutEstimate(r, width, opts = {}) {
  const measure = opts.measure || approxMeasure;
  const ops = [];
  const hits = {};
  const inner = Math.max(120, width - 2 * PAD);
  let y = PAD;
  const text = (s, font, color, x = PAD, align = "left") => {
    ops.push({ t: "text", x, y, text: s, font, color, align });
  };
  const lineH = (font) => Math.round(FONT_PX[font] * 1.3);
  const para = (s, font, color) => {
    for (const l of wrap(s, FONT[font], inner, measure)) {
      y += lineH(font);
      text(l, FONT[font], color);
    }
  };
  const rect = (x, yy, w, h, color) => ops.push({ t: "rect", x, y: yy, w: Math.max(0, w), h, color });

  if (!r) {
    para("WanMeter: waiting for an estimate…", "text", COLOR.dim);
  } else if (r.error) {
    para("Cannot estimate", "main", COLOR.over);
    para(r.error, "text", COLOR.text);
  } else {
    const head = [r.label || r.variant, r.width && r.height ? `${r.width}x${r.height}` : null,
      r.frames ? `${r.frames} frames` : null, r.steps ? `${r.steps} steps` : null].filter(Boolean).join(" · ");
    y += lineH("small");
    text(ellipsize(head, FONT.small, inner, measure), FONT.small, COLOR.dim);
    if (r.gpu && r.gpu.note) para(r.gpu.note, "text", COLOR.tight);

    // Time and cost per video, large.
    const h = headline(r);
    y += FONT_PX.big + 6;
    text(h.time, FONT.big, COLOR.text);
    text(h.cost, FONT.big, COLOR.text, PAD + inner, "right");
    y += lineH("small");
    text(h.timeCaption, FONT.small, COLOR.dim);
    text(h.costCaption, FONT.small, COLOR.dim, PAD + inner, "right");
    y += lineH("small");
    text(ellipsize(h.gpuLine, FONT.small, inner, measure), FONT.small, COLOR.dim);

    // VRAM against capacity.
    const v = vramBar(r);
    y += GAP + lineH("main");
    text("VRAM", FONT.main, COLOR.text);
    text(`${v.label} · ${v.fitText}`, FONT.main, v.color, PAD + inner, "right");
    y += 6;
    const barH = 16;
    rect(PAD, y, inner, barH, COLOR.track);
    rect(PAD, y, inner * v.fraction, barH, v.color);
    if (v.budgetFraction !== null && v.budgetFraction < 0.999) rect(PAD + inner * v.budgetFraction - 1, y - 3, 3, barH + 6, COLOR.text);
    y += barH;
    y += lineH("small");
    text(`capacity ${fmtGiB(v.capacity)}${v.budget !== v.capacity && num(v.budget) ? `, usable ${fmtGiB(v.budget)}` : ""}`,
      FONT.small, COLOR.dim);

    // Where the time goes.
    const parts = timeBar(r);
    if (parts.length) {
      y += GAP + lineH("small");
      text("Where the time goes", FONT.small, COLOR.dim);
      y += 6;
      let x = PAD;
      for (const s of parts) {
        rect(x, y, inner * s.fraction, barH, s.color);
        x += inner * s.fraction;
      }
      y += barH;
      // Legend: colored squares and labels, wrapped.
      let lx = PAD;
      y += lineH("small");
      for (const s of parts) {
        const w = 14 + measure(s.label, FONT.small) + 14;
        if (lx > PAD && lx + w > PAD + inner) {
          lx = PAD;
          y += lineH("small");
        }
        rect(lx, y - 11, 10, 10, s.color);
        text(s.label, FONT.small, COLOR.text, lx + 14);
        lx += w;
      }
    }

    // Cheapest GPUs that fit, as small bars.
    const cheap = cheapestBars(r);
    if (cheap.length) {
      y += GAP + lineH("small");
      text("Cheapest GPUs that fit", FONT.small, COLOR.dim);
      const nameW = inner * 0.34;
      const textW = inner * 0.36;
      const barW = inner - nameW - textW - 12;
      for (const c of cheap) {
        y += lineH("text");
        text(ellipsize(c.name, FONT.text, nameW - 6, measure), FONT.text, COLOR.text);
        rect(PAD + nameW, y - 12, barW * c.fraction, 12, COLOR.link);
        text(c.text, FONT.text, COLOR.text, PAD + inner, "right");
      }
    }

    // The plan in one line.
    if (r.plan) {
      y += GAP + lineH("small");
      text(ellipsize(`Plan: ${r.plan}`, FONT.small, inner, measure), FONT.small, COLOR.text);
    }
    const warn = fitWarning(r);
    if (warn) para(`Does not fit: ${warn}`, "text", COLOR.over);
    for (const w of r.warnings || []) para(`Warning: ${w}`, "text", COLOR.tight);
  }

  for (const l of opts.measured || []) para(l, "small", COLOR.text);

  if (r && !r.error) {
    y += GAP + lineH("small");
    const label = opts.expanded ? "▾ details" : "▸ details";
    text(label, FONT.small, COLOR.link);
    hits.details = { x: PAD, y: y - FONT_PX.small, w: measure(label, FONT.small) + 20, h: lineH("small") + 4 };
    if (opts.expanded) for (const l of detailLines(r)) para(l, "small", COLOR.text);
  }
  y += PAD + 6;
  return { ops, height: Math.ceil(y), texts: ops.filter((o) => o.t === "text").map((o) => o.text), hits };
}

/**
 * The compact badge's box: right-aligned in the title bar (y < 0 is the title bar in LiteGraph), or
 * just above it when the node's title (titleTextWidth) leaves no room.
 */
export function layoutBadge(b, nodeWidth, titleHeight, measure = approxMeasure, titleTextWidth = 0) {
  if (!b) return null;
  const font = FONT.main;
  const w = measure(b.text, font) + 16;
  const h = 24;
  const inTitle = titleHeight >= h + 4 && titleHeight + titleTextWidth + 12 + w + 6 <= nodeWidth;
  const x = inTitle ? nodeWidth - w - 6 : Math.max(0, nodeWidth - w);
  const y = inTitle ? -titleHeight + (titleHeight - h) / 2 : -titleHeight - h - 4;
  return {
    ops: [{ t: "rect", x, y, w, h, color: "#10141c" }, { t: "rect", x, y: y + h - 3, w, h: 3, color: b.color },
      { t: "text", x: x + 8, y: y + h - 7, text: b.text, font, color: b.color, align: "left" }],
    box: { x, y, w, h }, inTitle,
  };
}

/** Draw ops on a canvas 2-D context, shifted by (dx, dy). */
export function paint(ctx, ops, dx = 0, dy = 0) {
  ctx.save();
  for (const o of ops) {
    if (o.t === "rect") {
      ctx.fillStyle = o.color;
      ctx.fillRect(dx + o.x, dy + o.y, o.w, o.h);
    } else if (o.t === "text") {
      ctx.font = o.font;
      ctx.fillStyle = o.color;
      ctx.textAlign = o.align || "left";
      ctx.textBaseline = "alphabetic";
      ctx.fillText(o.text, dx + o.x, dy + o.y);
    }
  }
  ctx.restore();
}
