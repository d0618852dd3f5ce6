"""Every example workflow in workflows/ runs on the tiny real checkpoint and makes images:
in-process through ComfyUI's executor, and through a real server's POST /prompt."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from devtools import build_workflows, workflows
from devtools.sd import keep
from devtools.server import ComfyServer
from devtools.workflow_builder import render_workflow
from devtools.workflows import load_workflow, ui_to_api

WORKFLOWS = workflows.workflow_paths()


def test_there_is_a_workflow_per_method():
    names = {os.path.basename(p) for p in WORKFLOWS}
    assert {"embedding_direction_sd15.json", "hspace_vector_sd15.json", "fair_sampling_sdisc_gender.json"} <= names


def test_committed_workflows_match_their_specs(comfy):
    for spec in build_workflows.all_specs():
        path = os.path.join(workflows.WORKFLOW_DIR, f"{spec.name}.json")
        assert open(path).read() == render_workflow(spec, comfy.node_class), f"{path} is stale: make workflows"


def test_a_run_gives_the_whole_list_of_a_list_output(comfy):
    """RunResult.outputs is every item of an output list; output is its first item."""
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    images = g.node("EmptyImage", width=8, height=8, batch_size=3, color=0)
    split = g.node("RebatchImages", id="split", images=images.out(0), batch_size=1)
    keep(g, split.out(0))
    result = comfy.run(g.finalize())
    parts = result.outputs("split", 0)
    assert [tuple(p.shape) for p in parts] == [(1, 8, 8, 3)] * 3
    assert result.output("split", 0) is parts[0]


def saved_images(comfy, ui_outputs: dict) -> list[str]:
    files = []
    for output in ui_outputs.values():
        for image in output.get("images", []):
            if image.get("type") == "output":
                files.append(os.path.join(comfy.output_dir, image["subfolder"], image["filename"]))
    return files


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_runs_in_process(comfy, path):
    workflow = load_workflow(path)
    prompt = workflows.tiny_profile(ui_to_api(workflow, comfy.input_spec), comfy.checkpoint_name)
    try:
        workflows.provide_reference_vectors(workflows.vector_files_needed(prompt), comfy.vector_dir)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    workflows.provide_safety_models(prompt, os.path.dirname(comfy.vector_dir))
    result = comfy.run(prompt)
    files = saved_images(comfy, result.ui)
    batch = max(n["inputs"].get("batch_size", 1) for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
    assert len(files) == batch
    for f in files:
        pixels = np.asarray(Image.open(f))
        assert pixels.shape == (128, 128, 3)
        assert pixels.std() > 1.0, f"{f} is a flat image"


def test_ui_conversion_matches_the_server_schema(comfy, tmp_path):
    """The same conversion with a real server's /object_info gives the same API prompt."""
    with ComfyServer(str(tmp_path / "server")) as server:
        info = server.object_info()
        for path in WORKFLOWS:
            workflow = load_workflow(path)
            assert ui_to_api(workflow, lambda t: info[t]["input"]) == ui_to_api(workflow, comfy.input_spec)


@pytest.mark.slow
def test_workflow_through_a_real_server(tmp_path, reference_vectors_dir):
    base = tmp_path / "server"
    with ComfyServer(str(base)) as server:
        info = server.object_info()
        ours = {k: v for k, v in info.items() if v.get("python_module", "").endswith("responsible-steering")}
        assert len(ours) >= 9 and all(v["category"].startswith("steering/") for v in ours.values())
        path = os.path.join(workflows.WORKFLOW_DIR, "fair_sampling_sdisc_gender.json")
        prompt = workflows.tiny_profile(ui_to_api(load_workflow(path), lambda t: info[t]["input"]),
                                              server.dirs["checkpoint_name"])
        workflows.provide_reference_vectors(workflows.vector_files_needed(prompt),
                                                  server.dirs["models/steering_vectors"])
        entry = server.run_prompt(prompt)
        images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
        assert len(images) == 4
        for image in images:
            assert os.path.isfile(os.path.join(base, "output", image["subfolder"], image["filename"]))
        assert json.dumps(entry["prompt"][2]) == json.dumps(prompt)
