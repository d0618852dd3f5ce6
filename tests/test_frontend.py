"""The real ComfyUI frontend (headless Chromium) with the pack loaded: our JS extension
runs, our node types are registered, and every example workflow loads by drag-and-drop
and turns into the same API prompt as our converter produces (so the workflows the
tests execute are the ones users get). Every test runs on two frontends: the one pinned
with ComfyUI 0.3.75 (requirements-dev.txt) and the newest comfyui-frontend-package on
PyPI (scripts/setup.sh unpacks it; served with --front-end-root)."""
from __future__ import annotations

import glob
import json
import os

import pytest

from devtools.browser import CHROMIUM
from devtools.comfy_env import REPO
from devtools.workflows import load_workflow, ui_to_api

WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "example_workflows", "*.json")) + glob.glob(os.path.join(REPO, "workflows", "real_model", "*.json"))
                   + glob.glob(os.path.join(REPO, "workflows", "dit", "*.json")))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs it via apt as root)"),
]


def normalise(prompt: dict) -> dict:
    """class_type and inputs of an API prompt, links as [str(node), slot]."""
    out = {}
    for node_id, node in prompt.items():
        inputs = {k: ([str(v[0]), int(v[1])] if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)
                      else v) for k, v in node["inputs"].items()}
        out[str(node_id)] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def test_extension_runs_and_nodes_are_registered(frontend):
    page, server, errors = frontend
    ours = sorted(k for k, v in server.object_info().items()
                  if v.get("python_module", "").endswith("responsible-steering"))
    state = page.evaluate("""(ours) => ({
        extension: app.extensions.some(e => e.name === 'responsible-steering.core'),
        missing: ours.filter(t => !LiteGraph.registered_node_types[t]),
        linkColour: LGraphCanvas.link_type_colors['STEERING_VECTOR'],
    })""", ours)
    assert ours, "no pack nodes in /object_info"
    assert state["extension"], "js/responsible_steering.js did not register its extension"
    assert state["missing"] == []
    assert state["linkColour"] and state["linkColour"].lower() == "#c07be0"
    assert not [e for e in errors if "responsible" in e.lower()], errors


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_loads_in_the_frontend_as_we_convert_it(frontend, path):
    page, server, _ = frontend
    workflow = load_workflow(path)
    result = page.evaluate("""async (workflow) => {
        await app.loadGraphData(workflow);
        const missing = app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
        const prompt = await app.graphToPrompt();
        return {missing, output: JSON.parse(JSON.stringify(prompt.output))};
    }""", workflow)
    assert result["missing"] == []
    info = server.object_info()
    expected = ui_to_api(workflow, lambda t: info[t]["input"])
    got = normalise(result["output"])
    for node in got.values():   # frontend-only widgets (e.g. PreviewAny's "preview") are not inputs
        spec = info[node["class_type"]]["input"]
        known = {*spec.get("required", {}), *spec.get("optional", {})}
        node["inputs"] = {k: v for k, v in node["inputs"].items() if k in known}
    assert got == normalise(expected), json.dumps(result["output"], indent=1)[:2000]


def test_training_node_shows_its_loss_history_in_a_widget(frontend):
    """The loss graph extension: Train Steering Vector gets a DOM widget after its own widgets that
    is never serialized; the node's result (ui.rs_loss, ui.text) becomes the widget's series and
    file-name line; the polyline maps the losses into the box."""
    page, _, errors = frontend
    state = page.evaluate("""async () => {
        const graph = await import('/extensions/responsible-steering/training_loss_graph.js');
        const node = LiteGraph.createNode('RSTrainSteeringVector');
        app.graph.add(node);
        const widget = node.widgets.find(w => w.name === graph.WIDGET_NAME);
        const last = node.widgets[node.widgets.length - 1] === widget;
        const values = node.serialize().widgets_values;
        node.onExecuted({rs_loss: [{name: 'v.safetensors', series: {loss: [1.0, 0.1, 0.01]}}],
                         text: ['saved v.safetensors']});
        const poly = graph.lossPolylines({loss: [1.0, 0.1, 0.01]}, 100, 50, true);
        const result = {last, serialized: values.length, widgets: node.widgets.length,
                        series: widget.rsState.series, text: widget.element.textContent,
                        fits: node.size[1] >= node.computeSize()[1], points: poly.lines.loss,
                        min: poly.min, max: poly.max};
        app.graph.remove(node);
        return result;
    }""")
    assert state["last"], "the graph widget is not below the node's own widgets"
    assert state["serialized"] == state["widgets"] - 1, "the graph widget is serialized into widgets_values"
    assert state["series"] == {"loss": [1.0, 0.1, 0.01]}
    assert state["text"] == "saved v.safetensors"
    assert state["fits"]
    assert state["points"] == [[0, 0], [50, 25], [100, 50]]
    assert abs(state["min"] - 0.01) < 1e-9 and abs(state["max"] - 1.0) < 1e-9
    assert not [e for e in errors if "loss graph" in e or "responsible" in e.lower()], errors
