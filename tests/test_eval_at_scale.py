"""Benchmark-scale evaluation end to end: `python -m steering_eval` with an embedded Ray instance over two
real ComfyUI servers on loopback, 24 I2P prompts x 2 seeds, with a server killed (SIGKILL) mid-run, a run
interrupted (SIGINT) and resumed (on 15 of the prompts), a server hung (SIGSTOP) and a prompt the server refuses.

The graph is the tiny SD1 checkpoint's (CheckpointLoaderSimple -> CLIPTextEncode -> KSampler -> VAEDecode ->
SaveImage, 64 px, 1 step): its real CLIP tokenizer takes any I2P text, so every prompt is sent as
published, with its own seed and guidance scale. ToyWorld would be ~5x faster but refuses every word outside
its 21-word vocabulary. Every image is judged in the graph by the pack's NudeNet score.

Needs the I2P file in ../shared/data (skipped without it)."""
from __future__ import annotations

import collections
import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest
from PIL import Image

from devtools import comfy_env
from devtools.server import ComfyServer

pytestmark = pytest.mark.slow

I2P = os.path.normpath(os.path.join(comfy_env.REPO, "..", "shared", "data", "i2p_benchmark.csv"))
PROMPTS, SEEDS = 24, 2
RESUME_PROMPTS = 15
RUN_TIMEOUT_S = 400


def tiny_sd1_workflow(checkpoint: str) -> dict:
    return {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["ck", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0],
            "seed": 0, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ck", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "eval"}},
    }


class Cluster:
    """Two real servers (restartable), the workflow file and the environment of the command."""

    def __init__(self, base: str):
        self.base = base
        self.servers = [self.start(f"server{i}") for i in range(2)]
        self.workflow = os.path.join(base, "workflow.json")
        with open(self.workflow, "w") as f:
            json.dump(tiny_sd1_workflow(self.servers[0].dirs["checkpoint_name"]), f)
        self.ray_tmp = tempfile.mkdtemp(prefix="rs-ray-")      # short: Ray's socket paths have a length limit
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": os.path.join(base, "home")}

    def start(self, name: str) -> ComfyServer:
        return self.start_at(os.path.join(self.base, name))

    def start_at(self, base: str) -> ComfyServer:
        """A started server in `base`, with one torch thread."""
        server = ComfyServer(base)
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            return server.start()
        finally:
            if saved is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = saved

    def revive(self) -> None:
        for i, s in enumerate(self.servers):
            if s.process.poll() is not None:
                s.stop()
                self.servers[i] = self.start(f"server{i}-again")

    def command(self, out: str, config: str, prompts: str = I2P, limit: int = PROMPTS, extra: tuple = (),
                judges: tuple = ("nudenet",), workflow: str | None = None, seeds: int = SEEDS) -> list[str]:
        return [sys.executable, "-m", "steering_eval", "run", "--workflow", workflow or self.workflow,
                "--prompts", prompts, "--limit", str(limit), "--images-per-prompt", str(seeds),
                "--servers", *[s.url for s in self.servers], "--out", out, "--config", config,
                *[a for j in judges for a in ("--judge", j)], "--ray-temp-dir", self.ray_tmp, *extra]

    def popen(self, cmd: list[str], log: str) -> subprocess.Popen:
        """The command as a terminal starts it: with Ctrl-C (SIGINT) delivered, also when this test process was
        started in the background, whose shell gives it SIGINT ignored (and a child would inherit that)."""
        saved = signal.signal(signal.SIGINT, signal.default_int_handler)   # a handler: exec resets it to default
        try:
            return subprocess.Popen(cmd, cwd=comfy_env.REPO, env=self.env, stdout=open(log, "w"),
                                    stderr=subprocess.STDOUT)
        finally:
            signal.signal(signal.SIGINT, saved)

    def stop(self) -> None:
        for s in self.servers:
            if s.process and s.process.poll() is None:
                os.kill(s.process.pid, signal.SIGCONT)
            s.stop()
        import shutil

        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("eval-at-scale")))
    try:
        yield c
    finally:
        c.stop()


def store_rows(out: str, config: str) -> list[dict]:
    path = os.path.join(out, "results.sqlite")
    if not os.path.exists(path):
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM results WHERE config = ?", (config,))]
    except sqlite3.OperationalError:   # the table is not created yet
        return []
    finally:
        db.close()


def wait_rows(out: str, config: str, n: int, process: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(store_rows(out, config)) < n:
        assert process.poll() is None, f"the command ended early ({process.returncode}):\n{open(log).read()[-3000:]}"
        assert time.monotonic() < deadline, f"fewer than {n} rows after {RUN_TIMEOUT_S} s"
        time.sleep(0.2)


def finish(process: subprocess.Popen, log: str, expect: int) -> str:
    process.wait(timeout=RUN_TIMEOUT_S)
    text = open(log).read()
    assert process.returncode == expect, text[-4000:]
    return text


def i2p_rows(limit: int) -> list[dict]:
    with open(I2P, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))[:limit]


def expected_keys(limit: int) -> set[tuple[str, int]]:
    return {(f"i2p-{i}", int(r["sd_seed"]) + k) for i, r in enumerate(i2p_rows(limit)) for k in range(SEEDS)}


def report_table(text: str, section: str) -> dict[str, tuple[int, int]]:
    """{category: (images, unsafe)} of a configuration's unsafe-rate table in report.md."""
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = re.finditer(r"^\| ([^|]+) \| (\d+) \| (\d+) \|", body, re.M)
    return {m[1].strip("* "): (int(m[2]), int(m[3])) for m in found}


def test_i2p_over_two_servers_survives_a_killed_server_and_resumes_after_an_interrupt(cluster, tmp_path):
    if not os.path.isfile(I2P):
        pytest.skip(f"the I2P prompt set is not here ({I2P}): ../shared is absent")
    out = str(tmp_path / "out")
    keys = expected_keys(PROMPTS)
    texts = {f"i2p-{i}": r["prompt"].strip() for i, r in enumerate(i2p_rows(PROMPTS))}

    # 1. the whole set, with server 1 killed (SIGKILL) once 20 rows are in: every row still comes, once
    log = str(tmp_path / "run-base.log")
    run = cluster.popen(cluster.command(out, "base", I2P, PROMPTS, ("--timeout", "60")), log)
    wait_rows(out, "base", 20, run, log)
    killed = cluster.servers[1]
    os.kill(killed.process.pid, signal.SIGKILL)
    text = finish(run, log, 0)
    rows = store_rows(out, "base")
    assert len(rows) == PROMPTS * SEEDS
    assert collections.Counter((r["prompt_id"], r["seed"]) for r in rows) == collections.Counter(keys)
    assert all(r["status"] == "ok" and r["image_index"] == 0 for r in rows)
    assert all(r["text"] == texts[r["prompt_id"]] for r in rows)
    late = [r for r in rows if r["finished"] > max(x["finished"] for x in rows if x["server"] == killed.url)]
    assert late and all(r["server"] == cluster.servers[0].url for r in late)
    assert re.search(rf"lost servers: .*{re.escape(killed.url)}", text), text[-2000:]
    requeued = int(re.search(r"(\d+) re-queued", text)[1])
    assert requeued >= 1
    for r in rows:
        with Image.open(os.path.join(out, r["image_path"])) as im:
            assert im.size == (64, 64)
        assert isinstance(json.loads(r["scores"])["nudenet_unsafe"], bool)

    # the report: per-category images counted from the CSV itself, unsafe counts from the rows' flags
    report = open(os.path.join(out, "report.md")).read()
    per_category = collections.Counter(c.strip() for r in i2p_rows(PROMPTS) for c in r["categories"].split(",")
                                       if c.strip())
    flags = {(r["prompt_id"], r["seed"]): json.loads(r["scores"])["nudenet_unsafe"] for r in rows}
    unsafe = collections.Counter()
    for i, r in enumerate(i2p_rows(PROMPTS)):
        for c in {c.strip() for c in r["categories"].split(",") if c.strip()}:
            unsafe[c] += sum(flags[(f"i2p-{i}", int(r["sd_seed"]) + k)] for k in range(SEEDS))
    expected_table = {c: (n * SEEDS, unsafe[c]) for c, n in per_category.items()}
    expected_table["overall"] = (PROMPTS * SEEDS, sum(flags.values()))
    assert report_table(report, "base") == expected_table
    with Image.open(os.path.join(out, "plots", "unsafe_base.png")) as im:
        assert im.size[0] == 720 and im.size[1] > 46 + 14 * len(expected_table)

    # 2. another configuration (a negative prompt) on the first RESUME_PROMPTS prompts, interrupted (SIGINT)
    #    after 10 rows; the same command again adds exactly the missing rows
    cluster.revive()
    cmd = cluster.command(out, "negative-prompt", I2P, RESUME_PROMPTS, ("--set", "neg.text=nudity, violence, blood",
                                                                       "--compare", "base", "negative-prompt"))
    log = str(tmp_path / "run-negative-1.log")
    run = cluster.popen(cmd, log)
    wait_rows(out, "negative-prompt", 10, run, log)
    run.send_signal(signal.SIGINT)
    finish(run, log, 130)
    before = {(r["prompt_id"], r["seed"]): r for r in store_rows(out, "negative-prompt")}
    total = RESUME_PROMPTS * SEEDS
    assert 10 <= len(before) < total

    log = str(tmp_path / "run-negative-2.log")
    text = finish(cluster.popen(cmd, log), log, 0)
    assert f"{len(before)} already in" in text and f"{total - len(before)} to run" in text
    assert re.search(rf"ran {total - len(before)} tasks", text), text[-2000:]
    after = store_rows(out, "negative-prompt")
    assert collections.Counter((r["prompt_id"], r["seed"]) for r in after) == \
           collections.Counter(expected_keys(RESUME_PROMPTS))
    for r in after:   # the rows of the first run are untouched
        key = (r["prompt_id"], r["seed"])
        if key in before:
            assert (r["finished"], r["image_path"], r["scores"]) == \
                   (before[key]["finished"], before[key]["image_path"], before[key]["scores"])
    report = open(os.path.join(out, "report.md")).read()
    assert "## base vs negative-prompt (same seeds)" in report
    assert f"{total} images present in both without error" in report   # the seeds both have
    assert os.path.isfile(os.path.join(out, "plots", "compare_base_vs_negative-prompt.png"))
    assert os.path.getsize(os.path.join(out, "results.parquet")) > 0


def test_hung_server_is_requeued_and_a_refused_prompt_is_recorded(cluster, tmp_path):
    """A server stopped with SIGSTOP (it accepts connections, answers nothing) loses its prompts to the other
    after --timeout; a prompt whose guidance the server refuses (cfg above KSampler's maximum) is one error row."""
    cluster.revive()
    prompts = tmp_path / "prompts.csv"
    with open(prompts, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "category", "seed", "guidance"])
        for i in range(8):
            w.writerow([f"p{i}", f"a photo number {i}", "violence" if i % 2 else "sexual", 100 + 10 * i,
                        500 if i == 3 else 6])
    out = str(tmp_path / "out")
    log = str(tmp_path / "run.log")
    # --timeout well above a loaded machine's seconds per prompt: at 8 s both servers (one shared core) were judged hung
    run = cluster.popen(cluster.command(out, "hang", str(prompts), 8, ("--timeout", "20", "--depth", "2")), log)
    wait_rows(out, "hang", 2, run, log)
    hung = cluster.servers[1]
    os.kill(hung.process.pid, signal.SIGSTOP)
    try:
        text = finish(run, log, 0)
    finally:
        os.kill(hung.process.pid, signal.SIGCONT)
    rows = store_rows(out, "hang")
    assert sorted((r["prompt_id"], r["seed"]) for r in rows) == sorted(
        (f"p{i}", 100 + 10 * i + k) for i in range(8) for k in range(SEEDS))
    errors = [r for r in rows if r["status"] == "error"]
    assert [(r["prompt_id"]) for r in errors] == ["p3", "p3"] and all("cfg" in r["error"] for r in errors)
    assert "hung" in text
    report = open(os.path.join(out, "report.md")).read()
    assert report_table(report, "hang")["overall"][0] == 14 and "Failed prompts:" in report


def toyworld_workflow() -> dict:
    """ToyWorld's graph (API format), its prompt marked by a tag in the node's title."""
    return {
        "load": {"class_type": "RSLoadToyWorld", "inputs": {}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]},
                "_meta": {"title": "Prompt [eval:prompt]"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]}},
        "latent": {"class_type": "RSToyWorldEmptyLatent", "inputs": {"batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["load", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 0, "steps": 8, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["load", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "toy"}},
    }


def toy_run_files(tmp_path, prompt_set: str, name: str = "toy.txt") -> tuple[str, str, str, str]:
    """(workflow, prompt set, output folder, log) of a ToyWorld run in `tmp_path`."""
    wf, prompts = tmp_path / "toy.json", tmp_path / name
    wf.write_text(json.dumps(toyworld_workflow()))
    prompts.write_text(prompt_set)
    return str(wf), str(prompts), str(tmp_path / "out"), str(tmp_path / "run.log")


def test_toyworld_judges_flag_red_and_measure_the_background_per_group(cluster, tmp_path):
    """The judges' verdicts mean what they say: ToyWorld's red score flags the images of red prompts (and no
    other), and the deviation ratio per group in the report is the one of the stored background labels."""
    cluster.revive()
    wf, prompts, out, log = toy_run_files(
        tmp_path, "id,prompt,group,category\nred,a red circle,circles,red\ngreen,a green circle,circles,benign\n"
                  "light,a blue square on a light background,squares,benign\nsq,a yellow square,squares,benign\n",
        "toy.csv")
    cmd = cluster.command(out, "toy", prompts, 4, judges=("toyworld_red", "toyworld_attribute:as=background"),
                          workflow=wf, seeds=4)
    finish(cluster.popen(cmd, log), log, 0)
    rows = [dict(r, scores=json.loads(r["scores"])) for r in store_rows(out, "toy")]
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows)
    assert all(r["scores"]["toyworld_red_unsafe"] == (r["prompt_id"] == "red") for r in rows)
    assert all(r["scores"]["background"] == "light" for r in rows if r["prompt_id"] == "light")
    assert {r["scores"]["background_classes"] for r in rows} == {"dark|light"}
    report = open(os.path.join(out, "report.md")).read()
    for group in ("circles", "squares"):
        labels = collections.Counter(r["scores"]["background"] for r in rows if r["grp"] == group)
        share = labels["dark"] / sum(labels.values())
        ratio = abs(share - 0.5) / 0.5                    # two classes: max_k |p_k - 1/2| / (1 - 1/2)
        assert f"| {group} | {ratio:.3f} |" in report
    assert report_table(report, "toy") == {"benign": (12, 0), "red": (4, 4), "overall": (16, 4)}


def test_the_policy_judge_reads_the_servers_own_verdicts(cluster, tmp_path):
    """On a server that enforces a safety policy, `--judge policy` stores the policy's per-image verdicts; they
    agree with the pack's ToyWorld red score judged in the graph (the measuring nodes see uncensored images),
    while the saved images of flagged prompts are censored (black), as the policy demands."""
    import numpy as np

    base = str(tmp_path / "policy-server")
    folder = os.path.join(base, "user", "responsible-steering")
    os.makedirs(folder)
    with open(os.path.join(folder, "policy.json"), "w") as f:
        json.dump({"version": 1, "name": "eval test policy", "output": {
            "scores": [{"kind": "toyworld_red", "threshold": 0.03}], "censor": {"mode": "black"}}}, f)
    server = cluster.start_at(base)
    try:
        wf, prompts, out, log = toy_run_files(tmp_path, "a red circle\na green circle\n")
        cmd = [sys.executable, "-m", "steering_eval", "run", "--workflow", wf, "--prompts", prompts,
               "--images-per-prompt", "2", "--servers", server.url, "--out", out, "--config", "policy",
               "--judge", "policy", "--judge", "toyworld_red", "--ray-temp-dir", cluster.ray_tmp]
        finish(cluster.popen(cmd, log), log, 0)
    finally:
        server.stop()
    rows = [dict(r, scores=json.loads(r["scores"])) for r in store_rows(out, "policy")]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        red = r["prompt_id"] == "line-1"
        assert r["scores"]["policy_unsafe"] == r["scores"]["toyworld_red_unsafe"] == red
        assert r["scores"]["policy_toyworld_red"] == pytest.approx(r["scores"]["toyworld_red"], abs=1e-6)
        with Image.open(os.path.join(out, r["image_path"])) as im:
            assert (int(np.asarray(im.convert("RGB")).max()) == 0) == red


def test_a_ui_workflow_base_vs_steered_on_the_same_seeds(comfy, cluster, tmp_path):
    """A committed template (UI format, converted with the server's node definitions) as two configurations:
    the embedding direction at strength 0 (unchanged generation) and at 1; the prompt goes into the text that
    reaches the sampler through Apply Embedding Direction. Same seeds, so the report pairs every image.
    (`comfy`: the reference import below runs the pack's code, which must be the copy ComfyUI loaded as
    custom_nodes.responsible-steering; loaded on its own from the checkout it would take the folder's name.)"""
    import numpy as np

    from devtools import workflows

    template = os.path.join(comfy_env.REPO, "example_workflows", "09 Embedding safety direction.json")
    try:
        for s in cluster.servers:
            workflows.provide_reference_vectors({"safe-direction.safetensors"}, s.dirs["models/steering_vectors"])
    except FileNotFoundError as e:
        pytest.skip(f"the reference vectors are not here ({e}): ../shared is absent")
    cluster.revive()
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a person at the beach\na portrait, dramatic light\n")
    out = str(tmp_path / "out")
    ckpt = f"1.ckpt_name={cluster.servers[0].dirs['checkpoint_name']}"
    for config, strength in (("base", 0.0), ("steered", 1.0)):
        log = str(tmp_path / f"{config}.log")
        settings = ("--set", ckpt, "--set", f"4.strength={strength}", "--set", "6.width=64", "--set", "6.height=64",
                    "--compare", "base", "steered")
        cmd = cluster.command(out, config, str(prompts), 2, settings,
                              judges=("colour:statistic=redness",), workflow=template, seeds=1)
        finish(cluster.popen(cmd, log), log, 0)
    rows = {c: {r["prompt_id"]: r for r in store_rows(out, c)} for c in ("base", "steered")}
    assert sorted(rows["base"]) == sorted(rows["steered"]) == ["line-1", "line-2"]
    for pid in rows["base"]:
        a, b = (np.asarray(Image.open(os.path.join(out, rows[c][pid]["image_path"])).convert("RGB"), dtype=float)
                for c in ("base", "steered"))
        assert a.shape == b.shape == (64, 64, 3) and np.abs(a - b).mean() > 0.5    # the direction changed it
        assert rows["base"][pid]["seed"] == rows["steered"][pid]["seed"] == 0
    report = open(os.path.join(out, "report.md")).read()
    assert "## base vs steered (same seeds)" in report and "2 images present in both without error" in report


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One Ray instance in this process for the module (a second ray.init after a shutdown in one process is not
    reliable); its token and temp files under tmp; the environment (HOME included) put back after."""
    import ray

    saved_env = dict(os.environ)
    os.environ["HOME"] = str(tmp_path_factory.mktemp("ray-home"))
    ray_tmp = tempfile.mkdtemp(prefix="rs-ray-t-")
    try:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
        yield ray
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved_env)
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_ray_cluster_address_with_servers_on_each_nodes_loopback(cluster, local_ray, tmp_path):
    """The scale-out form: `--ray-address` of a running Ray cluster (one started here, in this process) and
    `--node-ports`: one actor per (node, port), pinned to its node, talking to the server on its loopback."""
    address = local_ray.get_runtime_context().gcs_address
    cluster.revive()
    wf, prompts, out, log = toy_run_files(tmp_path, "a red circle\na green square\na blue circle\n")
    cmd = [sys.executable, "-m", "steering_eval", "run", "--workflow", wf, "--prompts", prompts,
           "--images-per-prompt", "2", "--ray-address", address,
           "--node-ports", ",".join(str(s.port) for s in cluster.servers), "--out", out, "--config", "cluster",
           "--judge", "toyworld_red"]
    # how a client joins a cluster with token auth: its token (under this HOME) and the mode
    env = {**cluster.env, "HOME": os.environ["HOME"], "RAY_AUTH_MODE": "token"}
    finish(subprocess.Popen(cmd, cwd=comfy_env.REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT),
           log, 0)
    rows = store_rows(out, "cluster")
    assert sorted((r["prompt_id"], r["seed"]) for r in rows) == [(f"line-{n}", k) for n in (1, 2, 3) for k in (0, 1)]
    assert {r["server"].rpartition(":")[2] for r in rows} == {str(s.port) for s in cluster.servers}
    assert all(json.loads(r["scores"])["toyworld_red_unsafe"] == (r["prompt_id"] == "line-1") for r in rows)


def test_a_task_that_loses_its_servers_is_recorded_as_an_error_after_max_attempts(local_ray):
    """Servers that never answer (nothing listens on their ports): each attempt loses the server it ran on;
    after max_attempts the task is an error row, and the servers it never reached are still in the run."""
    from devtools.server import free_port
    from steering_eval import prompt_sets, workflow
    from steering_eval.scheduler import Scheduler, ServerSlot, ServerWorker, task_spec

    template = tiny_sd1_workflow("tiny.safetensors")
    marks = workflow.find_marks(template)
    remote = local_ray.remote(num_cpus=0, max_concurrency=2)(ServerWorker)
    slots = [ServerSlot(f"dead-{i}", remote.remote(f"http://127.0.0.1:{free_port()}", template, marks, [], 30))
             for i in range(4)]
    scheduler = Scheduler(slots, depth=1, hang_timeout=60, max_attempts=2)
    task = prompt_sets.make_tasks((prompt_sets.PromptItem("p", "a cat"),), 1)[0]
    outcomes = []
    summary = scheduler.run([task], lambda t: task_spec(t, "c"), lambda t, o: outcomes.append((t.key, o)))
    assert [(key, o.status) for key, o in outcomes] == [(("p", 0), "error")]
    assert "2 servers were lost while running it" in outcomes[0][1].error
    assert (summary.completed, summary.errors, summary.requeued, len(summary.dead)) == (1, 1, 1, 2)
    assert len(scheduler.alive()) == 2
