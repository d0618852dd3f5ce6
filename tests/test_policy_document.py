"""The operator's policy file (operator_policy/document.py), without ComfyUI: strict reading, the published
schema generated from the models, errors that name the file, the field and the problem, version 1 files, the
word-list detector, and signed records (operator_policy/provenance.py)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from devtools import comfy_env, policy_schema, pure

GOOD = {"version": 2, "name": "studio", "input": {"unsafe_words": ["gore", "red paint"], "action": "reject"},
        "output": {"scores": [{"kind": "colour", "statistic": "redness", "threshold": 0.2}],
                   "censor": {"mode": "pixelate", "strength": 8}, "allow_uninspected": ["SaveLatent"]},
        "previews": {"mode": "score", "flagged": "blur", "blur_radius": 4}, "audit": {"path": "log/audit.jsonl"}}


@pytest.fixture(scope="module")
def policy():
    return pure.module("operator_policy.document")


def write(tmp_path, content, name="policy.json") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else
                     (content if isinstance(content, str) else json.dumps(content)).encode())
    return str(path)


def test_the_published_schema_file_is_generated_from_the_models(policy):
    with open(os.path.join(comfy_env.REPO, "policy.schema.json")) as f:
        assert f.read() == policy_schema.text(), "stale: run python -m devtools.policy_schema"
    schema = policy.json_schema()
    assert schema["additionalProperties"] is False and schema["required"] == ["version"]
    score = schema["$defs"]["NudeNetScore"]
    assert score["properties"]["window"]["minimum"] == 8 and score["additionalProperties"] is False


def test_a_valid_policy_is_read_with_its_hash_and_defaults(policy, tmp_path):
    path = write(tmp_path, GOOD)
    p = policy.read_policy(path)
    assert p.sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert p.audit_path == str(tmp_path / "log" / "audit.jsonl")
    assert p.key_path == str(tmp_path / "provenance.key")
    assert [(s.kind, s.threshold, s.window, s.options) for s in p.scores] == [
        ("colour", 0.2, 64, {"statistic": "redness"})]
    assert (p.input_action, p.censor_mode, p.censor_strength, p.previews.mode, p.previews.flagged) == (
        "reject", "pixelate", 8, "score", "blur")
    assert p.allow_uninspected == {"SaveLatent"} and p.trusted_transforms == set()
    minimal = policy.read_policy(write(tmp_path, {"version": 2}, "minimal.json"))
    assert (minimal.input, minimal.scores, minimal.previews.mode, minimal.pnginfo) == (None, [], "score", True)


@pytest.mark.parametrize("v1, mode, flagged", [
    ({"mode": "allow"}, "score", "drop"),
    ({"mode": "suppress", "when": "flagged"}, "score", "drop"),
    ({"mode": "suppress", "when": "always"}, "suppress", "drop"),
    ({"mode": "blur", "when": "always", "blur_radius": 3}, "score", "blur"),
])
def test_version_1_previews_become_scored_previews(policy, tmp_path, v1, mode, flagged):
    p = policy.read_policy(write(tmp_path, {"version": 1, "previews": v1}))
    assert (p.previews.mode, p.previews.flagged) == (mode, flagged)
    if "blur_radius" in v1:
        assert p.previews.blur_radius == 3


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d.update(extra=1), "extra", "unknown key; expected one of ['audit', 'input', 'name'"),
    (lambda d: d["input"].update(action="block"), "input.action", "expected one of 'reject', 'rewrite' or 'log'"),
    (lambda d: d["input"].update(unsafe_words="gore"), "input.unsafe_words", "expected array; got string"),
    (lambda d: d["input"].update(unsafe_words=[]), "input.unsafe_words", "expected at least 1 items; got 0"),
    (lambda d: d["input"]["unsafe_words"].append(7), "input.unsafe_words[2]", "expected string; got number 7"),
    (lambda d: d["output"]["scores"][0].update(threshold=True), "output.scores[0].threshold",
     "expected number; got boolean"),
    (lambda d: d["output"]["scores"][0].update(threshold=1000), "output.scores[0].threshold",
     "expected a value <= 100"),
    (lambda d: d["output"]["scores"][0].update(temperature=0.1), "output.scores[0].temperature",
     "unknown key; expected one of ['kind', 'statistic', 'threshold', 'window']"),
    (lambda d: d["output"]["scores"][0].update(window=4), "output.scores[0].window", "expected a value >= 8"),
    (lambda d: d["output"]["scores"][0].update(kind="sharpness"), "output.scores[0]",
     "expected one of 'colour', 'toyworld_red', 'nudenet', 'clip_violence'"),
    (lambda d: d["output"]["censor"].update(strength=2.5), "output.censor.strength", "expected integer; got number"),
    (lambda d: d["output"].update(allow_uninspected="SaveLatent"), "output.allow_uninspected", "expected array"),
    (lambda d: d.pop("version"), "version", "required but missing"),
    (lambda d: d.update(version=3), "version", "expected one of 1 or 2; got 3"),
    (lambda d: d.update(operator_token_sha256="secret"), "operator_token_sha256", "expected a text matching"),
    (lambda d: d.update(previews=[]), "previews", "expected object; got array"),
    (lambda d: d.update(previews={"mode": "allow"}), "previews.mode", "expected one of 'score' or 'suppress'"),
    (lambda d: d.update(steering={"embedding_direction": {"sd1": {"vector": "v.safetensors", "start_percent": 0.9,
                                                                  "end_percent": 0.1}}}),
     "steering.embedding_direction.sd1", "start_percent must not be after end_percent"),
    (lambda d: d.update(steering={"embedding_direction": {"sd1": {"strength": 1}}}),
     "steering.embedding_direction.sd1.vector", "required but missing"),
    (lambda d: d.update(steering={"embedding_direction": {f"a{i}": {"vector": "v"} for i in range(33)}}),
     "steering.embedding_direction", "expected at most 32 items; got 33"),
    (lambda d: d["input"].pop("unsafe_words"), "input.unsafe_words", "required but missing"),
    (lambda d: d["input"].update(k=3), "input.k", "unknown key"),
    (lambda d: d["input"].update(detector="nearest_neighbour"), "input.clip_model", "required but missing"),
])
def test_a_wrong_field_names_the_file_the_field_and_the_problem(policy, tmp_path, change, field, problem):
    document = json.loads(json.dumps(GOOD))
    change(document)
    path = write(tmp_path, document)
    with pytest.raises(policy.PolicyError) as info:
        policy.read_policy(path)
    assert (info.value.path, info.value.field) == (path, field) and problem in info.value.problem, info.value
    assert str(info.value).startswith(f"responsible-steering policy {path}: {field}: ")


@pytest.mark.parametrize("content, problem", [
    ("[" * 100000 + "]" * 100000, "nests arrays/objects 100000 deep; at most 8 allowed"),
    ('{"version": 1, "version": 1}', "key 'version' appears twice in one object"),
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
        assert problem in str(info.value) and str(info.value).startswith(f"responsible-steering policy {path}: (file)")


def test_the_default_file_may_be_absent_but_a_file_named_by_the_environment_must_exist(policy, tmp_path):
    user = str(tmp_path)
    assert policy.load_policy(user, environ={}) is None
    with pytest.raises(policy.PolicyError, match="no such file"):
        policy.load_policy(user, environ={policy.ENV_VAR: str(tmp_path / "missing.json")})
    with pytest.raises(policy.PolicyError, match="is set but empty"):
        policy.load_policy(user, environ={policy.ENV_VAR: " "})
    os.makedirs(tmp_path / "responsible-steering")
    write(tmp_path / "responsible-steering", {"version": 2, "name": "default place"})
    assert policy.load_policy(user, environ={}).name == "default place"


def test_word_list_matches_whole_words_and_phrases_and_rewrites_them_away():
    words_module = pure.module("operator_policy.words")
    words = ["gore", "red paint", "blood"]
    assert words_module.match_words("Gore, and RED   paint on a wall", words) == ["gore", "red paint"]
    assert words_module.match_words("gorey bloodhound, red painting", words) == []
    assert words_module.rewrite_text("a cat with blood, red paint and a dog", ["blood", "red paint"], ", safe") == \
        "a cat, a dog, safe"


# ---------------------------------------------------------------- provenance

@pytest.fixture(scope="module")
def provenance():
    return pure.module("operator_policy.provenance")


def saved_png(path, pixels: np.ndarray, records: list[dict]) -> str:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "{}")
    info.add_text("responsible_steering", json.dumps({"prompt_id": "p", "outputs": {"save.images": records}}))
    Image.fromarray(pixels).save(path, pnginfo=info)
    return str(path)


def test_the_key_is_made_once_private_and_refused_when_others_may_read_it(provenance, tmp_path):
    path = str(tmp_path / "provenance.key")
    key = provenance.load_or_create_key(path)
    assert len(key) == 32 and os.stat(path).st_mode & 0o777 == 0o600
    assert provenance.load_or_create_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(provenance.ProvenanceError, match="others may read it"):
        provenance.load_or_create_key(path)
    short = str(tmp_path / "short.key")
    with open(short, "wb") as f:
        f.write(b"123")
    os.chmod(short, 0o600)
    with pytest.raises(provenance.ProvenanceError, match="holds 3 bytes; expected 32"):
        provenance.load_or_create_key(short)


def test_a_png_record_is_genuine_only_for_its_own_pixels_and_key(provenance, tmp_path):
    key = provenance.load_or_create_key(str(tmp_path / "k"))
    pixels = (np.arange(6 * 5 * 3) % 251).astype(np.uint8).reshape(6, 5, 3)
    # the pixel hash by hand: shape line, then the raw bytes
    assert provenance.pixels_sha256(pixels) == hashlib.sha256(b"6x5x3\n" + pixels.tobytes()).hexdigest()
    record = provenance.sign({"prompt_id": "p", "output_node": "save", "index": 0, "flagged": False,
                              "pixels_sha256": provenance.pixels_sha256(pixels)}, key)
    good = saved_png(tmp_path / "good.png", pixels, [record])
    assert provenance.verify_png(good, key).genuine
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert "no record matches these pixels" in provenance.verify_png(saved_png(tmp_path / "c.png", changed, [record]),
                                                                      key).reason
    altered = {**record, "flagged": True}
    assert "signature is not valid" in provenance.verify_png(saved_png(tmp_path / "a.png", pixels, [altered]),
                                                             key).reason
    other = provenance.load_or_create_key(str(tmp_path / "k2"))
    forged = provenance.sign({**record}, other)
    assert "signed with another key" in provenance.verify_png(saved_png(tmp_path / "f.png", pixels, [forged]),
                                                              key).reason
    from PIL import Image

    Image.fromarray(pixels).save(tmp_path / "bare.png")
    assert "no responsible_steering record" in provenance.verify_png(str(tmp_path / "bare.png"), key).reason
    # the command, from the pack's folder, with only the key beside a policy
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"version": 2, "provenance": {"key_path": "k"}}))
    run = subprocess.run([sys.executable, "-m", "operator_policy", "verify", good, str(tmp_path / "a.png"),
                          "--policy", str(policy_file)], cwd=comfy_env.REPO, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"{good}: GENUINE") and "NOT GENUINE: the record's signature" in lines[1]


def test_client_pnginfo_cannot_sit_beside_the_servers_records(provenance):
    sent = {"prompt": "forged", "PROMPT": "forged", "responsible_steering": {}, "workflow": {"nodes": []}}
    assert sorted(provenance.scrub_client_pnginfo(sent)) == ["PROMPT", "prompt", "responsible_steering"]
    assert sent == {"workflow": {"nodes": []}}
