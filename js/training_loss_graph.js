// Responsible Steering: loss graph on the Train Steering Vector node.
// Live points arrive while training runs (server event "responsible-steering.training-loss");
// the full history and the saved file's name arrive with the node's result (ui.rs_loss, ui.text).
// The graph is a DOM widget (a <canvas> and a line of text) added after the node's own widgets,
// so the frontend lays it out below them, both on the classic canvas and with Vue nodes
// ("Nodes 2.0"). It holds no value and is never serialized (prompts and saved workflows keep
// their widget order).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TRAIN_NODE = "RSTrainSteeringVector";
const LIVE_EVENT = "responsible-steering.training-loss";
export const WIDGET_NAME = "rs_loss_graph";
export const COLOURS = ["#E0A84F", "#C07BE0", "#5FBFE0", "#E05F5F"];
const GRAPH_HEIGHT = 120; // CSS px of the plot
const TEXT_HEIGHT = 16; // CSS px of the file-name line
const MARGIN = 10; // the frontend's default DOM-widget margin, on every side
const ELEMENT_HEIGHT = GRAPH_HEIGHT + TEXT_HEIGHT + 4;

// Pure helper (exported for tests): series -> polyline points inside a w x h box.
export function lossPolylines(series, width, height, logScale = true) {
  const transform = (v) => (logScale ? Math.log10(v) : v);
  const usable = (v) => Number.isFinite(v) && (!logScale || v > 0);
  const all = Object.values(series).flat().filter(usable).map(transform);
  if (all.length === 0) return { lines: {}, min: NaN, max: NaN };
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
  const n = Math.max(...Object.values(series).map((s) => s.length));
  const lines = {};
  for (const [name, values] of Object.entries(series)) {
    lines[name] = values
      .map((v, i) => [i, v])
      .filter(([, v]) => usable(v))
      .map(([i, v]) => [width * (n > 1 ? i / (n - 1) : 0.5), height * (1 - (transform(v) - lo) / (hi - lo))]);
  }
  return { lines, min: logScale ? 10 ** lo : lo, max: logScale ? 10 ** hi : hi, count: n };
}

function findNode(id) {
  const graph = app.graph;
  if (!graph || id === undefined || id === null) return null;
  return graph.getNodeById?.(Number(id)) ?? graph.getNodeById?.(id) ?? null;
}

// Draw the series into the canvas at its current CSS size (device pixels for a sharp line).
function drawGraph(canvas, series) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  const ratio = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = "#18181c";
  ctx.fillRect(0, 0, width, height);
  ctx.strokeStyle = "#555";
  ctx.lineWidth = 1;
  ctx.strokeRect(0.5, 0.5, width - 1, height - 1);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#bbb";
  const pad = 6;
  const { lines, min, max, count } = lossPolylines(series ?? {}, width - 2 * pad, height - 2 * pad - 14, true);
  if (!Number.isFinite(min)) {
    ctx.fillText("loss: no points yet", pad, height / 2 + 3);
    return;
  }
  ctx.fillText(`${max.toPrecision(3)}`, pad, pad + 8);
  ctx.fillText(`${min.toPrecision(3)}  (${count} it)`, pad, height - pad);
  let k = 0;
  for (const [name, points] of Object.entries(lines)) {
    const colour = COLOURS[k % COLOURS.length];
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.beginPath();
    const x0 = pad;
    const y0 = pad + 7;
    points.forEach(([x, y], i) => (i ? ctx.lineTo(x0 + x, y0 + y) : ctx.moveTo(x0 + x, y0 + y)));
    if (points.length === 1) ctx.lineTo(x0 + points[0][0] + 1, y0 + points[0][1]);
    ctx.stroke();
    ctx.fillStyle = colour;
    ctx.fillText(name, width - pad - 40 * (k + 1), pad + 8);
    k += 1;
  }
}

function createGraphWidget(node) {
  const element = document.createElement("div");
  element.className = "rs-loss-graph";
  Object.assign(element.style, {
    display: "flex", flexDirection: "column", gap: "4px", boxSizing: "border-box",
    minHeight: `${ELEMENT_HEIGHT}px`, overflow: "hidden",
  });
  const canvas = document.createElement("canvas");
  canvas.className = "rs-loss-graph-plot";
  Object.assign(canvas.style, { display: "block", width: "100%", flex: "1 1 0", minHeight: `${GRAPH_HEIGHT}px` });
  const label = document.createElement("div");
  label.className = "rs-loss-graph-file";
  Object.assign(label.style, {
    font: "11px sans-serif", lineHeight: `${TEXT_HEIGHT}px`, height: `${TEXT_HEIGHT}px`, color: "#ccc",
    whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis",
  });
  element.append(canvas, label);

  const state = { series: null, text: "" };
  const redraw = () => {
    try {
      drawGraph(canvas, state.series);
    } catch (error) {
      console.warn("responsible-steering: loss graph", error);
    }
  };
  const widget = node.addDOMWidget(WIDGET_NAME, "rs_loss_graph", element, {
    serialize: false,
    hideOnZoom: false,
    hideInPanel: true,
    margin: MARGIN,
    surfaces: { canvas: "shown", vueNode: "shown", panel: "never" }, // newer frontends; others ignore it
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => ELEMENT_HEIGHT + 2 * MARGIN,
  });
  widget.serialize = false;
  widget.serializeValue = () => undefined;
  new ResizeObserver(redraw).observe(canvas);
  widget.rsShow = (series, text) => {
    state.series = series;
    if (text !== undefined) {
      state.text = text;
      label.textContent = text;
      label.title = text;
    }
    redraw();
  };
  widget.rsState = state;
  return widget;
}

function graphWidget(node) {
  return node.widgets?.find((w) => w.name === WIDGET_NAME) ?? null;
}

// Make the node tall enough for its widgets and the graph (workflows saved before it existed).
function fitNode(node) {
  const needed = node.computeSize?.();
  if (needed && node.size[1] < needed[1]) node.setSize?.([Math.max(node.size[0], needed[0]), needed[1]]);
  node.setDirtyCanvas?.(true, true);
}

function show(node, series, text) {
  node.rsLossSeries = series;
  graphWidget(node)?.rsShow(series, text);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "responsible-steering.training-loss-graph",
  async setup() {
    api.addEventListener(LIVE_EVENT, (event) => {
      const detail = event.detail ?? {};
      const node = findNode(detail.node);
      if (!node || node.type !== TRAIN_NODE) return;
      const points = detail.points ?? {};
      const received = Math.max(0, ...Object.values(points).map((p) => p.length));
      // A new run starts with iteration == number of points received.
      const fresh = !node.rsLossSeries || detail.iteration <= received;
      const series = fresh ? {} : { ...node.rsLossSeries };
      for (const [name, values] of Object.entries(points)) series[name] = [...(series[name] ?? []), ...values];
      show(node, series, `training: iteration ${detail.iteration} / ${detail.total}`);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== TRAIN_NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      createGraphWidget(this);
      fitNode(this);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      fitNode(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const loss = message?.rs_loss?.[0];
      const text = message?.text?.[0] ?? (loss?.name ? `saved ${loss.name}` : undefined);
      if (loss?.series) show(this, loss.series, text);
      return result;
    };
  },
});
