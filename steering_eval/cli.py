"""``python -m steering_eval``: run a benchmark over ComfyUI servers with Ray, and report on it.

    python -m steering_eval run --workflow W.json --prompts i2p_benchmark.csv --images-per-prompt 2 \\
        --servers http://127.0.0.1:8188 [URL ...] --out results/ --config base --judge nudenet
    python -m steering_eval run ... --ray-address auto --node-ports 8188,8189      # one server per GPU per node
    python -m steering_eval report --out results/ --compare base steered

Design: the command wires the modules together and owns the output folder's layout:
``results.sqlite`` (the store, written as results arrive), ``images/<config>/<prompt>_<seed>_<k>.png``
(written atomically before their rows, so a row never names a missing file), ``results.parquet``
(an export of the store, rewritten at the end of a run) and ``report.md`` with ``plots/``. A run
first skips every (prompt, seed) the configuration already has, so re-running the same command
after a crash or Ctrl-C only adds what is missing. Exit status: 0 all tasks done, 1 servers lost
with tasks left (re-run to finish), 2 bad input or missing dependency, 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time

from . import judging, prompt_sets, report, results, workflow
from .comfy_client import ComfyClient, ServerUnavailable
from .progress import Progress
from .scheduler import (INSTALL_HINT, MissingDependency, NoServerLeft, RayUnavailable, Scheduler, SchedulerError,
                        TaskOutcome, node_targets, start_ray, start_workers, task_spec)

STORE_FILE, PARQUET_FILE = "results.sqlite", "results.parquet"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m steering_eval", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate and judge every (prompt, seed), resuming what the store has")
    run.add_argument("--workflow", required=True, help="workflow JSON (API or UI format)")
    run.add_argument("--prompts", required=True, help="prompt set: I2P or Winobias CSV, a CSV with a 'prompt' "
                                                      "column, or one prompt per line")
    run.add_argument("--images-per-prompt", type=int, default=1, help="seeds per prompt (seed, seed+1, ...)")
    run.add_argument("--out", required=True, help="output folder (store, images, report)")
    run.add_argument("--config", default="default", help="name of this configuration in the store (e.g. base)")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--servers", nargs="+", metavar="URL", help="ComfyUI server URLs")
    where.add_argument("--ray-address", help="a Ray cluster (e.g. auto, or ray://head:10001); with --node-ports")
    run.add_argument("--node-ports", default="8188", help="with --ray-address: the ports of the ComfyUI servers "
                                                          "on every node's loopback, comma-separated")
    run.add_argument("--judge", action="append", default=[], metavar="KIND[:k=v,...]",
                     help=f"judge every image (repeatable); kinds: {', '.join(judging.KINDS)}")
    run.add_argument("--prompt-input", help="NODE.INPUT of the prompt text (default: found in the graph)")
    run.add_argument("--seed-input", help="NODE.INPUT of the seed (default: the sampler's)")
    run.add_argument("--guidance-input", help="NODE.INPUT of the guidance scale, or 'none' (default: the "
                                              "sampler's cfg)")
    run.add_argument("--output-node", help="the output node whose images are judged (default: the only "
                                           "SaveImage / PreviewImage)")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="change an input of the workflow for this configuration (repeatable)")
    run.add_argument("--no-row-guidance", action="store_true",
                     help="keep the workflow's guidance even where the prompt set gives one per row (I2P)")
    run.add_argument("--base-seed", type=int, default=0, help="first seed of prompts without their own seed")
    run.add_argument("--offset", type=int, default=0, help="first prompt of the set to use")
    run.add_argument("--limit", type=int, help="number of prompts to use")
    run.add_argument("--depth", type=int, default=2, help="prompts queued per server at most (back-pressure)")
    run.add_argument("--timeout", type=float, default=600.0,
                     help="seconds without a finished prompt after which a server counts as hung")
    run.add_argument("--retry-errors", action="store_true", help="run again the prompts that failed before")
    run.add_argument("--ray-temp-dir", help="temp folder of the embedded Ray instance (default Ray's)")
    run.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                     help="add a side-by-side of configurations A and B to the report (repeatable)")
    rep = sub.add_parser("report", help="write report.md, plots and results.parquet from the store")
    rep.add_argument("--out", required=True)
    rep.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"))
    return p


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_object_info(args, ray) -> dict:
    """/object_info of the first server that answers (a UI workflow's conversion and the judges' defaults)."""
    if args.servers:
        errors = []
        for url in args.servers:
            try:
                return ComfyClient(url).object_info()
            except ServerUnavailable as e:
                errors.append(str(e))
        raise NoServerLeft("no ComfyUI server answers: " + "; ".join(errors))
    targets = node_targets(ray.nodes(), ports(args.node_ports))
    if not targets:
        raise NoServerLeft(f"the Ray cluster at {args.ray_address} has no alive node")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    fetch = ray.remote(num_cpus=0)(lambda url: ComfyClient(url).object_info())
    _, url, node = targets[0]
    return ray.get(fetch.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(url))


def ports(text: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SchedulerError(f"--node-ports: expected comma-separated port numbers; got {text!r}") from None
    if not values or not all(0 < v < 65536 for v in values):
        raise SchedulerError(f"--node-ports: expected ports 1..65535; got {text!r}")
    return values


def image_name(config: str, prompt_id: str, seed: int, index: int, ext: str) -> str:
    safe = prompt_sets.safe_name
    return os.path.join("images", safe(config), f"{safe(prompt_id)}_{seed}_{index}{ext or '.png'}")


def write_bytes(path: str, data: bytes) -> None:
    from steering.files import write_atomically     # the pack's own (torch-free), as report.py's label maths

    write_atomically(path, data)


def outcome_rows(config: str, task: prompt_sets.Task, outcome: TaskOutcome, out_dir: str,
                 store: results.ResultStore) -> list[results.ResultRow]:
    """The rows of one outcome; its images are written first (unless the store has this task already)."""
    item = task.item
    common = dict(config=config, prompt_id=item.prompt_id, seed=task.seed, categories=item.categories,
                  group=item.group, text=item.text, server=outcome.server, execution_s=outcome.execution_s,
                  finished=time.time())
    if outcome.status != "ok":
        return [results.ResultRow(image_index=0, status="error", error=outcome.error, **common)]
    if store.has(config, item.prompt_id, task.seed):
        return []
    rows = []
    for k, (data, ext, verdict) in enumerate(zip(outcome.images, outcome.extensions, outcome.verdicts)):
        rel = image_name(config, item.prompt_id, task.seed, k, ext)
        write_bytes(os.path.join(out_dir, rel), data)
        rows.append(results.ResultRow(image_index=k, status="ok", scores=verdict, image_path=rel, **common))
    return rows


def finish(out_dir: str, store: results.ResultStore, comparisons: list, strict: bool = True) -> str:
    """results.parquet and report.md; a comparison with a configuration that has no rows is an error, or
    (not `strict`: at the end of a run, whose partner may not have run yet) left out with a note."""
    rows = store.rows()
    by_config = {name: [r for r in rows if r.config == name] for name in store.configs()}
    if not strict:
        for pair in list(comparisons):
            missing = [n for n in pair if not by_config.get(n)]
            if missing:
                say(f"(comparison {pair[0]} vs {pair[1]} left out of the report: no rows for {missing[0]} yet)")
                comparisons = [c for c in comparisons if c != pair]
    try:
        results.export_parquet(rows, os.path.join(out_dir, PARQUET_FILE))
    except ImportError:
        say(f"(results.parquet not written: pyarrow is not installed; {INSTALL_HINT})")
    return report.write_report(out_dir, by_config, [tuple(c) for c in comparisons])


def run(args) -> int:
    items = prompt_sets.load_prompt_set(args.prompts, args.offset, args.limit).items
    tasks = prompt_sets.make_tasks(items, args.images_per_prompt, args.base_seed)
    judges = [judging.parse_judge(j) for j in args.judge]
    judging.check_judges(judges)
    os.makedirs(args.out, exist_ok=True)
    info_cache: dict = {}

    def ray():   # started when first needed: bad input fails before Ray starts, a finished run never starts it
        return start_ray(args.ray_address, args.ray_temp_dir, num_cpus=2)

    def object_info() -> dict:
        if not info_cache:
            info_cache.update(first_object_info(args, None if args.servers else ray()))
        return info_cache

    template = workflow.override(workflow.load_template(args.workflow, object_info), args.set)
    marks = workflow.find_marks(template, args.prompt_input, args.seed_input, args.guidance_input, args.output_node)
    template, echoes = judging.add_judges(template, marks.output, judges, object_info() if judges else {})
    marks = dataclasses.replace(marks, echoes=tuple(echoes))
    store = results.ResultStore(os.path.join(args.out, STORE_FILE))
    try:
        settings = {"workflow": os.path.abspath(args.workflow), "prompts": os.path.abspath(args.prompts),
                    "judges": args.judge, "set": args.set, "marks": str(marks)}
        store.register_config(args.config, workflow.fingerprint(
            {"template": template, "marks": str(marks), "judges": [dataclasses.asdict(j) for j in judges],
             "row_guidance": not args.no_row_guidance}), settings)
        if args.retry_errors:
            say(f"{store.delete_errors(args.config)} failed prompts will run again")
        done = store.done_keys(args.config)
        todo = [t for t in tasks if t.key not in done]
        say(f"{len(tasks)} tasks ({len(items)} prompts x {args.images_per_prompt} seeds); {len(tasks) - len(todo)} "
            f"already in {args.out}; {len(todo)} to run")
        status = 0
        if todo:
            status = schedule(args, ray(), template, marks, judges, tasks, todo, store)
        say(f"report: {finish(args.out, store, args.compare, strict=False)}")
        return status
    finally:
        store.close()


def schedule(args, ray, template, marks, judges, tasks, todo, store) -> int:
    targets = ([(url, url, None) for url in args.servers] if args.servers
               else node_targets(ray.nodes(), ports(args.node_ports)))
    progress = Progress(len(tasks), len(tasks) - len(todo))
    slots = start_workers(ray, targets, template, marks, judges, args.depth, args.timeout, progress.note)
    scheduler = Scheduler(slots, args.depth, args.timeout)

    def on_result(task, outcome: TaskOutcome) -> None:
        rows = outcome_rows(args.config, task, outcome, args.out, store)
        store.add(rows)
        progress.servers = f"{len(scheduler.alive())}/{len(slots)}"
        progress.update(images=len(outcome.images), error=outcome.status != "ok")

    def on_event(message: str) -> None:
        progress.servers = f"{len(scheduler.alive())}/{len(slots)}"
        progress.requeued = scheduler.summary.requeued
        progress.note(message)

    progress.servers = f"{len(slots)}/{len(slots)}"
    try:
        summary = scheduler.run(todo, lambda t: task_spec(t, args.config, not args.no_row_guidance), on_result,
                                on_event)
    except NoServerLeft as e:
        progress.close()
        say(f"stopped: {e}; the results so far are stored: run the same command again to finish")
        return 1
    progress.requeued = summary.requeued
    progress.close()
    say(f"ran {summary.completed} tasks in {summary.elapsed_s:.3f} s ({summary.errors} failed, "
        f"{summary.requeued} re-queued" + (f"; lost servers: {json.dumps(summary.dead)}" if summary.dead else "")
        + ")")
    return 0


def report_only(args) -> int:
    path = os.path.join(args.out, STORE_FILE)
    if not os.path.isfile(path):
        raise results.StoreError(f"no results store {path}: run `python -m steering_eval run --out {args.out} ...` "
                                 "first")
    with results.ResultStore(path) as store:
        say(f"report: {finish(args.out, store, args.compare)}")
    return 0


def interrupt_on_term(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, interrupt_on_term)   # a kill (TERM) ends like Ctrl-C
    try:
        return run(args) if args.command == "run" else report_only(args)
    except KeyboardInterrupt:
        say("interrupted: every finished task is stored; run the same command again to resume")
        return 130
    except (ValueError, NoServerLeft, MissingDependency, RayUnavailable) as e:   # the modules' errors: ValueErrors
        say(f"error: {e}")
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
