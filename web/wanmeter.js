// WanMeter web extension: the live VRAM/time/cost estimate on the WanMeter Estimator node.
// Thin glue around ./estimate_logic.js (pure, unit-tested): read the graph, POST the settings
// to /wanmeter/estimate (debounced), write the reply into read-only text widgets.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";
import {
  ESTIMATOR_TYPE, LOADER_TYPE, DEBOUNCE_MS, debounce, estimateRequest, fitWarning, formatEstimate, formatMeasured,
  graphKey, isSamplerType,
} from "./estimate_logic.js";

const state = { lastKey: "", lastReply: null, measured: null, inFlight: 0, version: -1, samplerId: null };

function nodesOf(graph) {
  return (graph && (graph._nodes || graph.nodes)) || [];
}

function linkOf(graph, id) {
  if (id === null || id === undefined || !graph) return null;
  const links = graph.links || graph._links;
  if (!links) return null;
  return typeof links.get === "function" ? links.get(id) : links[id];
}

function textWidget(node, name) {
  let w = node.widgets && node.widgets.find((x) => x.name === name);
  if (!w) {
    w = ComfyWidgets.STRING(node, name, ["STRING", { multiline: true }], app).widget;
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

function render() {
  const graph = app.graph;
  for (const n of nodesOf(graph)) {
    const type = n.comfyClass || n.type;
    if (type === ESTIMATOR_TYPE) {
      textWidget(n, "estimate").value = formatEstimate(state.lastReply, state.measured);
    } else if (type === LOADER_TYPE) {
      n.wanmeterWarning = state.lastReply ? fitWarning(state.lastReply) : "";
    }
  }
  graph && graph.setDirtyCanvas && graph.setDirtyCanvas(true, true);
  app.canvas && app.canvas.setDirty && app.canvas.setDirty(true, true);
}

async function refresh(force = false) {
  const graph = app.graph;
  if (!graph) return;
  const wanted = nodesOf(graph).some((n) => {
    const t = n.comfyClass || n.type;
    return t === ESTIMATOR_TYPE || isSamplerType(t);
  });
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
  const type = node.comfyClass || node.type;
  const touched = () => {
    if (isSamplerType(type)) state.samplerId = node.id; // estimate the chain the user is editing
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

app.registerExtension({
  name: "WanMeter.Estimate",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData && nodeData.name;
    if (name === ESTIMATOR_TYPE) {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = created ? created.apply(this, arguments) : undefined;
        textWidget(this, "estimate").value = formatEstimate(state.lastReply, state.measured);
        return r;
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
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        executed && executed.apply(this, arguments);
        const stats = message && message.wanmeter_stats && message.wanmeter_stats[0];
        if (stats) {
          state.measured = stats;
          textWidget(this, "measured").value = formatMeasured(stats, state.lastReply).join("\n");
          render();
        }
      };
    }
    if (name === LOADER_TYPE) {
      const draw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx) {
        const r = draw ? draw.apply(this, arguments) : undefined;
        if (this.wanmeterWarning && !(this.flags && this.flags.collapsed)) {
          ctx.save();
          ctx.fillStyle = "#ff6b6b";
          ctx.font = "12px sans-serif";
          const text = `does not fit: ${this.wanmeterWarning}`;
          const maxW = this.size[0] - 12;
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
          // Above the title bar, not below the node: the nodes under a loader (the bundled
          // workflows stack the text encoder and VAE loaders there) are drawn over that space.
          const titleH = (globalThis.LiteGraph && LiteGraph.NODE_TITLE_HEIGHT) || 30;
          let y = -titleH - 6 - 14 * (lines.length - 1);
          for (const l of lines) {
            ctx.fillText(l, 6, y);
            y += 14;
          }
          ctx.restore();
        }
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

  async afterConfigureGraph() {
    state.lastKey = "";
    schedule();
  },

  async setup() {
    api.addEventListener("graphChanged", () => schedule());
    // Link changes and widget edits through converted inputs bump graph._version; a cheap poll
    // catches whatever the events miss (settingsKey makes unchanged graphs free).
    setInterval(() => {
      const v = app.graph && app.graph._version;
      if (v !== undefined && v !== state.version) {
        state.version = v;
        schedule();
      }
    }, 500);
  },
});
