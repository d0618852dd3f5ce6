"""Every example workflow is what its spec makes and runs on the tiny real checkpoint: the real-model copies in
workflows/real_model/ with the tiny profile turn into exactly the templates in example_workflows/, which run
through a real server's POST /prompt here and as opened from the UI in tests/test_run_from_ui.py (which also
checks their images)."""
from __future__ import annotations

import json
import os

import pytest

from devtools import build_workflows, node_sizes, workflows
from devtools.sd import keep
from devtools.server import ComfyServer
from devtools.workflow_builder import SD15_CHECKPOINT, render_workflow
from devtools.workflows import load_workflow, ui_to_api

WORKFLOWS = workflows.workflow_paths()
TEMPLATES = workflows.template_paths()
PAIRS = [(template, real) for _, template, real in build_workflows.copies() if template and real]  # CPU template, real copy


def test_there_is_a_workflow_per_method():
    names = {os.path.basename(real) for _, real in PAIRS}
    assert {"embedding_direction_sd15.json", "hspace_vector_sd15.json", "fair_sampling_sdisc_gender.json"} <= names
    assert sorted(TEMPLATES) == sorted(t for _, t, _ in build_workflows.copies() if t)
    numbers = [os.path.basename(t).split(" ")[0] for t in TEMPLATES]
    assert numbers == [f"{i:02d}" for i in range(1, len(TEMPLATES) + 1)], numbers
    for template, real in PAIRS:
        assert workflows.spec_name(load_workflow(template)) == os.path.basename(real)[:-5]


def test_committed_workflows_match_their_specs(comfy):
    files = build_workflows.outputs(comfy.node_class)
    for path, text in files.items():
        assert os.path.exists(path) and open(path).read() == text, f"{path} is stale: make workflows"
    assert build_workflows.stale_files(files) == []


def test_the_build_removes_only_workflows_without_a_spec(tmp_path, monkeypatch):
    """Thumbnails (and any other non-JSON file) beside the templates are kept."""
    examples, real, dit = tmp_path / "example_workflows", tmp_path / "real_model", tmp_path / "dit"
    examples.mkdir(), real.mkdir(), dit.mkdir()
    for path in (examples / "01 Kept.json", examples / "02 Gone.json", examples / "02 Gone.jpg",
                 examples / "01 Kept.jpg", real / "gone.json", real / "kept.json", dit / "gone.json", dit / "kept.json"):
        path.write_text("{}")
    monkeypatch.setattr(build_workflows, "EXAMPLE_DIR", str(examples))
    monkeypatch.setattr(build_workflows, "WORKFLOW_DIR", str(real))
    monkeypatch.setattr(build_workflows, "DIT_DIR", str(dit))
    produced = {str(examples / "01 Kept.json"): "", str(real / "kept.json"): "", str(dit / "kept.json"): ""}
    assert build_workflows.stale_files(produced) == [str(dit / "gone.json"), str(examples / "02 Gone.json"),
                                                      str(real / "gone.json")]


def test_the_build_names_node_types_without_a_measured_size(comfy):
    sizes = node_sizes.load()
    spec = next(s for s, template, real in build_workflows.copies()
                if template and real and "\"type\": \"KSampler\"" in open(real).read())
    del sizes["nodes"]["KSampler"]
    sizes["nodes"]["VAEDecode"]["schema"] = "measured-for-other-inputs"
    with pytest.raises(node_sizes.NodeSizesError, match=r"no size for node types \['KSampler'\].*\['VAEDecode'\]"):
        render_workflow(spec, comfy.node_class, "real", sizes)


def test_a_nodes_measured_size_does_not_depend_on_the_files_its_dropdown_lists(comfy):
    """Load Steering Vector lists the vector files present: a new file changes its choices, not its size
    (the sizes file stays valid whatever a session's folders hold)."""
    before = node_sizes.schema_digest(comfy.node_class, "RSLoadVector")
    path = os.path.join(comfy.vector_dir, "digest_probe.safetensors")
    vf = comfy.module("steering.vector_file")
    vf.save_vector(vf.load_vector(vf_path(comfy, "toyworld/codsma_safety.safetensors")), comfy.vector_dir,
                   "digest_probe", overwrite=True)
    try:
        assert "digest_probe.safetensors" in comfy.node_class("RSLoadVector").INPUT_TYPES()["required"][
            "vector_name"][1]["options"]
        assert node_sizes.schema_digest(comfy.node_class, "RSLoadVector") == before
    finally:
        os.remove(path)


def vf_path(comfy, name: str) -> str:
    return comfy.module("nodes.paths").vector_file_path(name)


def widget_inputs(path: str, comfy, class_type: str) -> list[dict]:
    prompt = ui_to_api(load_workflow(path), comfy.input_spec)
    return [n["inputs"] for n in prompt.values() if n["class_type"] == class_type]


@pytest.mark.parametrize("path,real", PAIRS, ids=[os.path.basename(p) for p, _ in PAIRS])
def test_templates_are_set_for_a_cpu_and_name_the_real_settings(comfy, path, real):
    assert [i["ckpt_name"] for i in widget_inputs(path, comfy, "CheckpointLoaderSimple")] == \
        [SD15_CHECKPOINT] * len(widget_inputs(real, comfy, "CheckpointLoaderSimple"))
    latents = widget_inputs(path, comfy, "EmptyLatentImage")
    assert latents and all(i["width"] == i["height"] == 128 for i in latents)
    assert all(i["width"] == i["height"] == 512 for i in widget_inputs(real, comfy, "EmptyLatentImage"))
    prompt = ui_to_api(load_workflow(path), comfy.input_spec)
    steps = [n["inputs"]["steps"] for n in prompt.values() if isinstance(n["inputs"].get("steps"), int)]
    assert steps and max(steps) <= 4
    real_prompt = ui_to_api(load_workflow(real), comfy.input_spec)
    assert min(n["inputs"]["steps"] for n in real_prompt.values() if isinstance(n["inputs"].get("steps"), int)) >= 30
    for train, real_train in zip(widget_inputs(path, comfy, "RSTrainSteeringVector"),
                                 widget_inputs(real, comfy, "RSTrainSteeringVector")):
        assert (train["iterations"], train["resolution"], train["gradient_checkpointing"]) == (1, 64, False)
        assert train["batch_size"] <= 2 and train["rollout_steps"] <= 2
        assert real_train["iterations"] >= 1000 and real_train["batch_size"] == 8
    note = next(n for n in load_workflow(path)["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert os.path.relpath(real, workflows.comfy_env.REPO) in note and "512 px latents" in note


@pytest.mark.parametrize("path,real", PAIRS, ids=[os.path.basename(p) for p, _ in PAIRS])
def test_the_tiny_profile_turns_the_real_copy_into_the_template(comfy, path, real):
    template = ui_to_api(load_workflow(path), comfy.input_spec)
    real = ui_to_api(load_workflow(real), comfy.input_spec)
    assert workflows.tiny_profile(real, SD15_CHECKPOINT) == template
    assert workflows.tiny_profile(template, SD15_CHECKPOINT) == template


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
