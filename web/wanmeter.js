// WanMeter web extension: the live VRAM/time/cost estimate, drawn on the WanMeter Estimator node,
// a compact badge on each sampler's title, and each sampler's measured numbers after a run.
// Thin glue: ./estimate_logic.js (graph -> request, pure) and ./estimate_view.js (reply -> boxes
// and text, pure) are unit-tested; this file reads the graph, POSTs to /wanmeter/estimate
// (debounced) and paints.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";
import {
  ESTIMATOR_TYPE, LOADER_TYPE, DEBOUNCE_MS, debounce, estimateRequest, fitWarning, graphKey, isSamplerType,
} from "./estimate_logic.js";
import { MeasuredStore, badge, estimateFor, layoutBadge, layoutEstimate, measuredLines, paint } from "./estimate_view.js";

const MIN_WIDTH = 400;
const state = { lastKey: "", lastReply: null, inFlight: 0, version: -1, measured: new MeasuredStore(), seq: 0,
  samplerId: null };

function nodesOf(graph) {
  return (graph && (graph._nodes || graph.nodes)) || [];
}

function typeOf(n) {
  return n.comfyClass || n.type;
}

function linkOf(graph, id) {
  if (id === null || id === undefined || !graph) return null;
  const links = graph.links || graph._links;
  if (!links) return null;
  return typeof links.get === "function" ? links.get(id) : links[id];
}

/** The open workflow, for measured state: the graph's id (saved in the workflow file). */
function workflowKey() {
  const g = app.graph;
  return (g && (g.id || (g.extra && g.extra.wanmeterKey))) || "";
}

function samplerIds() {
  return nodesOf(app.graph).filter((n) => isSamplerType(typeOf(n)) && n.mode !== 2 && n.mode !== 4).map((n) => n.id);
}


function titleHeight() {
  return (globalThis.LiteGraph && LiteGraph.NODE_TITLE_HEIGHT) || 30;
}

/** The y (node space) below the node's own widgets, where the view starts. */
function widgetsBottom(node) {
  const H = (globalThis.LiteGraph && LiteGraph.NODE_WIDGET_HEIGHT) || 20;
  let bottom = 0;
  let n = 0;
  for (const w of node.widgets || []) {
    if (w.name === "measured") continue;
    n += 1;
    const y = typeof w.last_y === "number" ? w.last_y : w.y;
    const h = w.computeSize ? w.computeSize(node.size[0])[1] : H;
    if (typeof y === "number") bottom = Math.max(bottom, y + h);
  }
  if (bottom > 0) return bottom + 4;
  // Not drawn yet: slots (widgets' own input sockets do not take a row), then the widgets.
  const inputs = (node.inputs || []).filter((i) => !i.widget).length;
  const slots = Math.max(inputs, (node.outputs || []).length);
  return slots * H + n * (H + 4) + 10;
}

function measureWith(ctx) {
  return (text, font) => {
    ctx.font = font;
    return ctx.measureText(text).width;
  };
}

/** Measured lines of the open workflow's samplers, each against its own estimate. */
function measuredFor(reply) {
  const ids = samplerIds();
  const entries = state.measured.entries(workflowKey());
  const lines = [];
  for (const [id, stats] of entries) {
    const node = nodesOf(app.graph).find((n) => String(n.id) === id);
    const title = entries.length > 1 || ids.length > 1 ? (node && node.title) || `sampler ${id}` : "";
    lines.push(...measuredLines(stats, estimateFor(reply, id, ids), title));
  }
  return lines;
}

function drawEstimator(node, ctx) {
  if (node.flags && node.flags.collapsed) return;
  const top = widgetsBottom(node);
  const view = layoutEstimate(state.lastReply, node.size[0], {
    expanded: !!node.wanmeterExpanded, measured: measuredFor(state.lastReply), measure: measureWith(ctx),
  });
  paint(ctx, view.ops, 0, top);
  node.wanmeterView = { texts: view.texts, top, height: view.height, hits: view.hits };
  const want = Math.ceil(top + view.height);
  if (Math.abs(node.size[1] - want) > 1 || node.size[0] < MIN_WIDTH) {
    node.size[0] = Math.max(node.size[0], MIN_WIDTH);
    node.size[1] = want;
    node.setDirtyCanvas && node.setDirtyCanvas(true, true);
  }
}

function drawBadge(node, ctx) {
  if (node.flags && node.flags.collapsed) return;
  const b = badge(state.lastReply, node.id, samplerIds());
  node.wanmeterBadge = b ? b.text : "";
  if (!b) return;
  const measure = measureWith(ctx);
  const titleW = measure(node.title || "", `${(globalThis.LiteGraph && LiteGraph.NODE_TEXT_SIZE) || 14}px sans-serif`);
  const l = layoutBadge(b, node.size[0], titleHeight(), measure, titleW);
  paint(ctx, l.ops);
}

function drawFitWarning(node, ctx) {
  if (!node.wanmeterWarning || (node.flags && node.flags.collapsed)) return;
  ctx.save();
  ctx.fillStyle = "#ff6b6b";
  ctx.font = "bold 16px sans-serif";
  const text = `does not fit: ${node.wanmeterWarning}`;
  const maxW = node.size[0] - 12;
  const lines = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (ctx.measureText(line + word).width > maxW && line) {
      lines.push(line);
      line = "";
    }
    line += word + " ";
  }
  lines.push(line);
  // Above the title bar, not below the node: the nodes under a loader (the bundled workflows stack
  // the text encoder and VAE loaders there) are drawn over that space.
  let y = -titleHeight() - 6 - 18 * (lines.length - 1);
  for (const l of lines) {
    ctx.fillText(l, 6, y);
    y += 18;
  }
  ctx.restore();
}

function render() {
  const graph = app.graph;
  for (const n of nodesOf(graph)) {
    if (typeOf(n) === LOADER_TYPE) n.wanmeterWarning = state.lastReply ? fitWarning(state.lastReply) : "";
    if (isSamplerType(typeOf(n))) {
      const w = n.widgets && n.widgets.find((x) => x.name === "measured");
      if (w) {
        const m = state.measured.get(workflowKey(), n.id);
        w.value = measuredLines(m, estimateFor(state.lastReply, n.id, samplerIds())).join("\n");
      }
    }
  }
  graph && graph.setDirtyCanvas && graph.setDirtyCanvas(true, true);
  app.canvas && app.canvas.setDirty && app.canvas.setDirty(true, true);
}

async function refresh(force = false) {
  const graph = app.graph;
  if (!graph) return;
  // the graph is read on the server (one reader for every surface): send it as saved, draw the reply
  const wanted = nodesOf(graph).some((n) => typeOf(n) === ESTIMATOR_TYPE || isSamplerType(typeOf(n)));
  if (!wanted) return;
  const serialized = graph.serialize();
  const key = graphKey(serialized, state.samplerId);
  if (!force && key === state.lastKey) return;
  state.lastKey = key;
  const ticket = ++state.inFlight;
  let reply;
  try {
    const res = await api.fetchApi("/wanmeter/estimate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(estimateRequest(serialized, state.samplerId)),
    });
    reply = await res.json();
    if (!res.ok && !reply.error) reply = { error: `HTTP ${res.status}` };
  } catch (e) {
    reply = { error: `the estimate route did not answer (${e})` };
  }
  if (ticket !== state.inFlight) return; // a newer request superseded this one
  state.lastReply = reply;
  render();
}

const schedule = debounce(() => refresh(false), DEBOUNCE_MS);

function watchNode(node) {
  const touched = () => {
    if (isSamplerType(typeOf(node))) state.samplerId = node.id; // estimate the chain the user is editing
    schedule();
  };
  const orig = node.onWidgetChanged;
  node.onWidgetChanged = function (...args) {
    const r = orig ? orig.apply(this, args) : undefined;
    touched();
    return r;
  };
  for (const w of node.widgets || []) {
    const cb = w.callback;
    w.callback = function (...args) {
      const r = cb ? cb.apply(this, args) : undefined;
      touched();
      return r;
    };
  }
  schedule();
}

/** A read-only text widget (the sampler's measured numbers), kept out of the workflow and the prompt. */
function measuredWidget(node) {
  let w = node.widgets && node.widgets.find((x) => x.name === "measured");
  if (!w) {
    w = ComfyWidgets.STRING(node, "measured", ["STRING", { multiline: true }], app).widget;
    if (w.element) w.element.readOnly = true;
    // Display only. `serialize` keeps it out of the saved widgets_values; `options.serialize` keeps it
    // out of the API prompt (the frontend's graphToPrompt checks only that one). In the prompt the
    // text would change the node's cache key after every run and re-run the sampler for nothing.
    w.serialize = false;
    if (w.options) w.options.serialize = false;
    else w.options = { serialize: false };
  }
  return w;
}

app.registerExtension({
  name: "WanMeter.Estimate",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData && nodeData.name;
    if (name === ESTIMATOR_TYPE) {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = created ? created.apply(this, arguments) : undefined;
        this.size[0] = Math.max(this.size[0], MIN_WIDTH);
        return r;
      };
      const draw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx) {
        const r = draw ? draw.apply(this, arguments) : undefined;
        drawEstimator(this, ctx);
        return r;
      };
      const down = nodeType.prototype.onMouseDown;
      nodeType.prototype.onMouseDown = function (e, pos) {
        const v = this.wanmeterView;
        const h = v && v.hits && v.hits.details;
        if (h && pos && pos[0] >= h.x && pos[0] <= h.x + h.w && pos[1] >= v.top + h.y && pos[1] <= v.top + h.y + h.h) {
          this.wanmeterExpanded = !this.wanmeterExpanded;
          this.setDirtyCanvas && this.setDirtyCanvas(true, true);
          return true;
        }
        return down ? down.apply(this, arguments) : undefined;
      };
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        executed && executed.apply(this, arguments);
        if (message && message.wanmeter_estimate && message.wanmeter_estimate[0]) {
          state.lastReply = message.wanmeter_estimate[0];
        }
        render();
      };
    }
    if (isSamplerType(name)) {
      const draw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx) {
        const r = draw ? draw.apply(this, arguments) : undefined;
        drawBadge(this, ctx);
        return r;
      };
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        executed && executed.apply(this, arguments);
        const stats = message && message.wanmeter_stats && message.wanmeter_stats[0];
        if (stats) {
          state.measured.record(workflowKey(), this.id, stats);
          measuredWidget(this);
          render();
        }
      };
    }
    if (name === LOADER_TYPE) {
      const draw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx) {
        const r = draw ? draw.apply(this, arguments) : undefined;
        drawFitWarning(this, ctx);
        return r;
      };
    }
  },

  nodeCreated(node) {
    watchNode(node);
  },

  loadedGraphNode(node) {
    watchNode(node);
  },

  async beforeConfigureGraph() {
    // A workflow is being loaded: whatever was measured in it before is stale.
    state.measured.clear(workflowKey());
  },

  async afterConfigureGraph() {
    state.measured.clear(workflowKey());
    state.lastKey = "";
    state.lastReply = null;
    schedule();
  },

  async setup() {
    api.addEventListener("graphChanged", () => schedule());
    // Link changes and widget edits through converted inputs bump graph._version; a cheap poll
    // catches whatever the events miss (graphKey makes unchanged graphs free).
    setInterval(() => {
      const v = app.graph && app.graph._version;
      if (v !== undefined && v !== state.version) {
        state.version = v;
        schedule();
      }
    }, 500);
  },
});
