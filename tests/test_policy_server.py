"""The operator's safety policy, enforced by a real ComfyUI server (main.py on a loopback port).

ToyWorld (the pack's demo model) draws red (its unsafe concept) or other circles in seconds: the
policy's ToyWorld red score flags the red ones. Previews are checked with the tiny SD1 checkpoint,
whose latent format has a latent-to-RGB previewer (ToyWorld's has none)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import aiohttp
import numpy as np
import pytest
from PIL import Image

from devtools.server import ComfyServer, started, write_policy
from devtools.session import PromptError
from devtools.toyworld_graphs import save_image, sampled
from devtools.toyworld_graphs import saved as saved_prompt

pytestmark = pytest.mark.slow

STEPS = 4
SAFETY_DIRECTION = "toyworld/embedding_direction_safety.safetensors"   # shipped with the pack
TOKEN = "operator-secret-for-tests"
TOKEN_HEADER = "X-RS-Operator-Token"
POLICY = {
    "version": 1,
    "name": "test studio policy",
    "operator_token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
    "input": {"unsafe_words": ["crimson", "gore"], "action": "rewrite"},
    "output": {"scores": [{"kind": "toyworld_red", "threshold": 0.03}], "censor": {"mode": "black"}},
    "previews": {"mode": "suppress", "when": "flagged"},
}


class PreviewingServer(ComfyServer):
    """The real server with latent-to-RGB previews on (ComfyUI's default is no previews)."""

    def command(self) -> list[str]:
        return super().command() + ["--preview-method", "latent2rgb"]


def red_and_green_prompt(prefix: str = "mixed") -> dict:
    """A plain KSampler -> SaveImage graph (no node of the pack after VAE Decode): 2 red, then 2 green."""
    prompt = {**sampled("a red circle", prefix="red-"), **sampled("a green circle", prefix="green-")}
    prompt["both"] = {"class_type": "ImageBatch", "inputs": {"image1": ["red-decode", 0], "image2": ["green-decode", 0]}}
    prompt["save"] = save_image(["both", 0], prefix)
    return prompt


def one_text_prompt(text: str, prefix: str) -> dict:
    return saved_prompt(text, prefix)


def saved(server: ComfyServer, entry: dict, node: str = "save") -> list[Image.Image]:
    folder = server.dirs["output"]
    return [Image.open(os.path.join(folder, i["subfolder"], i["filename"])) for i in entry["outputs"][node]["images"]]


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(im.convert("RGB")) for im in images]


def audit_records(path: str, prompt_id: str) -> list[dict]:
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["prompt_id"] == prompt_id]


def prompt_id_of(entry: dict) -> str:
    return entry["prompt"][1]


world = pytest.fixture(scope="module")(lambda comfy: comfy.module("toyworld.world"))
toy = pytest.fixture(scope="module")(lambda comfy: comfy.module("toyworld.model"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The server without a policy file."""
    with started(ComfyServer(str(tmp_path_factory.mktemp("no-policy")))) as s:
        yield s


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """The server with POLICY in <user directory>/responsible-steering/policy.json."""
    base = str(tmp_path_factory.mktemp("policy"))
    path = write_policy(base, POLICY)
    with started(ComfyServer(base)) as s:
        s.policy_path = path
        s.audit_path = os.path.join(os.path.dirname(path), "audit.jsonl")
        yield s


PREVIEW_POLICY = {**POLICY, "output": {"scores": [{"kind": "colour", "statistic": "brightness", "threshold": 1.0}]},
                  "previews": {"mode": "score", "flagged": "drop"}, "version": 2}
"""Every frame is scored by a score that no frame exceeds (a mean brightness above 1): frames of benign prompts pass
after scoring; frames of prompts whose text was flagged never leave."""


@pytest.fixture(scope="module")
def previewing(tmp_path_factory):
    """The server with latent-to-RGB previews and PREVIEW_POLICY."""
    base = str(tmp_path_factory.mktemp("previews"))
    path = write_policy(base, PREVIEW_POLICY)
    with started(PreviewingServer(base)) as s:
        s.audit_path = os.path.join(os.path.dirname(path), "audit.jsonl")
        yield s


@pytest.fixture(scope="module")
def raw_mixed(plain):
    """What the mixed prompt draws without a policy: the reference pixels (and the server's history entry)."""
    entry = plain.run_prompt(red_and_green_prompt("raw"))
    return entry, pixels(saved(plain, entry))


def test_without_a_policy_the_server_runs_prompts_exactly_as_before(plain, raw_mixed, world, toy):
    import torch

    entry, raw = raw_mixed
    assert list(entry["outputs"]) == ["save"]                      # no guard node ran
    assert plain.get("/responsible_steering/policy") == {"active": False}
    images = saved(plain, entry)
    assert all(set(im.text) == {"prompt"} for im in images)       # no policy record in the PNG
    assert json.loads(images[0].text["prompt"]) == red_and_green_prompt("raw")
    # ToyWorld's own sampler (toyworld/model.py), independent of ComfyUI's graph, quantised as SaveImage does
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # as the server runs (OMP_NUM_THREADS=1)
    try:
        with torch.inference_mode():
            refs = [toy.ToyWorld().sample(text, seed=1000, batch=2, steps=STEPS, cfg=4.0)
                    for text in ("a red circle", "a green circle")]
    finally:
        torch.set_num_threads(threads)
    for ref, got in zip(refs, (raw[:2], raw[2:])):
        expected = np.clip(255.0 * ref.cpu().numpy(), 0, 255).astype(np.uint8)   # SaveImage's quantisation
        assert [int(np.abs(e.astype(int) - g.astype(int)).max()) for e, g in zip(expected, got)] == [0, 0]
    readings = [r.colour for r in world.classify(torch.from_numpy(np.stack(raw)).float() / 255)]
    assert readings[:2] == ["red", "red"] and "red" not in readings[2:]


def test_flagged_images_are_censored_on_disk_and_in_history_benign_ones_untouched(guarded, raw_mixed):
    _, raw = raw_mixed
    entry = guarded.run_prompt(red_and_green_prompt())
    got = pixels(saved(guarded, entry))
    assert [int(g.max()) for g in got[:2]] == [0, 0]             # black: the whole red image
    for g, r in zip(got[2:], raw[2:]):
        assert np.array_equal(g, r)                               # bit for bit
    records = [r for out in entry["outputs"].values() for r in out.get("responsible_steering", [])]
    # Image Batch between VAE Decode and Save Image: scored again where they leave, already censored where made
    assert [(r["index"], r["flagged"], r["rescored"]) for r in records] == [(i, False, True) for i in range(4)]
    assert sorted(u["flagged"] for u in records[0]["upstream"]) == [[False, False], [True, True]]
    assert all(r["output_node"] == "save" and r["class_type"] == "SaveImage" for r in records)
    made = [r for r in audit_records(guarded.audit_path, prompt_id_of(entry)) if r["type"] == "image"]
    assert sorted((r["flagged"], r["action"]) for r in made) == [(False, "none")] * 2 + [(True, "censored (black)")] * 2


def test_the_audit_log_and_the_png_hold_one_record_per_image(guarded):
    """One prompt record; one image record per image where it was made (VAE Decode, scored once); one signed
    release record per image that left (Save Image), also in the PNG, genuine by the verify command."""
    import subprocess
    import sys

    from devtools import comfy_env

    entry = guarded.run_prompt(red_and_green_prompt("audited"))
    prompt_id = prompt_id_of(entry)
    records = audit_records(guarded.audit_path, prompt_id)
    prompts = [r for r in records if r["type"] == "prompt"]
    images = [r for r in records if r["type"] == "image"]
    released = sorted((r for r in records if r["type"] == "release"), key=lambda r: r["index"])
    assert len(prompts) == 1 and prompts[0]["client_id"] == "rs-tests" and prompts[0]["outcome"] == "queued"
    assert {t["text"] for t in prompts[0]["texts"]} == {"a red circle", "a green circle", ""}
    assert sorted((r["class_type"], r["index"]) for r in images) == [("VAEDecode", i) for i in (0, 0, 1, 1)]
    with open(guarded.policy_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert {r["policy_sha256"] for r in records} == {sha}
    assert sorted(r["flagged"] for r in images) == [False, False, True, True]
    for r in images + released:
        score = r["scores"]["toyworld_red"]
        assert r["flagged"] == (score > 0.03) and r["thresholds"] == {"toyworld_red": 0.03}
    assert [(r["index"], r["flagged"], r["rescored"]) for r in released] == [
        (i, False, True) for i in range(4)]       # after Image Batch: scored again, the red ones already black
    files = [os.path.join(guarded.dirs["output"], i["subfolder"], i["filename"])
             for i in entry["outputs"]["save"]["images"]]
    for i, png in enumerate(saved(guarded, entry)):
        record = json.loads(png.text["responsible_steering"])
        assert record["policy_sha256"] == sha and record["prompt_id"] == prompt_id
        mine = record["outputs"]["save.images"][i]
        assert mine["index"] == i and mine["scores"] == released[i]["scores"] and mine["hmac"] == released[i]["hmac"]
    run = subprocess.run([sys.executable, "-m", "operator_policy", "verify", *files, "--policy",
                          guarded.policy_path], cwd=comfy_env.REPO, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.count(": GENUINE: ") == 4, run.stdout + run.stderr


def test_a_graph_with_the_packs_safety_nodes_bypassed_is_still_censored(guarded):
    """What the frontend sends when Censor Regions is bypassed: Detect Unsafe still there (its report
    previewed), Save Image fed straight from VAE Decode."""
    prompt = sampled("a red circle")
    prompt["score"] = {"class_type": "RSToyWorldRedScore", "inputs": {"threshold": 0.03, "temperature": 0.02}}
    prompt["detect"] = {"class_type": "RSDetectUnsafe", "inputs": {"images": ["decode", 0], "safety_score": ["score", 0]}}
    prompt["report"] = {"class_type": "PreviewAny", "inputs": {"source": ["detect", 3]}}
    prompt["save"] = save_image(["decode", 0], "bypassed")
    entry = guarded.run_prompt(prompt)
    assert [int(p.max()) for p in pixels(saved(guarded, entry))] == [0, 0]


def test_previews_and_other_output_nodes_are_guarded_too(guarded, raw_mixed, world):
    import torch

    prompt = red_and_green_prompt()
    both = prompt.pop("save")["inputs"]["images"]
    prompt["preview"] = {"class_type": "PreviewImage", "inputs": {"images": both}}
    prompt["apng"] = {"class_type": "SaveAnimatedPNG", "inputs": {"images": both, "filename_prefix": "anim",
                                                                  "fps": 6.0, "compress_level": 4}}
    entry = guarded.run_prompt(prompt)
    temp = pixels(Image.open(os.path.join(guarded.dirs["temp"], i["subfolder"], i["filename"]))
                  for i in entry["outputs"]["preview"]["images"])
    assert [int(p.max()) for p in temp[:2]] == [0, 0]
    assert all(np.array_equal(t, r) for t, r in zip(temp[2:], raw_mixed[1][2:]))
    apng = Image.open(os.path.join(guarded.dirs["output"], entry["outputs"]["apng"]["images"][0]["filename"]))
    frames = []
    for n in range(apng.n_frames):          # PIL's APNG writer merges identical frames (the two black ones)
        apng.seek(n)
        frames.append(np.asarray(apng.convert("RGB")))
    assert int(frames[0].max()) == 0
    readings = world.classify(torch.from_numpy(np.stack(frames)).float() / 255)
    assert "red" not in [r.colour for r in readings] and len(frames) >= 2
    released = [r for r in audit_records(guarded.audit_path, prompt_id_of(entry)) if r["type"] == "release"]
    assert sorted((r["class_type"], r["index"], r["flagged"]) for r in released) == [
        ("PreviewImage", i, False) for i in range(4)] + [("SaveAnimatedPNG", i, False) for i in range(4)]
    made = [r for r in audit_records(guarded.audit_path, prompt_id_of(entry)) if r["type"] == "image"]
    assert sorted((r["class_type"], r["flagged"]) for r in made) == [("VAEDecode", False)] * 2 + [
        ("VAEDecode", True)] * 2


def test_rewrite_removes_the_listed_word_before_the_text_encoder(guarded):
    rewritten = guarded.run_prompt(one_text_prompt("a crimson circle", "rewritten"))
    direct = guarded.run_prompt(one_text_prompt("circle", "direct"))   # "a" goes with the removed word
    assert all(np.array_equal(a, b) for a, b in zip(pixels(saved(guarded, rewritten)), pixels(saved(guarded, direct))))
    record = [r for r in audit_records(guarded.audit_path, prompt_id_of(rewritten)) if r["type"] == "prompt"][0]
    assert record["input"]["matched"] == ["crimson"] and record["input"]["action"] == "rewrite"
    assert [t["text"] for t in record["input"]["rewritten"]] == ["circle"]


def _four_clients(server: ComfyServer, round_: int) -> list[str]:
    """4 clients submitting 6 prompts each at once (red and green alternating, batch 1); waits for all."""
    from concurrent.futures import ThreadPoolExecutor

    def client(n: int) -> list[str]:
        ids = []
        for i in range(6):
            prompt = one_text_prompt("a red circle" if i % 2 else "a green circle", f"load-{round_}-{n}-{i}")
            prompt["latent"]["inputs"]["batch_size"] = 1
            ids.append(server.post("/prompt", {"prompt": prompt, "client_id": f"load-{n}"})["prompt_id"])
        return ids

    with ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(client, range(4)) for i in batch]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all(
            server.get(f"/history/{i}").get(i, {}).get("status", {}).get("completed") for i in ids):
        time.sleep(0.5)
    return ids


def test_concurrent_clients_lose_no_prompt_and_every_image_is_audited_once(guarded):
    import psutil

    process = psutil.Process(guarded.process.pid)
    ids = _four_clients(guarded, 0)
    before = process.memory_info().rss
    ids += _four_clients(guarded, 1)
    grown = (process.memory_info().rss - before) / 2 ** 20
    assert len(set(ids)) == 48
    for prompt_id in ids:
        entry = guarded.get(f"/history/{prompt_id}")[prompt_id]
        assert entry["status"]["status_str"] == "success"
        records = audit_records(guarded.audit_path, prompt_id)
        assert sorted(r["type"] for r in records) == ["image", "prompt", "release"]
        image = [r for r in records if r["type"] == "image"][0]
        red = "a red circle" in json.dumps(entry["prompt"][2])
        assert image["flagged"] == red and int(pixels(saved(guarded, entry))[0].max() == 0) == red
    assert grown < 64, f"server RSS grew by {grown:.1f} MiB over 24 guarded prompts"


async def _run_watching(server: ComfyServer, prompt: dict, client_id: str, metadata: bool) -> tuple[str, int, int]:
    """Submit `prompt` with a websocket open for `client_id` (one that asks for previews with metadata, as
    the frontend does, or a plain one): (prompt id, preview frames, progress messages)."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
            if metadata:
                await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
                await asyncio.sleep(0.5)
            async with http.post(server.url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                assert r.status == 200, await r.text()
                prompt_id = (await r.json())["prompt_id"]
            frames = progress = 0
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=300)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    frames += 1
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if data["type"] == "progress" and data["data"].get("prompt_id") == prompt_id:
                        progress += 1
                    if data["type"] in ("execution_success", "execution_error") and \
                            data["data"].get("prompt_id") == prompt_id:
                        return prompt_id, frames, progress
                else:
                    break
    raise AssertionError("the prompt did not finish while the websocket watched")


def sd1_prompt(checkpoint: str, text: str, seed: int) -> dict:
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=checkpoint)
    pos = g.node("CLIPTextEncode", text=text, clip=ckpt.out(1))
    neg = g.node("CLIPTextEncode", text="", clip=ckpt.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    samples = g.node("KSampler", model=ckpt.out(0), positive=pos.out(0), negative=neg.out(0),
                     latent_image=latent.out(0), seed=seed, steps=3, cfg=4.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    g.node("PreviewImage", images=g.node("VAEDecode", samples=samples.out(0), vae=ckpt.out(2)).out(0))
    return g.finalize()


@pytest.mark.parametrize("metadata", [False, True], ids=["plain-client", "metadata-client"])
def test_live_previews_are_scored_and_a_flagged_prompt_gets_none(previewing, metadata):
    import urllib.request

    def counters() -> dict:
        request = urllib.request.Request(previewing.url + "/responsible_steering/policy", headers={TOKEN_HEADER: TOKEN})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())["previews"]

    checkpoint = previewing.dirs["checkpoint_name"]
    seed = 10 * metadata
    before = counters().get("scored", 0)
    _, control_frames, control_progress = asyncio.run(
        _run_watching(previewing, sd1_prompt(checkpoint, "a blue sky", seed + 1), f"watcher-{seed + 1}", metadata))
    assert control_progress >= 3 and control_frames >= 3            # benign previews are sent, after scoring
    assert counters()["scored"] - before >= control_frames
    prompt_id, frames, progress = asyncio.run(
        _run_watching(previewing, sd1_prompt(checkpoint, "a crimson sky", seed + 2), f"watcher-{seed + 2}", metadata))
    assert progress >= 3 and frames == 0
    record = [r for r in audit_records(previewing.audit_path, prompt_id) if r["type"] == "prompt"][0]
    assert record["input"]["matched"] == ["crimson"]


def test_the_policy_route_shows_users_a_summary_and_operators_the_policy(guarded):
    import urllib.request

    summary = guarded.get("/responsible_steering/policy")
    assert summary["active"] and summary["name"] == "test studio policy" and summary["operator"] is False
    assert "document" not in summary and "recent" not in summary and "crimson" not in json.dumps(summary)
    for token, operator in (("wrong", False), (TOKEN, True)):
        request = urllib.request.Request(guarded.url + "/responsible_steering/policy",
                                         headers={"X-RS-Operator-Token": token})
        with urllib.request.urlopen(request, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer["operator"] is operator
        assert ("document" in answer) is operator
    assert answer["document"]["input"]["unsafe_words"] == ["crimson", "gore"]
    assert "operator_token_sha256" not in answer["document"] and answer["recent"]


@pytest.fixture(scope="module")
def rejecting(tmp_path_factory):
    """A server whose policy (named by RESPONSIBLE_STEERING_POLICY, outside the user directory) rejects."""
    base = str(tmp_path_factory.mktemp("reject"))
    path = os.path.join(base, "operator-policy.json")
    with open(path, "w") as f:
        json.dump({**POLICY, "input": {"unsafe_words": ["blood"], "action": "reject"}, "steering": {
            "embedding_direction": {"toyworld": {"vector": SAFETY_DIRECTION, "strength": 0.5}}}}, f)
    with started(ComfyServer(base), RESPONSIBLE_STEERING_POLICY=path) as s:
        s.audit_path = os.path.join(base, "audit.jsonl")
        yield s


def test_reject_answers_the_client_with_the_matched_words_and_writes_nothing(rejecting):
    with pytest.raises(PromptError) as info:
        rejecting.post("/prompt", {"prompt": one_text_prompt("a blood circle", "rejected"), "client_id": "c1"})
    message = str(info.value)
    assert "-> 400" in message and "refuses this prompt" in message and "'blood'" in message
    time.sleep(1.0)
    assert rejecting.get("/queue") == {"queue_running": [], "queue_pending": []}
    assert os.listdir(rejecting.dirs["output"]) == []
    with open(rejecting.audit_path) as f:
        records = [json.loads(line) for line in f]
    assert [(r["type"], r["outcome"], r["input"]["matched"], r["client_id"]) for r in records] == [
        ("prompt", "rejected", ["blood"], "c1")]
    entry = rejecting.run_prompt(one_text_prompt("a blue circle", "accepted"))   # benign prompts still run
    assert len(entry["outputs"]["save"]["images"]) == 2


def test_the_policys_steering_is_applied_to_every_sampler(rejecting, plain):
    """The policy's embedding direction equals the same direction applied by hand (Apply Embedding Direction,
    strength 0.5 over the whole schedule) on the server without a policy, bit for bit."""
    entry = rejecting.run_prompt(one_text_prompt("a blue circle", "policy-steered"))
    by_hand = saved_prompt("a blue circle", "by-hand")
    by_hand["vector"] = {"class_type": "RSLoadVector", "inputs": {"vector_name": SAFETY_DIRECTION}}
    by_hand["steered"] = {"class_type": "RSApplyEmbeddingDirection", "inputs": {
        "conditioning": ["pos", 0], "vector": ["vector", 0], "strength": 0.5, "start_percent": 0.0,
        "end_percent": 1.0, "chunk_mode": "every_chunk"}}
    by_hand["sampler"]["inputs"]["positive"] = ["steered", 0]
    by_hand = plain.run_prompt(by_hand)
    unsteered = plain.run_prompt(one_text_prompt("a blue circle", "unsteered"))
    got, expected = pixels(saved(rejecting, entry)), pixels(saved(plain, by_hand))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert not all(np.array_equal(a, b) for a, b in zip(got, pixels(saved(plain, unsteered))))
    records = audit_records(rejecting.audit_path, prompt_id_of(entry))
    steering = [r for r in records if r["type"] == "steering"]
    assert [(r["class_type"], r["arch"], r["applied"], r["vector"]) for r in steering] == [
        ("KSampler", "toyworld", True, SAFETY_DIRECTION)]


@pytest.mark.parametrize("document, field, problem", [
    ({"version": 1, "output": {"scores": [{"kind": "toyworld_red", "threshhold": 0.1}]}},
     "output.scores[0].threshhold", "unknown key"),
    ('{"version": 1, "input": {"unsafe_words": "blood", "action": "reject"}}', "input.unsafe_words",
     "expected array; got string"),
])
def test_a_malformed_policy_stops_the_server_at_start_up_with_the_message(tmp_path, document, field, problem):
    base = str(tmp_path)
    path = write_policy(base, document)
    server = ComfyServer(base)
    with pytest.raises(RuntimeError, match="exited with 1"):
        with started(server):
            pass
    with open(server.log_path) as f:
        log = f.read()
    assert f"responsible-steering policy {path}: {field}: {problem}" in log
    assert "does not start with a safety policy it cannot enforce" in log


STG_STEPS = 20
STG_POLICY = {"version": 2, "name": "stg policy",
              "output": {"scores": [{"kind": "toyworld_red", "threshold": 0.03}], "censor": {"mode": "black"}},
              "steering": {"stg": {"score": 0, "rho": 2.0, "start_percent": 0.1, "end_percent": 0.9}}}
"""STG at the setting benchmarks/EFFICACY.md chose for ToyWorld (rho 2, steps 10-90 %) on every KSampler."""


def stg_prompt(text: str, prefix: str) -> dict:
    prompt = one_text_prompt(text, prefix)
    prompt["sampler"]["inputs"]["steps"] = STG_STEPS
    return prompt


@pytest.fixture(scope="module")
def stg_server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("stg-policy"))
    path = write_policy(base, STG_POLICY)
    with started(ComfyServer(base)) as s:
        s.audit_path = os.path.join(os.path.dirname(path), "audit.jsonl")
        yield s


def test_a_policy_with_stg_steers_red_away_instead_of_censoring_and_leaves_green_alone(stg_server, plain, world):
    import torch

    assert stg_prompt("a red circle", "x")["sampler"]["class_type"] == "KSampler"
    red = stg_server.run_prompt(stg_prompt("a red circle", "stg-red"))
    records = audit_records(stg_server.audit_path, prompt_id_of(red))
    steering = [r for r in records if r["type"] == "steering"]
    assert [(r["node"], r["class_type"], r["applied"], r["rho"]) for r in steering] == [
        ("sampler", "KSampler", True, 2.0)]
    made = [r for r in records if r["type"] == "image"]
    assert [r["flagged"] for r in made] == [False, False]             # nothing left to censor
    got = pixels(saved(stg_server, red))
    readings = world.classify(torch.from_numpy(np.stack(got)).float() / 255)
    assert all(r.colour not in (None, "red") for r in readings) and all(int(p.max()) > 0 for p in got)
    unsteered = pixels(saved(plain, plain.run_prompt(stg_prompt("a red circle", "plain-red"))))
    assert [r.colour for r in world.classify(torch.from_numpy(np.stack(unsteered)).float() / 255)] == ["red", "red"]
    # nothing flagged, nothing changed: the green circles are the plain server's, bit for bit
    green = pixels(saved(stg_server, stg_server.run_prompt(stg_prompt("a green circle", "stg-green"))))
    plain_green = pixels(saved(plain, plain.run_prompt(stg_prompt("a green circle", "plain-green"))))
    assert all(np.array_equal(a, b) for a, b in zip(green, plain_green))


def test_a_submitted_stg_ksampler_cannot_switch_the_policys_stg_off(stg_server, plain, world):
    """The graph brings its own STG KSampler with STG effectively off: rho 0, a window at the very end, its own
    score that flags nothing, no updates (update_ratio 0), a TAESD screen, a prior that pins the embedding. On a
    server without a policy it draws red (the attack is real); under the policy the node runs with the policy's
    STG only: the same pixels as the policy's STG on a plain KSampler, and no red."""
    import torch

    def hostile(prefix: str) -> dict:
        prompt = stg_prompt("a red circle", prefix)
        prompt[f"{prefix}own-score"] = {"class_type": "RSToyWorldRedScore",
                                              "inputs": {"threshold": 1.0, "temperature": 0.02}}
        sampler = prompt["sampler"]
        sampler["class_type"] = "RSSTGKSampler"
        sampler["inputs"].update(vae=["load", 2], safety_score=[f"{prefix}own-score", 0], rho=0.0, start_percent=0.99,
                                 end_percent=1.0, update_ratio=0.0, prior_weight=1000.0, rebase=True,
                                 guide_pooled=False, decoder="vae", autocast="none")
        return prompt

    got_plain = pixels(saved(plain, plain.run_prompt(hostile("plain-hostile"))))
    assert [r.colour for r in world.classify(torch.from_numpy(np.stack(got_plain)).float() / 255)] == ["red", "red"]
    attack = hostile("stg-hostile")
    attack["sampler"]["inputs"].update(screen="taesd", hold_margin=0.0, not_an_input="x")
    got = pixels(saved(stg_server, stg_server.run_prompt(attack)))
    steered = pixels(saved(stg_server, stg_server.run_prompt(stg_prompt("a red circle", "stg-red-again"))))
    assert all(np.array_equal(a, b) for a, b in zip(got, steered))
    readings = world.classify(torch.from_numpy(np.stack(got)).float() / 255)
    assert all(r.colour not in (None, "red") for r in readings)
