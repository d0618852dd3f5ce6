"""Benchmark-scale evaluation: `python -m steering_eval` over one and two real ComfyUI servers, against a loop.

    .venv/bin/python -m benchmarks.bench_eval_scale [--prompts 100] [--rounds 3] [--no-write]

* Starts two ``main.py`` servers of the cached ComfyUI on free 127.0.0.1 ports (one torch thread each,
  OMP_NUM_THREADS=1) and warms each up with one prompt (ToyWorld loaded).
* Each round runs, in rotating order, on the same ToyWorld prompts (RSLoadToyWorld -> CLIPTextEncode ->
  RSToyWorldEmptyLatent -> KSampler, 8 steps -> VAEDecode -> SaveImage, one image per task, judged in the
  graph by the ToyWorld red score):
  - the command with one server (``--servers A``), with two (``--servers A B``), each an embedded Ray
    instance, depth 2, a fresh output folder, and with one server at depth 1 (one prompt at a time);
  - the same tasks sent directly to one server in a plain loop: steering_eval's worker (``ServerWorker``:
    fill, POST /prompt, poll /history, read the verdicts, GET /view) called one task after the other,
    without Ray and without the store.
  Every task of every variant and round has its own seed, so no prompt is answered from ComfyUI's
  cache.
* Measures: images/s of the scheduling phase (first task sent -> last result stored, from the command's
  own summary), the command's wall time (Ray start-up, workflow conversion and report included), the
  loop's images/s, and the scheduling overhead per prompt: (a one-server command's scheduling time - the
  loop's time) / prompts, at depth 1 (the cost of Ray, the store and the files) and at depth 2. Checks
  every run stored exactly one row per task, none failed.
* Writes its section to benchmarks/RESULTS.md (marker ``eval_scale:cpu``) only at the default size
  (100 prompts) and without --no-write; a smaller run only prints.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.bench_policy_load import TEXTS, serving, toy_prompt
from benchmarks.common import BenchContext, cpu_name, table
from devtools import comfy_env
from steering_eval import judging, prompt_sets, workflow
from steering_eval.comfy_client import ComfyClient
from steering_eval.scheduler import ServerWorker, task_spec

TITLE = "Benchmark-scale evaluation: one vs two servers, and the scheduling overhead"
DEVICES = ("cpu",)
PROMPTS, ROUNDS = 100, 3
STEPS = 8                      # ToyWorld's sampling steps: the servers' work, well above the head's per task
JUDGE = "toyworld_red"
DEPTH = 2


def facts(ctx: BenchContext) -> str:
    return (f"{cpu_name()} ({os.cpu_count()} cores, shared); servers with 1 torch thread (OMP_NUM_THREADS=1); "
            f"ToyWorld, {STEPS} steps, 1 image per task, judged by {JUDGE} in the graph; Ray {ray_version()}, "
            f"depth {DEPTH}; {ctx.rounds} rounds, rotating order")


def ray_version() -> str:
    try:
        import ray
    except ImportError:
        return "(not installed)"
    return ray.__version__


def toy_workflow() -> dict:
    prompt = toy_prompt("a shape", 0, "bench")
    prompt["latent"]["inputs"]["batch_size"] = 1
    prompt["sampler"]["inputs"]["steps"] = STEPS
    return prompt


@dataclasses.dataclass
class Run:
    images_s: float          # scheduling phase
    wall_s: float            # the whole command
    rows: int
    errors: int
    head_cpu_s: float = 0.0  # CPU of the command's processes (driver, and the Ray processes it started and reaped)
    server_cpu_s: float = 0.0


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def servers_cpu_s(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def write_prompts(path: str, n: int, seed: int) -> str:
    """A prompt set of `n` ToyWorld texts in turn, prompt i with seed `seed` + i: no two tasks are the same
    graph (ComfyUI would answer a repeated one from its cache)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prompt", "seed"])
        writer.writerows([f"p{i}", TEXTS[i % len(TEXTS)][0], seed + i] for i in range(n))
    return path


def command_run(base: str, urls: list[str], n: int, seed: int, tag: str, pids: list[int], depth: int = DEPTH) -> Run:
    out = os.path.join(base, f"out-{tag}")
    prompts_path = write_prompts(os.path.join(base, f"prompts-{tag}.csv"), n, seed)
    ray_tmp = tempfile.mkdtemp(prefix="rs-ray-")
    cmd = [sys.executable, "-m", "steering_eval", "run", "--workflow", os.path.join(base, "workflow.json"),
           "--prompts", prompts_path, "--servers", *urls, "--out", out, "--config", "bench", "--judge", JUDGE,
           "--depth", str(depth), "--timeout", "120", "--ray-temp-dir", ray_tmp]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": os.path.join(base, "home")}
    start, head, served = time.perf_counter(), children_cpu_s(), servers_cpu_s(pids)
    done = subprocess.run(cmd, cwd=comfy_env.REPO, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    head, served = children_cpu_s() - head, servers_cpu_s(pids) - served
    shutil.rmtree(ray_tmp, ignore_errors=True)
    found = re.search(r"ran (\d+) tasks in ([\d.]+) s \((\d+) failed", done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"steering_eval failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with contextlib.closing(sqlite3.connect(os.path.join(out, "results.sqlite"))) as db:
        rows = db.execute("SELECT COUNT(DISTINCT prompt_id || '/' || seed), COUNT(*) FROM results").fetchone()
    if rows[0] != rows[1]:
        raise RuntimeError(f"{rows[1]} rows for {rows[0]} tasks")
    return Run(int(found[1]) / float(found[2]), wall, rows[1], int(found[3]), head, served)


def loop_run(base: str, url: str, n: int, seed: int, tag: str, pid: int) -> Run:
    """The same tasks to one server, one after the other, through steering_eval's worker (no Ray, no store)."""
    prompts_path = write_prompts(os.path.join(base, f"prompts-{tag}.csv"), n, seed)
    info = ComfyClient(url).object_info()
    template = workflow.load_template(os.path.join(base, "workflow.json"), lambda: info)
    marks = workflow.find_marks(template)
    judges = [judging.parse_judge(JUDGE)]
    template, echoes = judging.add_judges(template, marks.output, judges, info)
    marks = dataclasses.replace(marks, echoes=tuple(echoes))
    worker = ServerWorker(url, template, marks, judges, task_timeout=120)
    tasks = prompt_sets.make_tasks(prompt_sets.load_prompt_set(prompts_path).items, 1)
    start, head, served = time.perf_counter(), time.process_time(), servers_cpu_s([pid])
    outcomes = [worker.run(task_spec(t, "loop")) for t in tasks]
    elapsed = time.perf_counter() - start
    return Run(len(tasks) / elapsed, elapsed, len(outcomes), sum(o.status != "ok" for o in outcomes),
               time.process_time() - head, servers_cpu_s([pid]) - served)


def measure(prompts: int, rounds: int) -> tuple[str, bool]:
    base = tempfile.mkdtemp(prefix="rs-eval-bench-")
    with open(os.path.join(base, "workflow.json"), "w") as f:
        json.dump(toy_workflow(), f)
    runs: dict[str, list[Run]] = {"1 server": [], "2 servers": [], "1 server, depth 1": [], "loop, 1 server": []}
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        with serving(os.path.join(base, "a"), "a", None) as a, serving(os.path.join(base, "b"), "b", None) as b:
            for target in (a, b):
                target.server.run_prompt(toy_prompt("a green circle", 1, "warm-up"))
            urls = [a.server.url, b.server.url]
            pids = [a.server.process.pid, b.server.process.pid]
            variants = {
                "1 server": lambda seed, tag: command_run(base, urls[:1], prompts, seed, tag, pids[:1]),
                "2 servers": lambda seed, tag: command_run(base, urls, prompts, seed, tag, pids),
                "1 server, depth 1": lambda seed, tag: command_run(base, urls[:1], prompts, seed, tag, pids[:1],
                                                                   depth=1),
                "loop, 1 server": lambda seed, tag: loop_run(base, urls[0], prompts, seed, tag, pids[0]),
            }
            names = list(variants)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for v, name in enumerate(order):
                    seed = 1_000_000 * (1 + r * len(names) + names.index(name))
                    runs[name].append(variants[name](seed, f"{r}-{v}"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - t0
    load_after = os.getloadavg()[0]
    med = {name: {k: statistics.median(getattr(x, k) for x in rs)
                  for k in ("images_s", "wall_s", "head_cpu_s", "server_cpu_s")} for name, rs in runs.items()}
    speedup = statistics.median(two.images_s / one.images_s for one, two in zip(runs["1 server"], runs["2 servers"]))
    def overhead_ms(variant: str) -> float:
        return statistics.median((prompts / one.images_s - loop.wall_s) / prompts * 1000
                                 for one, loop in zip(runs[variant], runs["loop, 1 server"]))

    startup = statistics.median(one.wall_s - prompts / one.images_s for one in runs["1 server"])
    bad = [f"{name}: {x.rows} rows, {x.errors} failed" for name, rs in runs.items() for x in rs
           if x.rows != prompts or x.errors]
    rows = [[name, f"{med[name]['images_s']:.2f}", f"{1000 / med[name]['images_s']:.0f}",
             f"{med[name]['wall_s']:.1f}", f"{1000 * med[name]['server_cpu_s'] / prompts:.0f}",
             f"{1000 * med[name]['head_cpu_s'] / prompts:.0f}"] for name in runs]
    lines = [
        f"{prompts} ToyWorld prompts x 1 image per variant and round ({rounds} rounds; {elapsed:.0f} s in all; "
        f"1-minute load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} cores: "
        "the two-server ratio needs a core per server free).",
        "",
        table(["variant", "images/s", "ms per image", "wall s (whole command / loop)", "server CPU ms per image",
               "client CPU ms per image (Ray start-up included)"], rows),
        "",
        f"- Two servers vs one: x {speedup:.2f} images/s (median of per-round ratios). This machine has 2 shared "
        "cores and each server takes one, so x 2 is the ceiling here; with one GPU per server the ratio "
        "tracks the number of servers as long as the head keeps up (it only moves JSON and PNG bytes).",
        f"- Scheduling overhead per prompt against the plain loop (one server, median per round): "
        f"{overhead_ms('1 server, depth 1'):+.0f} ms with depth 1 (one prompt at a time, as the loop: what Ray, "
        f"the store and the image files cost), {overhead_ms('1 server'):+.0f} ms with depth {DEPTH} (negative = "
        "faster than the loop: the next prompt already waits on the server while one runs).",
        f"- Fixed cost of the command (embedded Ray start, actors, workflow, report): {startup:.1f} s per run "
        "(median; wall time minus the scheduling phase).",
        f"- Every run stored one row per task, none failed: {'yes' if not bad else 'NO: ' + '; '.join(bad)}.",
        "- images/s = tasks / the scheduling phase (the command's own `ran N tasks in T s`: first task sent to "
        "last row stored, images written and rows committed included); the loop: tasks / its wall time. CPU: "
        "the servers' processes, and the client's: the command's processes (driver, and the Ray processes it "
        "started and reaped; Ray's start-up included) or the loop's own thread. Two servers can only beat one by "
        "as much as the cores left over by the client and by other work on the machine allow.",
    ]
    return "\n".join(lines), not bad


def run(ctx: BenchContext) -> str:
    from benchmarks.run import checked_body

    return checked_body(ctx, *measure(PROMPTS, ctx.rounds))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=PROMPTS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.rounds < 1:
        parser.error("need --prompts >= 1 and --rounds >= 1")
    from benchmarks.run import record_standalone

    ctx = BenchContext("cpu", False, args.rounds)
    body, ok = measure(args.prompts, args.rounds)
    return record_standalone("eval_scale", sys.modules[__name__], ctx, body, ok, args.prompts == PROMPTS,
                             args.no_write, f"only the full {PROMPTS}-prompt run is recorded")


if __name__ == "__main__":
    sys.exit(main())
