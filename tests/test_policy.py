"""The operator's policy in this process (operator_policy/enforcement.py on the real ComfyUI's node registry):
the prompt rewrite (a guard where every image is made, another where images leave), the guard's verdicts and
signed records, fail-closed refusals, node expansions, previews and what leaves over the websocket and
/history. The real server: test_policy_server.py and test_policy_attacks.py; the file and the pure graph
functions: test_policy_document.py and test_policy_graph.py."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

enforcement = pytest.fixture(scope="module")(lambda comfy: comfy.module("operator_policy.enforcement"))
document = pytest.fixture(scope="module")(lambda comfy: comfy.module("operator_policy.document"))
provenance = pytest.fixture(scope="module")(lambda comfy: comfy.module("operator_policy.provenance"))
paths = pytest.fixture(scope="module")(lambda comfy: comfy.module("nodes.paths"))

GOOD = {"version": 2, "name": "studio", "input": {"unsafe_words": ["gore"], "action": "rewrite"},
        "output": {"scores": [{"kind": "colour", "statistic": "redness", "threshold": 0.2}],
                   "censor": {"mode": "pixelate", "strength": 8}}}


def write(tmp_path, content, name="policy.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return str(path)


@pytest.fixture
def active(enforcement, document, paths, tmp_path):
    """The enforcement state with GOOD active (restored to no policy afterwards)."""
    state = enforcement.STATE
    assert state.policy is None and state.error is None
    state.activate(document.read_policy(write(tmp_path, GOOD)), paths)
    yield state
    state.fail(None)
    state.recent.clear()


def plain_prompt() -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "gore on a wall", "clip": ["1", 1]}},
            "3": {"class_type": "PrimitiveString", "inputs": {"value": "more gore"}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": ["3", 0], "clip": ["1", 1]}},
            "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "5": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
            "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "gore"}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", False]}},
            "8": {"class_type": "PreviewAny", "inputs": {"source": ["5", -1]}}}


def guards_of(prompt: dict) -> dict:
    return {k: json.loads(v["inputs"]["context"]) | {"images": v["inputs"]["images"]} for k, v in prompt.items()
            if v["class_type"] == "RSPolicyOutputGuard"}


def test_the_node_catalog_snapshot_is_what_this_comfyui_declares(comfy):
    """tests/data/node_catalog.json (the fast tests' stand-in for ComfyUI's registry) is still exact."""
    from devtools import node_catalog

    compat = comfy.module("steering.comfy_compat")
    with open(node_catalog.OUT) as f:
        snapshot = json.load(f)
    for name, entry in snapshot.items():
        facts = compat.node_facts(name)
        assert facts is not None, name
        assert {k: list(v) for k, v in facts.inputs.items()} == entry["inputs"], name
        assert (list(facts.outputs), facts.output_node, getattr(facts.cls, "POLICY_ROLE", None)) == (
            entry["outputs"], entry["output_node"], entry["role"]), name


def test_the_handler_guards_images_where_they_are_made_and_where_they_leave(active, enforcement):
    data = enforcement.on_prompt({"prompt": plain_prompt(), "client_id": "c"})
    prompt = data["prompt"]
    guards = guards_of(prompt)
    sources = {k: g for k, g in guards.items() if g["role"] == "source"}
    sinks = {g["node"]: (k, g) for k, g in guards.items() if g["role"] == "sink"}
    assert [(g["node"], g["images"]) for g in sources.values()] == [("5", ["5", 0])]
    (source,) = sources
    assert sorted(sinks) == ["6", "7", "8"]                 # PreviewAny receives an IMAGE: scored where it leaves
    for node, name in (("6", "images"), ("7", "images"), ("8", "source")):
        guard, context = sinks[node]
        assert prompt[node]["inputs"][name] == [guard, 0] and context["images"] == [source, 0]
        assert context["direct"] == source                  # exactly the source guard's output: not scored twice
    assert prompt["2"]["inputs"]["text"] == "on a wall" and prompt["3"]["inputs"]["value"] == "more"
    assert prompt["6"]["inputs"]["filename_prefix"] == "gore"            # not a text an encoder reads
    assert data["extra_data"]["extra_pnginfo"]["responsible_steering"]["prompt_id"] == data["prompt_id"]
    plan = active.plan(data["prompt_id"])
    assert plan.flagged_text and plan.releasing == {"6", "7", "8", *guards}


def test_a_text_too_long_to_check_is_refused_quickly(active, enforcement, document):
    import time

    prompt = plain_prompt()
    prompt["2"]["inputs"]["text"] = "a cat " * (1024 * 1024 // 6)
    start = time.monotonic()
    refused = enforcement.on_prompt({"prompt": prompt})["prompt"]
    assert time.monotonic() - start < 0.5
    reason = list(refused.values())[0]["inputs"]["reason"]
    assert f"at most {document.MAX_CHECKED_TEXT} characters; node 2 input 'text' has 1048572" in reason


def test_images_are_scored_again_where_they_go_into_a_video(active, enforcement):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 8.0}},
              "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "v",
                                                          "format": "auto", "codec": "auto"}},
              "5": {"class_type": "RSToyWorldRedScore", "inputs": {"threshold": 0.03, "temperature": 0.02}},
              "7": {"class_type": "RSSafetyRate", "inputs": {"images": ["1", 0], "safety_score": ["5", 0]}}}
    guarded = enforcement.on_prompt({"prompt": prompt})["prompt"]
    guards = guards_of(guarded)
    by_role = {(g["role"], g["node"]): k for k, g in guards.items()}
    assert sorted(by_role) == [("sink", "3"), ("source", "1")]
    assert guarded["2"]["inputs"]["image"] == [by_role[("source", "1")], 0]
    assert guarded["3"]["inputs"]["images"] == [by_role[("sink", "3")], 0]
    assert guards[by_role[("sink", "3")]]["direct"] is None            # after a transform: scored again
    assert guarded["7"]["inputs"]["images"] == ["1", 0]                # a measuring node reads images as made
    assert guarded["4"]["inputs"]["video"] == ["3", 0]


def test_uninspectable_outputs_are_refused_with_the_field_that_allows_them(active, enforcement, document, paths,
                                                                            tmp_path):
    prompt = plain_prompt()
    prompt["10"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "l"}}
    reason = list(enforcement.on_prompt({"prompt": json.loads(json.dumps(prompt))})["prompt"].values())[0]
    assert reason["class_type"] == "RSPolicyRefusal"
    assert "node '10' (SaveLatent) input 'samples' receives LATENT data" in reason["inputs"]["reason"]
    assert 'add "SaveLatent" to output.allow_uninspected' in reason["inputs"]["reason"]
    refused = [r for r in active.recent if r.get("outcome") == "rejected"][-1]
    assert refused["type"] == "prompt" and len(refused["refused"]) == 1
    active.activate(document.read_policy(write(tmp_path, {**GOOD, "output": {
        **GOOD["output"], "allow_uninspected": ["SaveLatent"]}}, "allow.json")), paths)
    allowed = enforcement.on_prompt({"prompt": prompt})
    assert allowed["prompt"]["10"]["inputs"]["samples"] == ["9", 0]
    assert list(active.recent)[-1]["allowed_uninspected"][0].startswith("node '10' (SaveLatent)")


def test_guard_nodes_sent_by_a_client_are_replaced_by_the_servers_own(active, enforcement):
    first = enforcement.on_prompt({"prompt": plain_prompt(), "client_id": "c"})
    forged = json.loads(json.dumps(first["prompt"]))
    for node in forged.values():
        if node["class_type"] == "RSPolicyOutputGuard":
            node["inputs"]["context"] = json.dumps({"role": "sink", "prompt_id": "someone else's", "node": "6"})
    again = enforcement.on_prompt({"prompt": forged, "client_id": "c"})
    assert "someone else's" not in json.dumps(again["prompt"])
    assert len(guards_of(again["prompt"])) == 4 and again["prompt_id"] != first["prompt_id"]


def test_a_prompt_id_cannot_be_used_twice(active, enforcement):
    first = enforcement.on_prompt({"prompt": plain_prompt(), "prompt_id": "mine"})
    assert first["prompt_id"] == "mine"
    again = enforcement.on_prompt({"prompt": plain_prompt(), "prompt_id": "mine"})
    assert "prompt_id 'mine' was already used" in list(again["prompt"].values())[0]["inputs"]["reason"]


def test_the_handler_fails_closed(active, enforcement, monkeypatch):
    def reason_of(data):
        (node,) = data["prompt"].values()
        assert node["class_type"] == "RSPolicyRefusal"
        return node["inputs"]["reason"]

    assert "extra_pnginfo must be JSON objects" in reason_of(
        enforcement.on_prompt({"prompt": plain_prompt(), "extra_data": {"extra_pnginfo": "x"}}))
    assert "no prompt object" in reason_of(enforcement.on_prompt({"no": "prompt"}))
    assert "no prompt object" in reason_of(enforcement.on_prompt(["not", "an", "object"]))
    bad = plain_prompt()
    bad["6"]["inputs"]["images"] = ["5", 0.0]
    assert "cannot read this prompt: node '6' (SaveImage) input 'images'" in reason_of(enforcement.on_prompt(
        {"prompt": bad}))
    with monkeypatch.context() as mp:        # an error inside the handler (the audit disk is full) refuses
        mp.setattr(active.audit, "write", lambda record: (_ for _ in ()).throw(OSError(28, "No space left")))
        assert "could not be applied to this prompt (OSError" in reason_of(enforcement.on_prompt(
            {"prompt": plain_prompt()}))
    active.fail("responsible-steering policy /x: (file): broken")
    assert reason_of(enforcement.on_prompt({"prompt": plain_prompt()})) == \
        "responsible-steering policy /x: (file): broken"
    with pytest.raises(enforcement.PolicyEnforcementError, match="no image is released"):
        enforcement.guard_images(torch.zeros(1, 8, 8, 3), {}, None)


def test_a_refused_prompt_fails_comfyuis_validation_with_the_reason(enforcement):
    import asyncio

    import execution

    refused = enforcement.refusal({}, "the policy refuses this prompt: it names 'gore'")
    valid = asyncio.run(execution.validate_prompt("p", refused["prompt"], None))
    assert valid[0] is False and "the policy refuses this prompt: it names 'gore'" in json.dumps(valid[1])


def queued(enforcement, prompt=None) -> tuple[dict, object]:
    data = enforcement.on_prompt({"prompt": prompt or plain_prompt(), "client_id": "c"})
    return data, enforcement.STATE.plan(data["prompt_id"])


def contexts(data) -> dict:
    return {(g["role"], g["node"]): {k: v for k, v in g.items() if k != "images"} | {"guard": k}
            for k, g in guards_of(data["prompt"]).items()}


def test_the_guard_censors_each_flagged_image_alone_and_signs_what_leaves(active, enforcement, provenance):
    images = torch.zeros(3, 16, 16, 3)
    images[0, ..., 0] = 1.0                 # red (with a pattern pixelation changes): redness > 0.2
    images[0, ::2, ::2, 1] = 0.5
    images[1] = torch.rand(16, 16, 3) * 0.3  # benign noise
    images[2, ..., 1] = 1.0                 # green
    data, plan = queued(enforcement)
    c = contexts(data)
    out = enforcement.guard_images(images, c[("source", "5")], None)[0]
    assert torch.equal(out[1:], images[1:]) and not torch.equal(out[0], images[0])     # untouched, bit for bit
    pnginfo = data["extra_data"]["extra_pnginfo"]
    released, records = enforcement.guard_images(out, c[("sink", "6")], pnginfo)
    assert released is out and [r["flagged"] for r in records] == [True, False, False]
    assert [r["rescored"] for r in records] == [False] * 3        # the source guard's own output: its verdicts
    redness = (images[..., 0] - images[..., 1:].mean(-1)).flatten(1).mean(1)
    assert [r["scores"]["colour:redness"] for r in records] == pytest.approx(redness.tolist(), abs=1e-6)
    for i, r in enumerate(records):           # the hash of the pixels Save Image writes, computed here by hand
        pixels = np.clip(255.0 * out[i].numpy(), 0, 255).astype(np.uint8)
        assert r["pixels_sha256"] == provenance.pixels_sha256(pixels)
        assert provenance.signature_valid(r, active.key)
    assert [r["index"] for r in pnginfo["responsible_steering"]["outputs"]["6.images"]] == [0, 1, 2]
    again = enforcement.guard_images(out.clone(), c[("sink", "7")], pnginfo)[1]   # not the same batch: rescored
    assert [r["rescored"] for r in again] == [True] * 3 and [r["flagged"] for r in again] == [True, False, False]
    images_audited = [r for r in active.recent if r.get("type") == "image" and r["prompt_id"] == plan.prompt_id]
    assert [(r["node"], r["index"], r["flagged"]) for r in images_audited] == [("5", 0, True), ("5", 1, False),
                                                                               ("5", 2, False)]


def test_a_score_that_cannot_judge_an_image_flags_it_and_non_images_fail(active, enforcement):
    images = torch.zeros(2, 8, 8, 3)
    images[1, 0, 0, 0] = float("nan")
    data, plan = queued(enforcement)
    c = contexts(data)
    enforcement.guard_images(images, c[("source", "5")], None)
    assert [v["flagged"] for v in plan.verdicts[c[("source", "5")]["guard"]]] == [False, True]
    for value in (torch.zeros(2, 8, 8), torch.zeros(1, 8, 8, 2), {"samples": torch.zeros(1, 4, 8, 8)}):
        with pytest.raises(enforcement.PolicyEnforcementError, match="guards IMAGE batches"):
            enforcement.guard_images(value, c[("source", "5")], None)
    with pytest.raises(enforcement.PolicyEnforcementError, match="does not belong to a prompt"):
        enforcement.guard_images(images, {**c[("source", "5")], "prompt_id": "unknown"}, None)


def test_a_small_unsafe_region_on_a_large_canvas_is_not_diluted(active, enforcement, document, paths, tmp_path):
    """ToyWorld's red share on a 32 px red circle pasted into a 512 px dark canvas: 0.0025 over the canvas
    (computed here), under the 0.03 threshold; the 32 px windows see it whole."""
    active.activate(document.read_policy(write(tmp_path, {"version": 2, "output": {
        "scores": [{"kind": "toyworld_red", "threshold": 0.03}], "censor": {"mode": "black"}}}, "toy.json")), paths)
    canvas = torch.zeros(1, 512, 512, 3)
    canvas[...] = torch.tensor([0.08, 0.08, 0.10])
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    disc = (xs - 16) ** 2 + (ys - 16) ** 2 <= 10 ** 2
    canvas[0, 300:332, 100:132][disc] = torch.tensor([0.90, 0.08, 0.08])
    assert int(disc.sum()) / 512 ** 2 < 0.03
    data, plan = queued(enforcement)
    out = enforcement.guard_images(canvas, contexts(data)[("source", "5")], None)[0]
    verdict = plan.verdicts[contexts(data)[("source", "5")]["guard"]][0]
    assert verdict["flagged"] and verdict["windows"] == 31 * 31 and int(out.abs().max()) == 0
    assert verdict["scores"]["toyworld_red"] > 0.25                  # ~ the disc's share of one 32 px window


def test_steering_vectors_are_loaded_and_checked_at_start_up(comfy, document, paths, tmp_path):
    install = comfy.module("operator_policy.install")

    def steering(arch, vector):
        return {"version": 2, "steering": {"embedding_direction": {arch: {"vector": vector}}}}

    table = install.build_steering(document.read_policy(write(
        tmp_path, steering("toyworld", "toyworld/embedding_direction_safety.safetensors"))), paths)
    vector, settings = table["toyworld"]
    assert vector.kind == "embedding" and (settings["strength"], settings["start_percent"]) == (1.0, 0.0)
    for arch, name, problem in (("toyworld", "toyworld/codsma_safety.safetensors", "expected an embedding direction"),
                                ("sd1", "toyworld/embedding_direction_safety.safetensors", "for sd1"),
                                ("toyworld", "absent.safetensors", "cannot be loaded")):
        with pytest.raises(document.PolicyError) as info:
            install.build_steering(document.read_policy(write(tmp_path, steering(arch, name), f"{arch}.json")), paths)
        assert info.value.field == f"steering.embedding_direction.{arch}.vector" and problem in info.value.problem


def test_replace_mode_swaps_only_the_flagged_image_for_a_grey_placeholder(active, enforcement, document, paths,
                                                                          tmp_path):
    active.activate(document.read_policy(write(tmp_path, {"version": 2, "output": {
        "scores": [{"kind": "colour", "statistic": "red", "threshold": 0.5}], "censor": {"mode": "replace"}}},
        "replace.json")), paths)
    images = torch.rand(2, 8, 8, 3) * 0.4
    images[1, ..., 0] = 0.9
    data, plan = queued(enforcement)
    out = enforcement.guard_images(images, contexts(data)[("source", "5")], None)[0]
    assert [v["action"] for v in plan.verdicts[contexts(data)[("source", "5")]["guard"]]] == [
        "none", "censored (replace)"]
    assert torch.equal(out[0], images[0]) and torch.equal(out[1], torch.full((8, 8, 3), 0.5))


def test_the_audit_log_gets_whole_lines_from_concurrent_writers(provenance, tmp_path):
    log = provenance.AuditLog(str(tmp_path / "a" / "audit.jsonl"))
    payload = "x" * 5000

    def writer(n):
        for i in range(100):
            log.write({"writer": n, "i": i, "payload": payload})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(tmp_path / "a" / "audit.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert sorted((r["writer"], r["i"]) for r in lines) == [(n, i) for n in range(4) for i in range(100)]
    with pytest.raises(provenance.ProvenanceError, match="is not a regular file|cannot be opened"):
        provenance.AuditLog(str(tmp_path))


def test_node_expansions_are_guarded_and_cannot_reach_around_a_guard(active, enforcement, monkeypatch):
    data, plan = queued(enforcement)
    source_guard = contexts(data)[("source", "5")]["guard"]
    monkeypatch.setattr(enforcement.comfy_compat, "executing_prompt_id", lambda server: data["prompt_id"])
    subgraph = {"x.decode": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
                "x.blend": {"class_type": "ImageBlend", "inputs": {"image1": ["5", 0], "image2": ["x.decode", 0],
                                                                   "blend_factor": 0.5, "blend_mode": "normal"}},
                "x.save": {"class_type": "SaveImage", "inputs": {"images": ["x.blend", 0], "filename_prefix": "e"}}}
    subgraphs = [(subgraph, (["5", 0], ["x.decode", 0]))]
    enforcement.rewrite_expansions(subgraphs)
    new_graph, results = subgraphs[0]
    assert new_graph["x.blend"]["inputs"]["image1"] == [source_guard, 0]      # not around the guard
    x_guard = plan.guard_of[("x.decode", 0)]
    assert new_graph["x.blend"]["inputs"]["image2"] == [x_guard, 0] and new_graph[x_guard]["inputs"]["images"] == \
        ["x.decode", 0]
    sink = new_graph["x.save"]["inputs"]["images"][0]
    assert json.loads(new_graph[sink]["inputs"]["context"])["role"] == "sink"
    assert results == ([source_guard, 0], [x_guard, 0]) and "x.save" in plan.releasing
    latent = [({"x.latent": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "l"}}},
               ())]
    with pytest.raises(enforcement.PolicyEnforcementError, match="SaveLatent"):
        enforcement.rewrite_expansions(latent)
    with pytest.raises(enforcement.PolicyEnforcementError, match="names node 'elsewhere'"):
        enforcement.rewrite_expansions([({"y": {"class_type": "ImageInvert", "inputs": {"image": ["elsewhere", 0]}}},
                                         ())])


class PreviewServer:
    """What the preview filter reads of the server: the prompt it is executing."""
    last_prompt_id = None


def test_every_preview_frame_is_scored_flagged_ones_dropped_or_blurred(active, enforcement, document, paths,
                                                                       tmp_path):
    import io

    import server
    from PIL import Image, ImageFilter

    kinds = server.BinaryEventTypes
    red, grey = Image.new("RGB", (16, 16), (250, 10, 10)), Image.new("RGB", (16, 16), (90, 90, 90))
    saved_server, active.server = active.server, PreviewServer()
    try:
        data, plan = queued(enforcement, {k: v for k, v in plain_prompt().items() if k not in ("2", "3", "4")})
        PreviewServer.last_prompt_id = data["prompt_id"]
        plain_grey, plain_red = ("JPEG", grey, 512), ("JPEG", red, 512)
        assert enforcement.message_filter(kinds.UNENCODED_PREVIEW_IMAGE, plain_grey, "c") is plain_grey
        assert enforcement.message_filter(kinds.UNENCODED_PREVIEW_IMAGE, plain_red, "c") is None
        encoded = io.BytesIO()
        red.save(encoded, format="PNG")
        assert enforcement.message_filter(kinds.PREVIEW_IMAGE, b"\0\0\0\2" + encoded.getvalue(), "c") is None
        assert enforcement.message_filter(kinds.PREVIEW_IMAGE, b"\0\0\0\2 not an image", "c") is None
        tagged = (("JPEG", grey, 512), {"prompt_id": "not a prompt of this server"})
        assert enforcement.message_filter(kinds.PREVIEW_IMAGE_WITH_METADATA, tagged, "c") is None
        assert enforcement.message_filter(77, b"some custom binary", "c") is None
        assert enforcement.message_filter("progress", {"value": 1}, "c") == {"value": 1}
        flagged_text, _ = queued(enforcement)          # its text names "gore": no frame at all
        PreviewServer.last_prompt_id = flagged_text["prompt_id"]
        assert enforcement.message_filter(kinds.UNENCODED_PREVIEW_IMAGE, plain_grey, "c") is None
        active.activate(document.read_policy(write(tmp_path, {**GOOD, "previews": {
            "flagged": "blur", "blur_radius": 3}}, "blur.json")), paths)
        data, plan = queued(enforcement, {k: v for k, v in plain_prompt().items() if k not in ("2", "3", "4")})
        PreviewServer.last_prompt_id = data["prompt_id"]
        fmt, blurred, size = enforcement.message_filter(kinds.UNENCODED_PREVIEW_IMAGE, plain_red, "c")
        assert (fmt, size) == ("JPEG", 512) and blurred.tobytes() == red.filter(ImageFilter.GaussianBlur(3)).tobytes()
        active.activate(document.read_policy(write(tmp_path, {"version": 2, "previews": {"mode": "score"}},
                                                   "no-scores.json")), paths)
        data, plan = queued(enforcement, {k: v for k, v in plain_prompt().items() if k not in ("2", "3", "4")})
        PreviewServer.last_prompt_id = data["prompt_id"]
        assert enforcement.message_filter(kinds.UNENCODED_PREVIEW_IMAGE, plain_grey, "c") is None   # nothing scores
    finally:
        active.server = saved_server


def test_only_nodes_that_release_results_reach_the_websocket_history_and_view(active, enforcement):
    data, plan = queued(enforcement)
    pid = data["prompt_id"]
    shown = {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}
    assert enforcement.message_filter("executed", {"node": "6", "output": shown, "prompt_id": pid}, "c") is not None
    assert active.is_released("output", "", "a.png")
    hidden = {"images": [{"filename": "b.png", "subfolder": "", "type": "temp"}]}
    assert enforcement.message_filter("executed", {"node": "5", "output": hidden, "prompt_id": pid}, "c") is None
    assert enforcement.message_filter("executed", {"node": "6", "output": shown, "prompt_id": "unknown"}, "c") is None
    history = {"outputs": {"6": shown, "5": hidden, "sampler": {"text": ["latent as text"]}},
               "meta": {"6": {}, "5": {}, "sampler": {}}}
    failed = {"node_id": "6", "exception_message": "boom", "current_inputs": {"images": ["tensor([[0.9, 0.1]])"]},
              "current_outputs": ["5"]}
    messages = [("execution_start", {"prompt_id": pid}), ("execution_error", dict(failed))]
    enforcement.history_filter(pid, history, messages)
    assert history == {"outputs": {"6": shown}, "meta": {"6": {}}}
    assert messages[1] == ("execution_error", {**failed, "current_inputs": {}, "current_outputs": []})
    assert enforcement.message_filter("execution_error", failed, "c") == messages[1][1]
    assert not active.is_released("temp", "", "b.png")
    unread = {"outputs": {"6": shown}, "meta": {"6": {}}}
    enforcement.history_filter("a prompt the policy never read", unread, [])
    assert unread == {"outputs": {}, "meta": {}}


@pytest.fixture
def tiny_clip(tmp_path):
    """A seeded tiny CLIP in a registered models/safety_clip folder (removed afterwards)."""
    import folder_paths

    from devtools import tiny_models

    clips = tmp_path / "safety_clip"
    tiny_models.write_tiny_clip(str(clips / "tiny"))
    folder_paths.add_model_folder_path("safety_clip", str(clips))
    yield "tiny"
    folder_paths.folder_names_and_paths["safety_clip"][0].remove(str(clips))


def test_the_policys_scores_come_from_the_score_nodes_registry(comfy, document, paths, tmp_path, tiny_clip):
    """Every score kind is built at start-up from the policy and scores like the pack's own score class."""
    import importlib.util

    install = comfy.module("operator_policy.install")
    enforcement_module = comfy.module("operator_policy.enforcement")
    scores = [{"kind": "clip_violence", "clip_model": tiny_clip, "texts": ["gore"], "threshold": -1},
              {"kind": "colour", "statistic": "redness", "threshold": 0.5},
              {"kind": "colour", "statistic": "redness", "threshold": -0.5}]
    with_nudenet = importlib.util.find_spec("nudenet") is not None
    if with_nudenet:
        scores.append({"kind": "nudenet", "labels": "all", "detection_threshold": 0.0001})
    built = install.build_scores(document.read_policy(write(tmp_path, {"version": 2, "output": {"scores": scores}})),
                                 paths)
    clip_scores = comfy.module("steering.safety.clip_scores")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    direct = clip_scores.CLIPViolenceScore(clip_scores.load_clip(str(tmp_path / "safety_clip" / "tiny")), ("gore",),
                                           -1.0)
    with torch.no_grad():
        assert torch.allclose(built[0][2].scores(images), direct.scores(images))
    assert [label for label, _, _ in built][:3] == ["clip_violence", "colour:redness", "colour:redness#2"]
    assert enforcement_module.prompt_score_labels([spec for _, spec, _ in built])[:3] == [
        "clip_violence", "colour:redness", "colour:redness#2"]
    if with_nudenet:
        nudenet = comfy.module("steering.safety.nudenet")
        assert built[3][2].detection_threshold == 0.0001 and built[3][2].labels == nudenet.LABELS
    with pytest.raises(document.PolicyError, match=r"output.scores\[0\]: cannot be built"):
        install.build_scores(document.read_policy(write(tmp_path, {"version": 2, "output": {"scores": [
            {"kind": "clip_violence", "clip_model": "absent"}]}}, "absent.json")), paths)


def test_the_nearest_neighbour_detector_rejects_and_rewrites_by_its_neighbours(active, enforcement, document,
                                                                                 paths, tmp_path, tiny_clip):
    """A text identical to a concept has that concept as its nearest neighbour (similarity 1), whatever the
    CLIP's weights: "gore" is unsafe, "a cat" safe."""
    policy = {"version": 2, "input": {"detector": "nearest_neighbour", "clip_model": tiny_clip,
                                      "unsafe_concepts": ["gore"], "safe_concepts": ["a cat"], "k": 1,
                                      "threshold": 0.5, "action": "rewrite", "safe_suffix": "safe"}}
    active.activate(document.read_policy(write(tmp_path, policy)), paths)
    prompt = plain_prompt()
    prompt["2"]["inputs"]["text"], prompt["3"]["inputs"]["value"] = "gore", "a cat"
    data = enforcement.on_prompt({"prompt": prompt})
    record = list(active.recent)[-1]
    texts = {t["node"]: t for t in record["texts"]}
    assert texts["2"]["matched"] == ["gore"] and texts["2"]["neighbours"][0][:2] == ["gore", True]
    assert texts["3"]["matched"] == [] and texts["3"]["neighbours"][0][:2] == ["a cat", False]
    assert texts["2"]["neighbours"][0][2] == pytest.approx(1.0, abs=1e-4)
    assert data["prompt"]["2"]["inputs"]["text"] == "safe" and data["prompt"]["3"]["inputs"]["value"] == "a cat"
    assert record["input"] == {"detector": "nearest_neighbour", "matched": ["gore"], "action": "rewrite",
                               "rewritten": [{"node": "2", "input": "text", "text": "safe"}]}
    policy["input"]["action"] = "reject"
    active.activate(document.read_policy(write(tmp_path, policy, "reject.json")), paths)
    refused = enforcement.on_prompt({"prompt": prompt})["prompt"]
    assert "it names 'gore'" in list(refused.values())[0]["inputs"]["reason"]
    policy["input"]["clip_model"] = "absent"
    with pytest.raises(document.PolicyError, match="input: the nearest-neighbour detector cannot be built"):
        active.activate(document.read_policy(write(tmp_path, policy, "absent.json")), paths)


def test_stg_goes_on_every_ksampler_and_other_samplers_are_recorded_as_not_steered(active, enforcement, document,
                                                                                  paths, tmp_path):
    active.activate(document.read_policy(write(tmp_path, {"version": 2, "output": GOOD["output"], "steering": {
        "stg": {"rho": 2.0}}}, "stg.json")), paths)
    prompt = plain_prompt()
    common = {"model": ["1", 0], "positive": ["2", 0], "negative": ["4", 0], "latent_image": ["9", 0], "seed": 1,
              "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}
    prompt["10"] = {"class_type": "KSampler", "inputs": {**common, "denoise": 1.0}}
    prompt["5"]["inputs"]["samples"] = ["10", 0]
    prompt["11"] = {"class_type": "KSampler", "inputs": {**common, "denoise": 1.0, "rho": 0.0}}    # never decoded
    prompt["12"] = {"class_type": "KSamplerAdvanced", "inputs": {**common, "add_noise": "enable", "start_at_step": 0,
                                                                 "end_at_step": 2, "return_with_leftover_noise": "disable",
                                                                 "noise_seed": 1}}
    prompt["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}}
    prompt["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "a"}}
    data = enforcement.on_prompt({"prompt": prompt})
    out = data["prompt"]
    assert out["10"]["class_type"] == "RSSTGKSampler" and out["10"]["inputs"]["vae"] == ["1", 2]
    assert out["10"]["inputs"]["rho"] == 2.0 and out[out["10"]["inputs"]["safety_score"][0]]["class_type"] == \
        "RSPolicySafetyScore"
    assert out["11"]["class_type"] == "KSampler" and out["12"]["class_type"] == "KSamplerAdvanced"
    expected_inputs = {**common, "denoise": 1.0, "vae": ["1", 2], "safety_score": out["10"]["inputs"]["safety_score"],
                       "rho": 2.0, "start_percent": 0.1, "end_percent": 0.9, "update_ratio": 1.0, "prior_weight": 0.0,
                       "rebase": False, "guide_pooled": False, "decoder": "vae", "autocast": "none",
                       "gradient_checkpointing": False, "screen": "off", "hold_margin": 0.0}
    assert out["10"]["inputs"] == expected_inputs
    steering = {r["node"]: r for r in active.recent if r.get("type") == "steering"
                and r["prompt_id"] == data["prompt_id"]}
    assert (steering["10"]["applied"], steering["11"]["applied"], steering["12"]["applied"]) == (True, False, False)
    assert "not decoded by a VAE Decode" in steering["11"]["reason"] and "no STG counterpart" in steering["12"]["reason"]
    with pytest.raises(document.PolicyError, match="steering.stg.score: is 1, but output.scores has 1 score"):
        document.read_policy(write(tmp_path, {"version": 2, "output": GOOD["output"], "steering": {"stg": {"score": 1}}},
                                   "bad-stg.json"))


def test_stg_keeps_no_stg_input_of_a_submitted_stg_ksampler(active, enforcement, document, paths, tmp_path):
    """A graph that brings its own STG KSampler cannot weaken the policy's STG through any of its inputs: a TAESD
    screen (images it misreads go unguided), its own score, a prior that pins the embedding, rebase, an input
    the node does not have."""
    active.activate(document.read_policy(write(tmp_path, {"version": 2, "output": GOOD["output"], "steering": {
        "stg": {"rho": 1.5}}}, "stg.json")), paths)
    prompt = plain_prompt()
    common = {"model": ["1", 0], "positive": ["2", 0], "negative": ["4", 0], "latent_image": ["9", 0], "seed": 7,
              "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.8}
    hostile = {"vae": ["1", 2], "safety_score": ["2", 0], "rho": 0.0, "start_percent": 0.99, "end_percent": 1.0,
               "update_ratio": 0.0, "prior_weight": 1000.0, "rebase": True, "guide_pooled": True, "decoder": "taesd",
               "autocast": "fp16", "gradient_checkpointing": True, "screen": "taesd", "hold_margin": 100.0,
               "not_an_input": "x"}
    prompt["10"] = {"class_type": "RSSTGKSampler", "inputs": {**common, **hostile}}
    prompt["5"]["inputs"]["samples"] = ["10", 0]
    out = enforcement.on_prompt({"prompt": prompt})["prompt"]
    score = out["10"]["inputs"]["safety_score"]
    assert out[score[0]]["class_type"] == "RSPolicySafetyScore" and score != ["2", 0]
    assert out["10"]["inputs"] == {**common, "vae": ["1", 2], "safety_score": score, "rho": 1.5, "start_percent": 0.1,
                                   "end_percent": 0.9, "update_ratio": 1.0, "prior_weight": 0.0, "rebase": False,
                                   "guide_pooled": False, "decoder": "vae", "autocast": "none",
                                   "gradient_checkpointing": False, "screen": "off", "hold_margin": 0.0}
