"""Every example workflow, loaded into the real frontends (headless Chromium, a 1280x720 window), shows
all of its nodes without overlaps, inside the part of the window the frontend's bars, side bar,
minimap and zoom controls leave free, at the view the workflow saves: on the pinned frontend, the
newest one, and the newest one with Vue nodes (Nodes 2.0), where the nodes' DOM boxes are checked."""
from __future__ import annotations

import os

import pytest

from devtools import node_sizes
from devtools.workflows import dit_workflow_paths, load_workflow, workflow_paths

WORKFLOWS = workflow_paths() + dit_workflow_paths()
CASES = {"pinned": ("pinned", False), "newest": ("newest", False), "newest-vue": ("newest", True)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(node_sizes.CHROMIUM is None, reason="no chromium on PATH (make setup installs it)"),
]


@pytest.fixture(scope="module", params=sorted(CASES))
def frontend(request):
    pytest.importorskip("playwright.sync_api")
    name, vue = CASES[request.param]
    root = node_sizes.FRONTENDS[name]
    assert root is None or os.path.isfile(os.path.join(root, "index.html")), \
        f"the newest frontend is not at {root}; run `make setup`"
    with node_sizes.open_frontend(root, settings={"Comfy.VueNodes.Enabled": vue}) as (page, _, _errors):
        # what covers the canvas, measured on the empty graph (the live window, not the sizes file)
        covered = node_sizes.cover_top_bars(
            page.evaluate(node_sizes.COVERED_JS, [*node_sizes.VIEWPORT, node_sizes.GRID]))
        yield page, vue, covered


LOAD_JS = """async ([workflow, vue]) => {
    await app.loadGraphData(workflow);
    const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    await frame();
    if (vue) {
        for (let i = 0; i < 100 && document.querySelectorAll('[data-node-id]').length < app.graph._nodes.length; i++)
            await new Promise(r => setTimeout(r, 50));
        await frame();
    }
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const [scale, ox, oy] = [app.canvas.ds.scale, app.canvas.ds.offset[0], app.canvas.ds.offset[1]];
    const canvas = app.canvas.canvas.getBoundingClientRect();
    return app.graph._nodes.map(n => {
        const box = [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
        const screen = [(box[0] + ox) * scale + canvas.left, (box[1] + oy) * scale + canvas.top,
                        (box[2] + ox) * scale + canvas.left, (box[3] + oy) * scale + canvas.top];
        const el = vue ? document.querySelector(`[data-node-id="${n.id}"]`) : null;
        const r = el ? el.getBoundingClientRect() : null;
        return {id: n.id, type: n.type, box, screen, dom: r ? [r.left, r.top, r.right, r.bottom] : null};
    });
}"""


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def layout_problems(page, workflow: dict, vue: bool, covered: list[list[int]]) -> list[str]:
    """What is wrong with the workflow's layout as this frontend shows it (empty: nothing)."""
    nodes = page.evaluate(LOAD_JS, [workflow, vue])
    problems = []
    key = "dom" if vue else "screen"
    if vue:
        problems += [f"node {n['id']} ({n['type']}) has no Vue element" for n in nodes if n["dom"] is None]
        nodes = [n for n in nodes if n["dom"] is not None]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if overlaps(a["box"], b["box"]):
                problems.append(f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap: "
                                f"{a['box']} / {b['box']}")
            if vue and overlaps(a["dom"], b["dom"]):
                problems.append(f"the Vue nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap: "
                                f"{a['dom']} / {b['dom']}")
    width, height = node_sizes.VIEWPORT
    step = node_sizes.GRID
    for n in nodes:
        x0, y0, x1, y1 = n[key]
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            problems.append(f"node {n['id']} ({n['type']}) is not inside the {width}x{height} window: {n[key]}")
            continue
        hidden = [(c * step + step / 2, r * step + step / 2) for r, row in enumerate(covered)
                  for c, v in enumerate(row) if v and x0 <= c * step + step / 2 <= x1 and y0 <= r * step + step / 2 <= y1]
        if hidden:
            problems.append(f"node {n['id']} ({n['type']}) at {[round(v) for v in n[key]]} is partly under the "
                            f"frontend's bars or controls (e.g. at {hidden[0]})")
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_shows_every_node_without_overlaps(frontend, path):
    page, vue, covered = frontend
    assert layout_problems(page, load_workflow(path), vue, covered) == []


def test_a_bad_layout_is_reported(frontend):
    """Two nodes at one place, and a node under the top bar, are found."""
    page, vue, covered = frontend
    workflow = load_workflow(WORKFLOWS[0])
    nodes = [n for n in workflow["nodes"] if n["type"] != "Note"]
    nodes[1]["pos"] = list(nodes[0]["pos"])
    workflow["extra"]["ds"] = {"scale": 1.0, "offset": [0, 0]}
    problems = layout_problems(page, workflow, vue, covered)
    assert any(f"nodes {nodes[0]['id']} " in p and "overlap" in p for p in problems), problems
    assert any("under the frontend's bars" in p or "not inside" in p for p in problems), problems
