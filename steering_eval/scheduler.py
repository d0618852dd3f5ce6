"""Scheduling (prompt, seed) tasks over ComfyUI servers with Ray.

Design:
* One Ray actor per ComfyUI server (``ServerWorker``): it owns that server's HTTP connection, holds
  the workflow (sent once, when the actor starts) and, per task, fills in the prompt text, seed and
  guidance, POSTs the prompt JSON (nothing else is uploaded), polls /history, reads the judges'
  verdicts and fetches the images' bytes with GET /view. The actor is threaded (``max_concurrency``
  = depth + 1), so up to ``depth`` prompts wait in a server's queue while one runs: the server never
  idles between prompts, and no server holds more than ``depth`` of ours (back-pressure: the head
  gives a server a new task only when one of its tasks came back).
* The head (``Scheduler.run``) keeps the queue, and is the only writer of results: a task's outcome
  is handed to ``on_result`` (which stores it) when it arrives. Faults:
  - the server refuses or fails one prompt (``PromptFailed``): the outcome is an error, recorded
    for that prompt; the run goes on;
  - the server does not answer (``ServerUnavailable``: refused connection, timeouts) or its actor
    dies: the server is marked dead, its actor killed, and every task it held goes back to the
    front of the queue for the other servers;
  - the server hangs (it accepts connections but none of its tasks finishes for ``hang_timeout``
    seconds, e.g. SIGSTOP): the same as dead. Should it wake up, its late results are never read
    (its actor is gone), and the store's keys make a duplicate impossible anyway.
  A task whose server was lost ``max_attempts`` times (3) is recorded as an error rather than tried again,
  so one prompt that crashes or hangs servers cannot take them all down. When no server is left,
  ``NoServerLeft`` is raised; what finished is stored, and a re-run resumes.
* Placement: with explicit server URLs every actor runs on the head's Ray node (they only do
  HTTP); with a cluster and ``node_ports``, one actor per (alive node, port) is pinned to its node
  and talks to the server on that node's loopback, so servers need not listen on the network.
* Ray is imported only when a run starts (it is an optional dependency: ``require_ray``).
"""
from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from .comfy_client import ComfyClient, PromptFailed, ServerUnavailable
from .judging import Judge, JudgeError, read_verdicts
from .prompt_sets import Task
from .workflow import Marks, fill

MAX_ATTEMPTS = 3    # servers lost while running one task before it is recorded as an error
INSTALL_HINT = 'pip install "ray==2.60.0" "pyarrow==26.0.1"   (or: pip install "responsible-steering[eval]")'


class MissingDependency(RuntimeError):
    """An optional dependency of the evaluation command is not installed."""


class RayUnavailable(RuntimeError):
    """The Ray cluster given cannot be reached or joined."""


class NoServerLeft(RuntimeError):
    """Every ComfyUI server is dead or hung while tasks remain."""


class SchedulerError(ValueError):
    """A scheduling request that cannot work (no servers, a bad depth or timeout)."""


def require_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependency(f"the evaluation schedules with Ray, which is not installed here; {INSTALL_HINT}") \
            from None
    return ray


@dataclass(frozen=True)
class TaskSpec:
    """What a worker needs to run one task (small: the workflow itself is sent once per actor)."""
    prompt_id: str
    text: str
    seed: int
    guidance: float | None
    filename_prefix: str


@dataclass
class TaskOutcome:
    prompt_id: str
    seed: int
    server: str
    status: str                                           # "ok" or "error"
    error: str | None = None
    images: list[bytes] = field(default_factory=list)
    extensions: list[str] = field(default_factory=list)   # ".png", as the server named them
    verdicts: list[dict] = field(default_factory=list)    # per image, the judges' columns
    execution_s: float | None = None


class ServerWorker:
    """One ComfyUI server (a Ray actor in a run; a plain object in a loop)."""

    def __init__(self, url: str, template: dict, marks: Marks, judges: list[Judge], task_timeout: float,
                 request_timeout: float = 30.0, label: str | None = None):
        self.client = ComfyClient(url, request_timeout)
        self.template, self.marks, self.judges = template, marks, judges
        self.task_timeout = task_timeout
        self.label = label or url
        self.client_id = f"rs-eval-{uuid.uuid4().hex[:12]}"

    def ping(self) -> str:
        self.client.ping()
        return self.label

    def run(self, spec: TaskSpec) -> TaskOutcome:
        """The task's outcome; raises ServerUnavailable when the server does not answer (re-queue)."""
        prompt = fill(self.template, self.marks, spec.text, spec.seed, spec.guidance, spec.filename_prefix)
        outcome = TaskOutcome(spec.prompt_id, spec.seed, self.label, "ok")
        try:
            prompt_id = self.client.submit(prompt, self.client_id)
            done = self.client.wait(prompt_id, self.task_timeout)
            refs = (done.entry.get("outputs", {}).get(self.marks.output) or {}).get("images") or []
            if not refs:
                raise PromptFailed(f"output node {self.marks.output} returned no images")
            outcome.verdicts = read_verdicts(self.judges, done.entry["outputs"], self.marks.output, len(refs))
            outcome.images = [self.client.image(ref) for ref in refs]
            outcome.extensions = ["." + ref["filename"].rpartition(".")[2].lower() for ref in refs]
            outcome.execution_s = done.execution_s
        except (PromptFailed, JudgeError) as e:
            outcome.status, outcome.error, outcome.images, outcome.verdicts = "error", str(e), [], []
        return outcome


def task_spec(task: Task, config: str, use_row_guidance: bool = True) -> TaskSpec:
    from .prompt_sets import safe_name

    return TaskSpec(task.item.prompt_id, task.item.text, task.seed,
                    task.item.guidance if use_row_guidance else None,
                    f"rs_eval/{safe_name(config)}/{safe_name(task.item.prompt_id)}_{task.seed}")


@dataclass
class ServerSlot:
    label: str
    actor: object
    alive: bool = True
    inflight: dict = field(default_factory=dict)          # ObjectRef -> Task
    last_progress: float = 0.0
    completed: int = 0
    reason: str = ""


@dataclass
class RunSummary:
    completed: int = 0
    errors: int = 0
    requeued: int = 0
    dead: dict = field(default_factory=dict)              # server -> why
    elapsed_s: float = 0.0


class Scheduler:
    """Runs tasks over server actors (see the module's docstring)."""

    def __init__(self, slots: list[ServerSlot], depth: int, hang_timeout: float, poll_s: float = 0.1,
                 max_attempts: int = MAX_ATTEMPTS):
        if not slots:
            raise SchedulerError("no ComfyUI servers to schedule on")
        if depth < 1 or hang_timeout <= 0:
            raise SchedulerError(f"depth must be >= 1 and the timeout > 0; got {depth} and {hang_timeout}")
        self.ray = require_ray()
        self.slots, self.depth, self.hang_timeout, self.poll_s = slots, depth, hang_timeout, poll_s
        self.max_attempts = max_attempts
        self.summary = RunSummary()
        self.attempts: collections.Counter = collections.Counter()    # task key -> servers lost running it

    def alive(self) -> list[ServerSlot]:
        return [s for s in self.slots if s.alive]

    def requeue(self, task: Task, slot: ServerSlot, pending: collections.deque,
                on_result: Callable[[Task, TaskOutcome], None]) -> None:
        """Back to the front of the queue; after `max_attempts` servers were lost while holding it, the task is
        recorded as an error instead (a prompt that kills or hangs every server must not take the cluster)."""
        self.attempts[task.key] += 1
        if self.attempts[task.key] >= self.max_attempts:
            self.summary.completed += 1
            self.summary.errors += 1
            on_result(task, TaskOutcome(task.item.prompt_id, task.seed, slot.label, "error",
                                        error=f"{self.attempts[task.key]} servers were lost while running it "
                                              f"(last: {slot.reason})"))
        else:
            pending.appendleft(task)
            self.summary.requeued += 1

    def fail(self, slot: ServerSlot, reason: str, pending: collections.deque, owner: dict,
             on_result: Callable[[Task, TaskOutcome], None]) -> None:
        slot.alive, slot.reason = False, reason
        self.summary.dead[slot.label] = reason
        for ref, task in list(slot.inflight.items()):
            owner.pop(ref, None)
            self.requeue(task, slot, pending, on_result)
        slot.inflight.clear()
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:   # noqa: BLE001 - the actor may be gone already
            pass

    def run(self, tasks: list[Task], spec: Callable[[Task], TaskSpec],
            on_result: Callable[[Task, TaskOutcome], None],
            on_event: Callable[[str], None] = lambda message: None) -> RunSummary:
        ray = self.ray
        summary = self.summary = RunSummary()
        start = time.monotonic()
        pending = collections.deque(tasks)
        owner: dict = {}                                   # ObjectRef -> ServerSlot
        while pending or owner:
            for slot in self.alive():
                while pending and len(slot.inflight) < self.depth:
                    task = pending.popleft()
                    ref = slot.actor.run.remote(spec(task))
                    if not slot.inflight:
                        slot.last_progress = time.monotonic()
                    slot.inflight[ref] = task
                    owner[ref] = slot
            if not owner:
                raise NoServerLeft(f"no ComfyUI server left with {len(pending)} tasks to run: "
                                   + "; ".join(f"{k}: {v}" for k, v in summary.dead.items()))
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=self.poll_s)
            if ready:   # and every other result that is in already
                ready, _ = ray.wait(list(owner), num_returns=len(owner), timeout=0)
            for ref in ready:
                slot = owner.pop(ref, None)
                if slot is None:
                    continue
                task = slot.inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except (ServerUnavailable, ray.exceptions.RayActorError) as e:
                    slot.inflight[ref] = task            # fail() re-queues it with the others
                    self.fail(slot, short_reason(e), pending, owner, on_result)
                    on_event(f"server {slot.label} is down ({slot.reason}); its tasks are re-queued")
                    continue
                except ray.exceptions.RayTaskError as e:   # a bug in the worker: record it for this task
                    outcome = TaskOutcome(task.item.prompt_id, task.seed, slot.label, "error",
                                          error=f"worker error: {short_reason(e)}")
                slot.last_progress = time.monotonic()
                slot.completed += 1
                summary.completed += 1
                summary.errors += outcome.status != "ok"
                on_result(task, outcome)
            now = time.monotonic()
            for slot in self.alive():
                if slot.inflight and now - slot.last_progress > self.hang_timeout:
                    self.fail(slot, f"no prompt finished for {self.hang_timeout:.0f} s (hung)", pending, owner,
                              on_result)
                    on_event(f"server {slot.label} is hung; its tasks are re-queued")
        summary.elapsed_s = time.monotonic() - start
        return summary


def short_reason(error: Exception) -> str:
    """The last line of a (Ray-wrapped) error, without the class path Ray puts before it."""
    last = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return last.rpartition("ServerUnavailable: ")[2][:300] if "ServerUnavailable: " in last else last[:300]


# ---------------------------------------------------------------------------- Ray set-up

def start_ray(address: str | None, temp_dir: str | None = None, num_cpus: int | None = None):
    """Connect to the cluster at `address`, or start an embedded local Ray instance (address None)."""
    import os

    ray = require_ray()
    if ray.is_initialized():
        return ray
    # the actors import this package: ship it with the job, so cluster nodes need not have it installed
    runtime_env = {"py_modules": [os.path.dirname(os.path.abspath(__file__))]}
    if address:
        try:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        except (ConnectionError, RuntimeError) as e:
            raise RayUnavailable(f"cannot join the Ray cluster at {address}: {str(e).strip().splitlines()[-1][:500]} "
                                 "(a cluster with token authentication needs RAY_AUTH_MODE=token and its token "
                                 "here, e.g. in ~/.ray/auth_token)") from None
    else:
        ray.init(num_cpus=num_cpus or 1, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir,
                 runtime_env=runtime_env)
    return ray


def node_targets(nodes: list[dict], ports: list[int]) -> list[tuple[str, str, str]]:
    """(label, url, node id) per alive Ray node (``ray.nodes()`` entries) and port: each actor talks to
    the server on its own node's loopback."""
    targets = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        for port in ports:
            label = f"{node.get('NodeManagerAddress', '?')}:{port}"
            targets.append((label, f"http://127.0.0.1:{port}", node["NodeID"]))
    return targets


def start_workers(ray, targets: list[tuple[str, str, str | None]], template: dict, marks: Marks,
                  judges: list[Judge], depth: int, task_timeout: float,
                  on_event: Callable[[str], None] = lambda message: None) -> list[ServerSlot]:
    """One actor per target (label, url, node id or None); the ones whose server answers /system_stats."""
    remote = ray.remote(num_cpus=0, max_concurrency=depth + 1, max_restarts=0)(ServerWorker)
    actors = []
    for label, url, node_id in targets:
        options = {}
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
        actors.append((label, remote.options(**options).remote(url, template, marks, judges, task_timeout,
                                                               label=label)))
    slots = []
    for label, actor in actors:
        try:
            ray.get(actor.ping.remote(), timeout=60)
            slots.append(ServerSlot(label, actor))
        except Exception as e:   # noqa: BLE001 - any failure means this server is not usable now
            on_event(f"server {label} does not answer ({type(e).__name__}); left out")
            ray.kill(actor, no_restart=True)
    return slots
