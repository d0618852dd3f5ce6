// Responsible Steering: loss graph on the Train Steering Vector node.
// Live points arrive while training runs (server event "responsible-steering.training-loss");
// the full history arrives with the node's result (ui.rs_loss). The graph is drawn under the
// node's widgets with plain canvas calls, so it works with any frontend version.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TRAIN_NODE = "RSTrainSteeringVector";
const LIVE_EVENT = "responsible-steering.training-loss";
const GRAPH_HEIGHT = 130;
const COLOURS = ["#E0A84F", "#C07BE0", "#5FBFE0", "#E05F5F"];

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

function drawGraph(node, ctx) {
  const series = node.rsLossSeries;
  if (!series || node.flags?.collapsed) return;
  const top = (node.computeSize?.()[1] ?? node.size[1] - GRAPH_HEIGHT) + 4;
  const left = 10;
  const width = node.size[0] - 20;
  const height = Math.max(40, node.size[1] - top - 10);
  const { lines, min, max, count } = lossPolylines(series, width, height - 14, true);
  ctx.save();
  ctx.fillStyle = "#18181c";
  ctx.fillRect(left, top, width, height);
  ctx.strokeStyle = "#555";
  ctx.strokeRect(left, top, width, height);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#bbb";
  if (Number.isFinite(min)) {
    ctx.fillText(`${max.toPrecision(3)}`, left + 3, top + 11);
    ctx.fillText(`${min.toPrecision(3)}  (${count} it)`, left + 3, top + height - 3);
  }
  let k = 0;
  for (const [name, points] of Object.entries(lines)) {
    const colour = COLOURS[k % COLOURS.length];
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(left + x, top + 7 + y) : ctx.moveTo(left + x, top + 7 + y)));
    ctx.stroke();
    ctx.fillStyle = colour;
    ctx.fillText(name, left + width - 40 * (k + 1), top + 11);
    k += 1;
  }
  ctx.restore();
}

function showSeries(node, series) {
  node.rsLossSeries = series;
  const needed = (node.computeSize?.()[1] ?? 0) + GRAPH_HEIGHT;
  if (node.size[1] < needed) node.setSize?.([node.size[0], needed]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "responsible-steering.training-loss-graph",
  async setup() {
    api.addEventListener(LIVE_EVENT, (event) => {
      const detail = event.detail ?? {};
      const node = findNode(detail.node);
      if (!node) return;
      const points = detail.points ?? {};
      const received = Math.max(0, ...Object.values(points).map((p) => p.length));
      // A new run starts with iteration == number of points received.
      const fresh = !node.rsLossSeries || detail.iteration <= received;
      const series = fresh ? {} : { ...node.rsLossSeries };
      for (const [name, values] of Object.entries(points)) series[name] = [...(series[name] ?? []), ...values];
      showSeries(node, series);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== TRAIN_NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const loss = message?.rs_loss?.[0];
      if (loss?.series) showSeries(this, loss.series);
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      try {
        drawGraph(this, ctx);
      } catch (error) {
        console.warn("responsible-steering: loss graph", error);
      }
      return result;
    };
  },
});
