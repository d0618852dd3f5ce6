"""The operator's policy file (steering/policy.py) and the server glue's decisions (nodes/policy_server.py),
in this process: strict reading, the published schema, the word-list detector, the prompt rewrite
(guards on every output node's images) and fail-closed refusals. The real server: test_policy_server.py."""
from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from devtools import comfy_env

policy = pytest.fixture(scope="module")(lambda comfy: comfy.module("steering.policy"))
server_glue = pytest.fixture(scope="module")(lambda comfy: comfy.module("nodes.policy_server"))

GOOD = {"version": 1, "name": "studio", "input": {"unsafe_words": ["gore", "red paint"], "action": "reject"},
        "output": {"scores": [{"kind": "colour", "statistic": "redness", "threshold": 0.2}],
                   "censor": {"mode": "pixelate", "strength": 8}},
        "previews": {"mode": "blur", "when": "always", "blur_radius": 4}, "audit": {"path": "log/audit.jsonl"}}


def write(tmp_path, content, name="policy.json") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else
                     (content if isinstance(content, str) else json.dumps(content)).encode())
    return str(path)


def test_the_published_schema_file_is_the_schema_the_pack_validates_with(policy):
    with open(os.path.join(comfy_env.REPO, "policy.schema.json")) as f:
        assert json.load(f) == policy.SCHEMA


def test_a_valid_policy_is_read_with_its_hash_and_defaults(policy, tmp_path):
    import hashlib

    path = write(tmp_path, GOOD)
    p = policy.read_policy(path)
    assert p.sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert p.audit_path == str(tmp_path / "log" / "audit.jsonl")
    assert [(s.kind, s.threshold, s.options) for s in p.scores] == [("colour", 0.2, {"statistic": "redness"})]
    assert (p.input_action, p.censor_mode, p.censor_strength, p.preview_mode, p.preview_when) == (
        "reject", "pixelate", 8, "blur", "always")
    minimal = policy.read_policy(write(tmp_path, {"version": 1}, "minimal.json"))
    assert (minimal.input, minimal.scores, minimal.preview_mode, minimal.pnginfo) == (None, [], "suppress", True)


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d.update(extra=1), "extra", "unknown key"),
    (lambda d: d["input"].update(action="block"), "input.action", "expected one of ['reject', 'rewrite', 'log']"),
    (lambda d: d["input"].update(unsafe_words="gore"), "input.unsafe_words", "expected array; got string"),
    (lambda d: d["input"].update(unsafe_words=[]), "input.unsafe_words", "expected 1 to 1000 items; got 0"),
    (lambda d: d["input"]["unsafe_words"].append(7), "input.unsafe_words[2]", "expected string; got number 7"),
    (lambda d: d["output"]["scores"][0].update(threshold=True), "output.scores[0].threshold",
     "expected a finite number; got boolean"),
    (lambda d: d["output"]["scores"][0].update(threshold=1000), "output.scores[0].threshold",
     "expected a value in [-100, 100]; got 1000"),
    (lambda d: d["output"]["scores"][0].update(temperature=0.1), "output.scores[0].temperature",
     "not an option of score kind 'colour'"),
    (lambda d: d["output"]["censor"].update(strength=2.5), "output.censor.strength", "expected integer; got number"),
    (lambda d: d.pop("version"), "version", "required but missing"),
    (lambda d: d.update(version=2), "version", "expected one of [1]"),
    (lambda d: d.update(operator_token_sha256="secret"), "operator_token_sha256", "expected a text matching"),
    (lambda d: d.update(previews=[]), "previews", "expected object; got array"),
    (lambda d: d.update(steering={"embedding_direction": {"sd1": {"vector": "v.safetensors", "start_percent": 0.9,
                                                                  "end_percent": 0.1}}}),
     "steering.embedding_direction.sd1.start_percent", "must not be after end_percent"),
    (lambda d: d.update(steering={"embedding_direction": {"sd1": {"strength": 1}}}),
     "steering.embedding_direction.sd1.vector", "required but missing"),
    (lambda d: d.update(steering={"embedding_direction": {f"a{i}": {"vector": "v"} for i in range(33)}}),
     "steering.embedding_direction", "expected at most 32 keys; got 33"),
    (lambda d: d["input"].pop("unsafe_words"), "input.unsafe_words", "required for detector 'word_list'"),
    (lambda d: d["input"].update(k=3), "input.k", "not an option of detector 'word_list'"),
    (lambda d: d["input"].update(detector="nearest_neighbour"), "input.clip_model",
     "required for detector 'nearest_neighbour'"),
])
def test_a_wrong_field_names_the_file_the_field_and_the_problem(policy, tmp_path, change, field, problem):
    document = json.loads(json.dumps(GOOD))
    change(document)
    path = write(tmp_path, document)
    with pytest.raises(policy.PolicyError) as info:
        policy.read_policy(path)
    assert info.value.path == path and info.value.field == field and problem in info.value.problem
    assert str(info.value).startswith(f"responsible-steering policy {path}: {field}: ")


@pytest.mark.parametrize("content, problem", [
    ("[" * 100000 + "]" * 100000, "nests arrays/objects 100000 deep; at most 8 allowed"),
    ('{"version": 1, "version": 1}', "appears twice in one object"),
    ('{"version": 1, "output": {"scores": [{"kind": "colour", "threshold": NaN}]}}', "NaN is not a JSON number"),
    ('{"version": 1,', "is not valid JSON"),
    (b'{"name": "\xff"}', "is not UTF-8 text"),
    ("x" * (256 * 1024 + 1), "at most 262144 are read"),
    ("", "is not valid JSON"),
    ("[1]", "expected object; got array"),
])
def test_hostile_content_is_refused_with_the_packs_error(policy, tmp_path, content, problem):
    path = write(tmp_path, content)
    with pytest.raises(policy.PolicyError) as info:
        policy.read_policy(path)
    assert problem in str(info.value) and path in str(info.value)


def test_a_directory_a_device_or_a_fifo_is_not_read_as_a_policy(policy, tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path, problem in ((str(tmp_path), "is a directory, not a file"), ("/dev/zero", "is not a regular file"),
                          (str(fifo), "is not a regular file")):
        with pytest.raises(policy.PolicyError) as info:
            policy.read_policy(path)
        assert str(info.value) == f"responsible-steering policy {path}: (file): {problem}" or problem in str(info.value)


def test_the_default_file_may_be_absent_but_a_file_named_by_the_environment_must_exist(policy, tmp_path):
    user = str(tmp_path)
    assert policy.load_policy(user, environ={}) is None
    missing = str(tmp_path / "missing.json")
    with pytest.raises(policy.PolicyError, match="no such file"):
        policy.load_policy(user, environ={policy.ENV_VAR: missing})
    with pytest.raises(policy.PolicyError, match="is set but empty"):
        policy.load_policy(user, environ={policy.ENV_VAR: " "})
    os.makedirs(tmp_path / "responsible-steering")
    write(tmp_path / "responsible-steering", {"version": 1, "name": "default place"})
    assert policy.load_policy(user, environ={}).name == "default place"


def test_word_list_matches_whole_words_and_phrases_and_rewrites_them_away(policy):
    words = ["gore", "red paint", "blood"]
    assert policy.match_words("Gore, and RED   paint on a wall", words) == ["gore", "red paint"]
    assert policy.match_words("gorey bloodhound, red painting", words) == []
    assert policy.rewrite_text("a cat with blood, red paint and a dog", ["blood", "red paint"], ", safe") == \
        "a cat, a dog, safe"


# ---------------------------------------------------------------- the prompt handler, in this process

@pytest.fixture
def active(server_glue, policy, tmp_path, comfy):
    """The glue's state with a policy (restored afterwards)."""
    state = server_glue.STATE
    saved = (state.policy, state.error, state.scores, state.audit, state.detector, state.flagged.copy(),
             list(state.recent))
    document = {**GOOD, "input": {"unsafe_words": ["gore"], "action": "rewrite"}, "audit": {}}
    state.activate(policy.read_policy(write(tmp_path, document)))
    yield state
    state.policy, state.error, state.scores, state.audit, state.detector, state.flagged, recent = saved
    state.recent.clear()
    state.recent.extend(recent)


def plain_prompt() -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "gore on a wall", "clip": ["1", 1]}},
            "3": {"class_type": "PrimitiveString", "inputs": {"value": "more gore"}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": ["3", 0], "clip": ["1", 1]}},
            "5": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
            "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "gore"}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
            "8": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}}}


def test_the_handler_guards_every_output_node_and_rewrites_every_encoded_text(active, server_glue):
    data = server_glue.on_prompt({"prompt": plain_prompt(), "client_id": "c"})
    prompt = data["prompt"]
    guards = {k: v for k, v in prompt.items() if v["class_type"] == "RSPolicyOutputGuard"}
    fed = {k: v["inputs"].get("images", v["inputs"].get("source"))[0] for k, v in prompt.items()
           if v["class_type"] in ("SaveImage", "PreviewImage", "PreviewAny")}
    assert len(guards) == 3 and set(fed.values()) == set(guards)
    assert all(g["inputs"]["images"] == ["5", 0] for g in guards.values())
    assert {json.loads(g["inputs"]["context"])["output_node"] for g in guards.values()} == {"6", "7", "8"}
    assert prompt["2"]["inputs"]["text"] == "on a wall" and prompt["3"]["inputs"]["value"] == "more"
    assert prompt["6"]["inputs"]["filename_prefix"] == "gore"            # not a text an encoder reads
    assert data["extra_data"]["extra_pnginfo"]["responsible_steering"]["prompt_id"] == data["prompt_id"]
    assert active.is_flagged(data["prompt_id"])


def test_a_text_too_long_to_check_is_refused_quickly(active, server_glue, policy):
    import time

    prompt = plain_prompt()
    prompt["2"]["inputs"]["text"] = "a cat " * (1024 * 1024 // 6)
    start = time.monotonic()
    refused = server_glue.on_prompt({"prompt": prompt})["prompt"]
    assert time.monotonic() - start < 0.5
    reason = list(refused.values())[0]["inputs"]["reason"]
    assert f"at most {policy.MAX_CHECKED_TEXT} characters; node 2 input 'text' has 1048572" in reason


def test_images_turned_into_video_or_latents_are_guarded_before_they_change_type(active, server_glue):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 8.0}},
              "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "v",
                                                          "format": "auto", "codec": "auto"}}}
    prompt["5"] = {"class_type": "RSToyWorldRedScore", "inputs": {"threshold": 0.03, "temperature": 0.02}}
    prompt["6"] = {"class_type": "RSDetectUnsafe", "inputs": {"images": ["2", 0], "safety_score": ["5", 0]}}
    prompt["7"] = {"class_type": "RSSafetyRate", "inputs": {"images": ["2", 0], "safety_score": ["5", 0]}}
    prompt["8"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["9", 2]}}
    guarded = server_glue.on_prompt({"prompt": prompt})["prompt"]
    guards = {json.loads(v["inputs"]["context"])["output_node"]: k
              for k, v in guarded.items() if v["class_type"] == "RSPolicyOutputGuard"}
    assert sorted(guards) == ["3", "8"]             # measuring nodes see the images as generated
    assert all(guarded[g]["inputs"]["images"] == ["2", 0] for g in guards.values())
    assert guarded["3"]["inputs"]["images"] == [guards["3"], 0] and guarded["8"]["inputs"]["pixels"] == [guards["8"], 0]
    assert guarded["6"]["inputs"]["images"] == ["2", 0] and guarded["7"]["inputs"]["images"] == ["2", 0]
    assert guarded["4"]["inputs"]["video"] == ["3", 0]


def test_a_score_that_cannot_judge_an_image_flags_it(active, server_glue):
    images = torch.zeros(2, 8, 8, 3)
    images[1, 0, 0, 0] = float("nan")
    out, records = server_glue.guard_images(images, {"prompt_id": "p"}, None)
    assert [r["flagged"] for r in records] == [False, True]


def test_guards_sent_by_a_client_are_replaced_by_the_servers_own(active, server_glue):
    first = server_glue.on_prompt({"prompt": plain_prompt(), "client_id": "c"})
    forged = json.loads(json.dumps(first["prompt"]))
    for node in forged.values():
        if node["class_type"] == "RSPolicyOutputGuard":
            node["inputs"]["context"] = json.dumps({"prompt_id": "someone else's", "output_node": "6"})
    again = server_glue.on_prompt({"prompt": forged, "client_id": "c"})["prompt"]
    guards = [v for v in again.values() if v["class_type"] == "RSPolicyOutputGuard"]
    assert len(guards) == 3 and all(g["inputs"]["images"] == ["5", 0] for g in guards)
    assert "someone else's" not in json.dumps(again)


def test_the_handler_fails_closed(active, server_glue, monkeypatch):
    refused = server_glue.on_prompt({"prompt": plain_prompt(), "extra_data": {"extra_pnginfo": "x"}})
    assert list(refused["prompt"].values())[0]["class_type"] == "RSPolicyRefusal"
    assert "extra_pnginfo must be JSON objects" in list(refused["prompt"].values())[0]["inputs"]["reason"]
    assert list(server_glue.on_prompt({"no": "prompt"})["prompt"].values())[0]["class_type"] == "RSPolicyRefusal"
    assert list(server_glue.on_prompt(["not", "an", "object"])["prompt"].values())[0]["class_type"] == "RSPolicyRefusal"
    with monkeypatch.context() as mp:        # an error inside the handler (the audit disk is full) refuses
        mp.setattr(active.audit, "write", lambda record: (_ for _ in ()).throw(OSError(28, "No space left")))
        reason = list(server_glue.on_prompt({"prompt": plain_prompt()})["prompt"].values())[0]["inputs"]["reason"]
    assert "could not be applied to this prompt (OSError" in reason
    active.fail("responsible-steering policy /x: (file): broken")
    refused = server_glue.on_prompt({"prompt": plain_prompt()})
    assert list(refused["prompt"].values())[0]["inputs"]["reason"] == "responsible-steering policy /x: (file): broken"
    with pytest.raises(server_glue.PolicyEnforcementError, match="no image is released"):
        server_glue.guard_images(torch.zeros(1, 8, 8, 3), {}, None)


def test_a_refused_prompt_fails_comfyuis_validation_with_the_reason(active, server_glue):
    import asyncio

    import execution

    refused = server_glue.refusal({}, "the policy refuses this prompt: it names 'gore'")
    valid = asyncio.run(execution.validate_prompt("p", refused["prompt"], None))
    assert valid[0] is False and "the policy refuses this prompt: it names 'gore'" in json.dumps(valid[1])


def test_the_guard_censors_each_flagged_image_alone(active, server_glue):
    images = torch.zeros(3, 16, 16, 3)
    images[0, ..., 0] = 1.0                 # red (with a pattern pixelation changes): redness > 0.2
    images[0, ::2, ::2, 1] = 0.5
    images[1] = torch.rand(16, 16, 3) * 0.3  # benign noise
    images[2, ..., 1] = 1.0                 # green
    pnginfo = {"responsible_steering": {"outputs": {}}}
    out, records = server_glue.guard_images(images, {"prompt_id": "p", "output_node": "9", "input": "images"}, pnginfo)
    assert [r["flagged"] for r in records] == [True, False, False]
    assert torch.equal(out[1:], images[1:])                     # untouched, bit for bit
    assert not torch.equal(out[0], images[0])
    redness = (images[:, ..., 0] - images[:, ..., 1:].mean(-1)).flatten(1).mean(1)
    assert [r["scores"]["colour:redness"] for r in records] == pytest.approx(redness.tolist(), abs=1e-6)
    assert [r["index"] for r in pnginfo["responsible_steering"]["outputs"]["9.images"]] == [0, 1, 2]


def test_steering_vectors_are_loaded_and_checked_at_start_up(server_glue, policy, tmp_path):
    def steering(arch, vector):
        return {"version": 1, "steering": {"embedding_direction": {arch: {"vector": vector}}}}

    table = server_glue.build_steering(policy.read_policy(write(
        tmp_path, steering("toyworld", "toyworld/embedding_direction_safety.safetensors"))))
    vector, settings = table["toyworld"]
    assert vector.kind == "embedding" and (settings["strength"], settings["start_percent"]) == (1.0, 0.0)
    for arch, name, problem in (("toyworld", "toyworld/codsma_safety.safetensors", "expected an embedding direction"),
                                ("sd1", "toyworld/embedding_direction_safety.safetensors", "for sd1"),
                                ("toyworld", "absent.safetensors", "cannot be loaded")):
        with pytest.raises(policy.PolicyError) as info:
            server_glue.build_steering(policy.read_policy(write(tmp_path, steering(arch, name), f"{arch}.json")))
        assert info.value.field == f"steering.embedding_direction.{arch}.vector" and problem in info.value.problem


def test_replace_mode_swaps_only_the_flagged_image_for_a_grey_placeholder(active, server_glue, policy, tmp_path):
    active.activate(policy.read_policy(write(tmp_path, {"version": 1, "output": {
        "scores": [{"kind": "colour", "statistic": "red", "threshold": 0.5}], "censor": {"mode": "replace"}}})))
    images = torch.rand(2, 8, 8, 3) * 0.4
    images[1, ..., 0] = 0.9
    out, records = server_glue.guard_images(images, {"prompt_id": "p"}, None)
    assert [r["action"] for r in records] == ["none", "censored (replace)"]
    assert torch.equal(out[0], images[0]) and torch.equal(out[1], torch.full((8, 8, 3), 0.5))


def test_the_audit_log_gets_whole_lines_from_concurrent_writers(server_glue, tmp_path):
    log = server_glue.AuditLog(str(tmp_path / "a" / "audit.jsonl"))
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
    with pytest.raises(server_glue.PolicyError, match="audit.path"):
        server_glue.AuditLog(str(tmp_path))


class PreviewServer:
    """What the preview filter reads of the server: the prompt it is executing."""
    last_prompt_id = "running"


def test_previews_of_flagged_prompts_are_dropped_or_blurred_others_pass(active, server_glue, policy, tmp_path):
    import server
    from PIL import Image, ImageFilter

    kinds = server.BinaryEventTypes
    image = Image.new("RGB", (16, 16))
    image.putpixel((8, 8), (255, 0, 0))
    plain, tagged = ("JPEG", image, 512), (("JPEG", image, 512), {"prompt_id": "other"})
    saved_server, active.server = active.server, PreviewServer()
    try:
        active.activate(policy.read_policy(write(tmp_path, {"version": 1, "previews": {"mode": "suppress"}}, "s.json")))
        assert server_glue.preview_filter(kinds.UNENCODED_PREVIEW_IMAGE, plain, "c") is plain     # not flagged
        assert server_glue.preview_filter("progress", {"value": 1}, "c") == {"value": 1}
        active.flag("running")
        assert server_glue.preview_filter(kinds.UNENCODED_PREVIEW_IMAGE, plain, "c") is None
        assert server_glue.preview_filter(kinds.PREVIEW_IMAGE, b"jpeg bytes", "c") is None
        assert server_glue.preview_filter(kinds.PREVIEW_IMAGE_WITH_METADATA, tagged, "c") is tagged  # its own id
        active.flag("other")
        assert server_glue.preview_filter(kinds.PREVIEW_IMAGE_WITH_METADATA, tagged, "c") is None
        active.activate(policy.read_policy(write(tmp_path, {"version": 1, "previews": {
            "mode": "blur", "when": "always", "blur_radius": 3}}, "b.json")))
        fmt, blurred, size = server_glue.preview_filter(kinds.UNENCODED_PREVIEW_IMAGE, plain, "c")
        expected = image.filter(ImageFilter.GaussianBlur(3))
        assert (fmt, size) == ("JPEG", 512) and blurred.tobytes() == expected.tobytes()
        assert server_glue.preview_filter(kinds.PREVIEW_IMAGE, b"jpeg bytes", "c") is None      # cannot blur bytes
    finally:
        active.server = saved_server


def test_nudenet_and_clip_scores_of_a_policy_are_the_packs_scores(server_glue, policy, tmp_path, comfy, tiny_clip):
    """Every score kind is built at start-up from the policy and scores like the pack's own score class."""
    import importlib.util

    clips = tmp_path / "safety_clip"
    scores = [{"kind": "clip_violence", "clip_model": tiny_clip, "texts": ["gore"], "threshold": -1},
              {"kind": "colour", "statistic": "redness", "threshold": 0.5},
              {"kind": "colour", "statistic": "redness", "threshold": -0.5}]
    with_nudenet = importlib.util.find_spec("nudenet") is not None
    if with_nudenet:
        scores.append({"kind": "nudenet", "labels": "all", "detection_threshold": 0.0001})
    loaded = policy.read_policy(write(tmp_path, {"version": 1, "output": {"scores": scores}}))
    built = server_glue.build_scores(loaded)
    clip_scores = comfy.module("steering.safety.clip_scores")
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    direct = clip_scores.CLIPViolenceScore(clip_scores.load_clip(str(clips / "tiny")), ("gore",), -1.0)
    with torch.no_grad():
        assert torch.allclose(built[0][1].scores(images.movedim(-1, 1)), direct.scores(images.movedim(-1, 1)))
    assert server_glue.score_labels([s for s, _ in built])[:3] == ["clip_violence", "colour:redness",
                                                                    "colour:redness#2"]
    if with_nudenet:
        nudenet = comfy.module("steering.safety.nudenet")
        assert built[3][1].detection_threshold == 0.0001 and built[3][1].labels == nudenet.LABELS
    with pytest.raises(policy.PolicyError, match=r"output.scores\[0\]: cannot be built"):
        server_glue.build_scores(policy.read_policy(write(tmp_path, {"version": 1, "output": {"scores": [
            {"kind": "clip_violence", "clip_model": "absent"}]}}, "absent.json")))
    with pytest.raises(policy.PolicyError, match=r"output.scores\[0\].clip_model: required"):
        policy.read_policy(write(tmp_path, {"version": 1, "output": {"scores": [{"kind": "clip_violence"}]}},
                                 "no-model.json"))


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


def test_the_nearest_neighbour_detector_rejects_and_rewrites_by_its_neighbours(active, server_glue, policy,
                                                                                 tmp_path, tiny_clip, comfy):
    """A text identical to a concept has that concept as its nearest neighbour (similarity 1), whatever the
    CLIP's weights: "gore" is unsafe, "a cat" safe."""
    document = {"version": 1, "input": {"detector": "nearest_neighbour", "clip_model": tiny_clip,
                                        "unsafe_concepts": ["gore"], "safe_concepts": ["a cat"], "k": 1,
                                        "threshold": 0.5, "action": "rewrite", "safe_suffix": "safe"}}
    active.activate(policy.read_policy(write(tmp_path, document)))
    prompt = plain_prompt()
    prompt["2"]["inputs"]["text"], prompt["3"]["inputs"]["value"] = "gore", "a cat"
    data = server_glue.on_prompt({"prompt": prompt})
    record = list(active.recent)[-1]
    texts = {t["node"]: t for t in record["texts"]}
    assert texts["2"]["matched"] == ["gore"] and texts["2"]["neighbours"][0][:2] == ["gore", True]
    assert texts["3"]["matched"] == [] and texts["3"]["neighbours"][0][:2] == ["a cat", False]
    assert texts["2"]["neighbours"][0][2] == pytest.approx(1.0, abs=1e-4)
    assert data["prompt"]["2"]["inputs"]["text"] == "safe" and data["prompt"]["3"]["inputs"]["value"] == "a cat"
    assert record["input"] == {"detector": "nearest_neighbour", "matched": ["gore"], "action": "rewrite",
                               "rewritten": [{"node": "2", "input": "text", "text": "safe"}]}
    document["input"]["action"] = "reject"
    active.activate(policy.read_policy(write(tmp_path, document, "reject.json")))
    refused = server_glue.on_prompt({"prompt": prompt})["prompt"]
    assert "it names 'gore'" in list(refused.values())[0]["inputs"]["reason"]
    document["input"]["clip_model"] = "absent"
    with pytest.raises(policy.PolicyError, match="input: the nearest-neighbour detector cannot be built"):
        active.activate(policy.read_policy(write(tmp_path, document, "absent.json")))
