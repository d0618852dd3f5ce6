"""Node sizes as the real frontends draw them, for laying out the example workflows.

    .venv/bin/python -m devtools.node_sizes [--force]

Measures, in headless Chromium, every node type the workflow specs use on the pinned frontend and on
the newest one (NEWEST_FRONTEND_DIR): the size a node gets when it is created (`LiteGraph.createNode`
after its widgets exist, and `computeSize()`), and on the newest one with Vue nodes the box of the
node's DOM element; the largest per dimension, the title height, and the parts of a 1280x720 window that the frontends' bars, side bar, minimap and zoom
controls leave free for the canvas. Writes devtools/node_sizes.json; without --force it measures only
when a node type is missing, a node's inputs changed or a frontend version changed.
The workflow build reads the file and needs no browser.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
from typing import Any, Callable, Iterator

from devtools.browser import CHROMIUM, app_page
from devtools.comfy_env import NEWEST_FRONTEND_DIR, REPO

SIZES_PATH = os.path.join(REPO, "devtools", "node_sizes.json")
FRONTENDS = {"pinned": None, "newest": NEWEST_FRONTEND_DIR}
VUE_NODES = {"Comfy.VueNodes.Enabled": True}
# measured: each frontend with LiteGraph nodes, and the newest with Vue nodes
MEASURED = [("pinned", False), ("newest", False), ("newest", True)]
VIEWPORT = (1280, 720)
GRID = 8  # px between the points that probe what covers the canvas
FRONTEND_ONLY = ("Note",)  # node types of the frontend itself (no Python schema)
# the Note's text is a textarea: its size is chosen by the layout from the text
# a first start shows the template browser over the canvas; a saved setting skips it
FIRST_RUN_SETTINGS = {"Comfy.TutorialCompleted": True}


class NodeSizesError(RuntimeError):
    """The sizes file does not cover the node types a workflow uses (or was measured for other inputs)."""


def frontend_version(root: str | None) -> str:
    return importlib.metadata.version("comfyui-frontend-package") if root is None \
        else os.path.basename(os.path.realpath(root))


def schema_digest(node_class: Callable[[str], Any], class_type: str) -> str:
    """What a node's drawn size depends on: its inputs (combo choices left out: they depend on the
    files present, not on the node) and outputs."""
    if class_type in FRONTEND_ONLY:
        return "frontend"
    cls = node_class(class_type)

    def strip(value):
        if isinstance(value, dict):  # V3 combos carry their choices as "options"
            return {k: strip(v) for k, v in value.items() if k != "options"}
        if isinstance(value, (list, tuple)):
            if value and isinstance(value[0], list):
                return ["COMBO", *strip(list(value[1:]))]
            return [strip(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

    described = {"input": strip(cls.INPUT_TYPES()), "output": strip(list(cls.RETURN_TYPES)),
                 "names": list(getattr(cls, "RETURN_NAMES", None) or [])}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def load(path: str = SIZES_PATH) -> dict:
    if not os.path.isfile(path):
        raise NodeSizesError(f"{path} does not exist; run `python -m devtools.node_sizes` (needs Chromium)")
    with open(path) as f:
        return json.load(f)


def check(sizes: dict, types: set[str], node_class: Callable[[str], Any]) -> None:
    """NodeSizesError naming the node types the sizes file lacks or measured with other inputs."""
    missing = sorted(t for t in types if t not in sizes["nodes"])
    changed = sorted(t for t in types if t in sizes["nodes"]
                     and sizes["nodes"][t]["schema"] != schema_digest(node_class, t))
    if missing or changed:
        parts = ([f"no size for node types {missing}"] if missing else []) + \
                ([f"node types whose inputs changed since they were measured: {changed}"] if changed else [])
        raise NodeSizesError(f"devtools/node_sizes.json: {'; '.join(parts)}; run `python -m devtools.node_sizes` "
                             f"(measures them in Chromium) or `make workflows`")


# ---------------------------------------------------------------------------- the browser

@contextlib.contextmanager
def open_frontend(root: str | None, settings: dict | None = None, viewport=VIEWPORT,
                  prepare: Callable[[Any], None] | None = None) -> Iterator[tuple]:
    """A real ComfyUI server (serving the frontend at root, None = the pinned one) with the pack, and a
    headless Chromium page on it with the app loaded: yields (page, server, page errors). `prepare(server)`
    runs before the server starts (e.g. to put models in its folders)."""
    from devtools.server import ComfyServer

    if CHROMIUM is None:
        raise NodeSizesError("no chromium on PATH (make setup installs it)")
    base = tempfile.mkdtemp(prefix="rs-frontend-")
    os.makedirs(os.path.join(base, "user", "default"), exist_ok=True)   # the server's user directory
    with open(os.path.join(base, "user", "default", "comfy.settings.json"), "w") as f:
        json.dump({**FIRST_RUN_SETTINGS, **(settings or {})}, f)
    server = ComfyServer(base, front_end_root=root)
    if prepare is not None:
        prepare(server)
    with server, app_page(server.url, viewport) as (page, errors):
        page.wait_for_function("() => window.app.extensions.length > 0", timeout=60_000)
        # without a saved workflow the frontend opens its default graph: start from an empty one
        page.evaluate("""async () => {
            app.graph.clear();
            app.canvas.setDirty(true, true);
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        }""")
        page.wait_for_timeout(1500)  # late UI (banners, tab bar) settles
        served = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
        if served != frontend_version(root):
            raise NodeSizesError(f"served frontend {served}, expected {frontend_version(root)}")
        yield page, server, errors


MEASURE_JS = """(types) => {
    const nodes = {};
    for (const type of types) {
        const node = LiteGraph.createNode(type);
        if (!node) { nodes[type] = null; continue; }
        app.graph.add(node);
        const computed = node.computeSize();
        nodes[type] = [Math.ceil(Math.max(node.size[0], computed[0])), Math.ceil(Math.max(node.size[1], computed[1]))];
        app.graph.remove(node);
    }
    return {nodes, title: LiteGraph.NODE_TITLE_HEIGHT};
}"""

# with Vue nodes (Nodes 2.0) a node is a DOM element whose box, title bar included, can be larger
MEASURE_VUE_JS = """async (types) => {
    const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const nodes = {};
    for (const type of types) {
        const node = LiteGraph.createNode(type);
        if (!node) { nodes[type] = null; continue; }
        app.graph.add(node);
        let el = null;
        for (let i = 0; i < 100 && !el; i++) {
            await frame();
            el = document.querySelector(`[data-node-id="${node.id}"]`);
        }
        await frame();
        if (!el) { nodes[type] = 'no Vue element'; app.graph.remove(node); continue; }
        const r = el.getBoundingClientRect(), scale = app.canvas.ds.scale;
        nodes[type] = [Math.ceil(r.width / scale), Math.ceil(r.height / scale - LiteGraph.NODE_TITLE_HEIGHT)];
        app.graph.remove(node);
    }
    return {nodes, title: LiteGraph.NODE_TITLE_HEIGHT};
}"""

# which probe points of the window show the graph canvas itself (anything else covers it)
COVERED_JS = """([width, height, step]) => {
    const canvas = app.canvas.canvas;
    const rows = [];
    for (let y = step / 2; y < height; y += step) {
        const row = [];
        for (let x = step / 2; x < width; x += step) row.push(document.elementFromPoint(x, y) === canvas ? 0 : 1);
        rows.push(row);
    }
    return rows;
}"""


def cover_top_bars(covered: list[list[int]]) -> list[list[int]]:
    """The probe grid with every row of the top quarter down to the lowest one that anything (right
    of the side bar) covers marked covered across the whole width: the top bars and the toolbars
    floating below them (whose width changes with the workflow's name) take those rows."""
    rows, cols = len(covered), len(covered[0])
    side = next((c for c in range(cols) if not covered[rows // 2][c]), cols)
    bars = [r for r in range(rows // 4) if any(covered[r][side:])]
    last = max(bars, default=-1)
    return [[1] * cols if r <= last else list(row) for r, row in enumerate(covered)]


def free_rects(covered: list[list[int]], step: int = GRID) -> list[list[int]]:
    """The maximal rectangles (x0, y0, x1, y1 in window px) of uncovered probe points (below the top
    bars, see cover_top_bars), keeping only those that no other one beats in both width and height."""
    covered = cover_top_bars(covered)
    rows, cols = len(covered), len(covered[0])
    found = set()
    for top in range(rows):
        free_cols = [True] * cols
        for bottom in range(top, rows):
            free_cols = [f and not covered[bottom][c] for c, f in enumerate(free_cols)]
            c = 0
            while c < cols:
                if not free_cols[c]:
                    c += 1
                    continue
                start = c
                while c < cols and free_cols[c]:
                    c += 1
                found.add((start * step, top * step, c * step, (bottom + 1) * step))
    best = []
    for r in found:
        w, h = r[2] - r[0], r[3] - r[1]
        if not any((o[2] - o[0] >= w and o[3] - o[1] >= h) and ((o[2] - o[0], o[3] - o[1]) != (w, h))
                   for o in found):
            best.append(list(r))
    # of equal-sized rectangles keep the top-left one
    unique = {}
    for r in sorted(best, key=lambda r: (r[1], r[0])):
        unique.setdefault((r[2] - r[0], r[3] - r[1]), r)
    return sorted(unique.values(), key=lambda r: (r[2] - r[0], r[3] - r[1]))


def measure(types: list[str]) -> dict:
    """Sizes on both frontends (larger per dimension), the title height and the free canvas areas."""
    result = {"frontends": {}, "nodes": {}, "title_height": 0, "viewport": list(VIEWPORT)}
    covered = None
    for name, vue in MEASURED:
        root = FRONTENDS[name]
        with open_frontend(root, settings=VUE_NODES if vue else None) as (page, _, _errors):
            grid = page.evaluate(COVERED_JS, [*VIEWPORT, GRID])   # before nodes (and their text areas) exist
            got = page.evaluate(MEASURE_VUE_JS if vue else MEASURE_JS, types)
        absent = sorted(t for t, s in got["nodes"].items() if not isinstance(s, list))
        if absent:
            raise NodeSizesError(f"the {name} frontend{' (Vue nodes)' if vue else ''} did not draw node types {absent}")
        print(f"{name}{' (Vue nodes)' if vue else ''}: {got['nodes']}")
        result["frontends"][name] = frontend_version(root)
        result["title_height"] = max(result["title_height"], got["title"])
        for t, (w, h) in got["nodes"].items():
            old = result["nodes"].get(t, [0, 0])
            result["nodes"][t] = [max(old[0], w), max(old[1], h)]
        covered = grid if covered is None else [[a | b for a, b in zip(r1, r2)] for r1, r2 in zip(covered, grid)]
    result["free_rects"] = free_rects(covered)
    return result


def used_node_types(node_class: Callable[[str], Any]) -> set[str]:
    from devtools.build_workflows import all_specs
    from devtools.workflow_builder import WorkflowBuilder

    types = set(FRONTEND_ONLY)
    for spec in all_specs():
        builder = WorkflowBuilder(node_class)
        spec.build(builder)
        types |= {n.type for n in builder.nodes}
    return types


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="measure even if the file is up to date")
    args = parser.parse_args(argv)
    from devtools.session import ComfySession

    session = ComfySession(tempfile.mkdtemp(prefix="rs-node-sizes-"))
    types = used_node_types(session.node_class)
    versions = {name: frontend_version(root) for name, root in FRONTENDS.items()}
    if not args.force and os.path.isfile(SIZES_PATH):
        sizes = load()
        try:
            check(sizes, types, session.node_class)
            if sizes.get("frontends") == versions:
                print(f"{SIZES_PATH} is up to date ({len(types)} node types)")
                return 0
        except NodeSizesError as e:
            print(e)
    measured = measure(sorted(types))
    out = {"frontends": measured["frontends"], "title_height": measured["title_height"],
           "viewport": measured["viewport"], "free_rects": measured["free_rects"],
           "nodes": {t: {"size": measured["nodes"][t], "schema": schema_digest(session.node_class, t)}
                     for t in sorted(types)}}
    with open(SIZES_PATH, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {SIZES_PATH} ({len(types)} node types)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
