"""The Train Steering Vector node's loss graph in the real frontend (headless Chromium), on the
pinned and the newest frontend, with the classic canvas and with Vue nodes ("Nodes 2.0"): a real
training run queued from the page sends its loss through the websocket, and the node shows the
curve and the saved file's name in its own widget below the others - checked on a screenshot of
the node."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from devtools.browser import CHROMIUM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs it via apt as root)"),
]

CURVE = (0xE0, 0xA8, 0x4F)  # COLOURS[0] in js/training_loss_graph.js: the first series' line
TOLERANCE = 24  # per channel, for anti-aliasing and colour management
VIEWPORT = {"width": 1400, "height": 1300}
LIVE_EVENT = "responsible-steering.training-loss"

# The graph in the page: a checkpoint loader feeding Train Steering Vector, sized for the tiny
# checkpoint on a CPU (devtools.workflows.tiny_profile, with 3 iterations for several points).
BUILD_GRAPH = """async ({ckpt, saveName}) => {
    app.graph.clear();
    const loader = LiteGraph.createNode('CheckpointLoaderSimple');
    loader.pos = [40, 120];
    app.graph.add(loader);
    const node = LiteGraph.createNode('RSTrainSteeringVector');
    node.pos = [420, 120];
    app.graph.add(node);
    loader.widgets.find(w => w.name === 'ckpt_name').value = ckpt;
    loader.connect(0, node, 0);
    loader.connect(1, node, 1);
    const values = {iterations: 3, batch_size: 1, resolution: 64, rollout_steps: 2,
                    gradient_checkpointing: false, save_name: saveName};
    for (const [name, value] of Object.entries(values)) node.widgets.find(w => w.name === name).value = value;
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [0, 0];
    app.canvas.setDirty(true, true);
    window.rsLive = [];
    if (!window.rsLiveListening) {
        window.rsLiveListening = true;  // after the extension's own listener: sees the widget as updated
        window.comfyAPI.api.api.addEventListener('""" + LIVE_EVENT + """', (event) => {
            const n = app.graph.getNodeById(event.detail.node);
            const w = n?.widgets?.find(w => w.name === 'rs_loss_graph');
            window.rsLive.push({detail: event.detail, series: JSON.parse(JSON.stringify(w?.rsState?.series ?? null))});
        });
    }
    return String(node.id);
}"""

# Screen boxes (CSS px, [left, top, right, bottom]) of the node, the graph widget's element, its
# plot and text line, and every other widget of the node; the node's box from the canvas' ds
# transform (classic) or the Vue node's element.
GEOMETRY = """({id, vue}) => {
    const node = app.graph.getNodeById(id) ?? app.graph.getNodeById(Number(id));
    const graphWidget = node.widgets.find(w => w.name === 'rs_loss_graph');
    const el = graphWidget.element;
    const box = (r) => [r.left, r.top, r.right, r.bottom];
    const canvasRect = app.canvas.canvas.getBoundingClientRect();
    const {scale, offset} = app.canvas.ds;
    const toScreen = (x, y, w, h) => [canvasRect.left + (x + offset[0]) * scale, canvasRect.top + (y + offset[1]) * scale,
                                      canvasRect.left + (x + w + offset[0]) * scale, canvasRect.top + (y + h + offset[1]) * scale];
    let nodeBox, others;
    if (vue) {
        const nodeEl = document.querySelector(`.lg-node[data-node-id="${id}"]`);
        nodeBox = nodeEl ? box(nodeEl.getBoundingClientRect()) : null;
        others = nodeEl ? [...nodeEl.querySelectorAll('.lg-node-widget')].filter(e => !e.contains(el))
            .map(e => ({name: e.dataset.widgetName ?? e.textContent.trim().slice(0, 20), box: box(e.getBoundingClientRect())})) : [];
    } else {
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        nodeBox = toScreen(node.pos[0], node.pos[1] - title, node.size[0], node.size[1] + title);
        others = node.widgets.filter(w => w !== graphWidget && !w.hidden && w.y !== undefined).map(w => ({
            name: w.name,
            box: w.element ? box(w.element.getBoundingClientRect())
                           : toScreen(node.pos[0], node.pos[1] + w.y, node.size[0], w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT),
        }));
    }
    const plot = el.querySelector('canvas');
    const label = el.querySelector('.rs-loss-graph-file');
    const centre = (r) => document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
    const rect = el.getBoundingClientRect();
    return {
        node: nodeBox, widget: box(rect), plot: box(plot.getBoundingClientRect()), label: box(label.getBoundingClientRect()),
        others, text: label.textContent, shown: rect.width > 0 && rect.height > 0 && el.checkVisibility(),
        plotOnTop: el.contains(centre(plot.getBoundingClientRect())),
        labelOnTop: el.contains(centre(label.getBoundingClientRect())),
        series: JSON.parse(JSON.stringify(graphWidget.rsState.series)),
        serialized: node.serialize().widgets_values.length, widgetCount: node.widgets.length,
    };
}"""

# True once the graph widget is shown (in the Vue node, with Vue nodes) and the boxes have not
# moved for a few frames (Vue nodes settle their size after mounting).
WAIT_STABLE = """(args) => {
    const node = app.graph.getNodeById(args.id) ?? app.graph.getNodeById(Number(args.id));
    const el = node?.widgets?.find(w => w.name === 'rs_loss_graph')?.element;
    if (!el || !el.checkVisibility() || !(el.querySelector('canvas').width > 0)) return false;
    if (args.vue && !document.querySelector(`.lg-node[data-node-id="${args.id}"]`)?.contains(el)) return false;
    const g = (""" + GEOMETRY + """)(args);
    const key = JSON.stringify([g.node, g.widget, g.plot, g.label, g.others]);
    const last = window.rsLayout;
    window.rsLayout = {key, frames: last?.key === key ? last.frames + 1 : 0};
    return g.shown && window.rsLayout.frames >= 5;
}"""


def close_dialogs(page) -> None:
    """Close what the frontend opens over the canvas on a first visit (the templates dialog, which
    Escape does not close: its close button is the dialog's last visible button)."""
    visible = "[...document.querySelectorAll('.p-dialog')].some(d => d.checkVisibility())"
    for _ in range(3):
        if not page.evaluate(f"() => {visible}"):
            return
        page.locator(".p-dialog button:visible").last.click()
        try:
            page.wait_for_function(f"() => !({visible})", timeout=2_000)
        except Exception:  # another dialog, or the same one still closing: look again
            pass
    raise AssertionError("a dialog stays open over the canvas")


def set_vue_nodes(page, enabled: bool) -> bool:
    """Set Comfy.VueNodes.Enabled through the settings store (as the settings dialog does); returns the
    previous value."""
    previous = page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')")
    page.evaluate("async (on) => await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on)", enabled)
    return bool(previous)


def shot(page, args) -> tuple[dict, np.ndarray, tuple[float, float]]:
    """Geometry and a screenshot of the node's box (RGB pixels and its top-left corner on screen),
    taken once the layout is still and checked to be unchanged after the screenshot."""
    for _ in range(3):
        page.wait_for_function(WAIT_STABLE, arg=args, timeout=30_000)
        geo = page.evaluate(GEOMETRY, args)
        box = geo["node"]
        assert box is not None, "the node has no element on screen"
        left, top = max(0.0, box[0]), max(0.0, box[1])
        right, bottom = min(VIEWPORT["width"], box[2]), min(VIEWPORT["height"], box[3])
        assert right - left > 50 and bottom - top > 50, f"the node is off screen: {box}"
        png = page.screenshot(clip={"x": left, "y": top, "width": right - left, "height": bottom - top})
        if page.evaluate(GEOMETRY, args) == geo:
            return geo, np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int), (left, top)
    raise AssertionError("the node's layout keeps moving")


def region(pixels: np.ndarray, origin, box, inset: int = 2) -> np.ndarray:
    """The part of a screenshot inside a screen box (a few px inside its border)."""
    x0, y0 = int(round(box[0] - origin[0])) + inset, int(round(box[1] - origin[1])) + inset
    x1, y1 = int(round(box[2] - origin[0])) - inset, int(round(box[3] - origin[1])) - inset
    return pixels[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]


def curve_columns(pixels: np.ndarray) -> np.ndarray:
    """Per column: whether a pixel there has the first series' colour."""
    close = (np.abs(pixels - np.array(CURVE)).max(axis=2) <= TOLERANCE)
    return close.any(axis=0)


def bright_pixels(pixels: np.ndarray) -> int:
    return int((pixels.mean(axis=2) > 140).sum())


def inside(inner, outer, slack: float = 1.0) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


def intersects(a, b) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5


def check_layout(geo: dict) -> None:
    assert inside(geo["widget"], geo["node"]), f"graph widget {geo['widget']} outside the node {geo['node']}"
    assert inside(geo["plot"], geo["widget"]) and inside(geo["label"], geo["widget"]), geo
    assert geo["others"], "the node's other widgets were not found"
    overlapping = [o["name"] for o in geo["others"] if intersects(o["box"], geo["widget"])]
    assert overlapping == [], f"the graph overlaps widgets {overlapping}: {geo}"
    assert geo["widget"][1] >= max(o["box"][3] for o in geo["others"]) - 1, "the graph is not below the widgets"
    assert geo["plotOnTop"] and geo["labelOnTop"], "something covers the graph or its text line"


# Both frontends, with Vue nodes ("Nodes 2.0") off and on.
@pytest.mark.parametrize("frontend, vue", [("pinned", False), ("pinned", True), ("newest", False), ("newest", True)],
                         ids=["pinned-classic", "pinned-vue_nodes", "newest-classic", "newest-vue_nodes"],
                         indirect=["frontend"],
                         scope="module")
def test_a_training_run_shows_its_loss_curve_and_saved_file_on_the_node(frontend, vue):
    page, server, errors = frontend
    close_dialogs(page)
    viewport = page.viewport_size
    page.set_viewport_size(VIEWPORT)
    previous = set_vue_nodes(page, vue)
    try:
        version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__").replace(".", "_")
        save_name = f"loss_graph_{version}_{'vue' if vue else 'classic'}"
        node_id = page.evaluate(BUILD_GRAPH, {"ckpt": server.dirs["checkpoint_name"], "saveName": save_name})
        args = {"id": node_id, "vue": vue}
        page.wait_for_function(WAIT_STABLE, arg=args, timeout=30_000)
        close_dialogs(page)
        before, pixels, origin = shot(page, args)
        check_layout(before)
        assert before["serialized"] == before["widgetCount"] - 1, "the graph widget is in widgets_values"
        assert not curve_columns(region(pixels, origin, before["plot"])).any(), "curve colour before any training"
        assert before["text"] == "" and bright_pixels(region(pixels, origin, before["label"], 0)) == 0

        with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as response:
            page.evaluate("async () => { await app.queuePrompt(0, 1); }")
        prompt_id = response.value.json()["prompt_id"]
        page.wait_for_function("(id) => (app.graph.getNodeById(id) ?? app.graph.getNodeById(Number(id)))"
                               ".widgets.find(w => w.name === 'rs_loss_graph').rsState.text.startsWith('saved ')",
                               arg=node_id, timeout=150_000)
        entry = server.get(f"/history/{prompt_id}")[prompt_id]
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert "rs_loss_graph" not in entry["prompt"][2][node_id]["inputs"], "the graph widget went into the prompt"
        shown = entry["outputs"][node_id]
        filename = shown["rs_loss"][0]["name"]
        history = shown["rs_loss"][0]["series"]
        assert filename.startswith(save_name) and shown["text"] == [f"saved {filename}"]
        assert [len(v) for v in history.values()] == [3], history

        live = page.evaluate("() => window.rsLive")
        assert live and all(str(e["detail"]["node"]) == node_id for e in live), live
        assert live[-1]["detail"]["iteration"] == 3 and live[-1]["series"] == history, \
            "the live points (websocket) did not build the same curve as the result"

        after, pixels, origin = shot(page, args)
        check_layout(after)
        assert after["series"] == history
        assert after["text"] == f"saved {filename}"
        columns = curve_columns(region(pixels, origin, after["plot"]))
        assert columns.mean() > 0.6, \
            f"the curve covers {columns.mean():.0%} of the plot's width (colour {CURVE} +-{TOLERANCE})"
        assert bright_pixels(region(pixels, origin, after["label"], 0)) > 20, "the file name is not drawn"
        assert not [e for e in errors if "responsible" in e.lower() or "loss graph" in e], errors
    finally:
        set_vue_nodes(page, previous)
        page.evaluate("() => app.graph.clear()")
        page.set_viewport_size(viewport)
