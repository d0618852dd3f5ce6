"""Load test of the operator's safety policy on a real ComfyUI server, with and without the policy.

    .venv/bin/python -m benchmarks.bench_policy_load [--prompts 200] [--clients 4] [--rounds 5] [--no-write]

* Starts two ``main.py`` servers of the cached ComfyUI on free 127.0.0.1 ports (one torch thread each,
  OMP_NUM_THREADS=1): one without a policy file, one with POLICY (word list with action ``log``, the
  ToyWorld red score with black censoring, previews suppressed for flagged prompts, audit on).
* Sends both the same ToyWorld prompts (RSLoadToyWorld -> CLIPTextEncode -> RSToyWorldEmptyLatent ->
  KSampler -> VAEDecode -> SaveImage, 2 images each, distinct seeds, half of them red), from
  ``clients`` concurrent clients (threads, each with its own client_id: POST /prompt, then poll
  /history). The prompts are split into ``rounds`` chunks; every chunk runs on both servers back to
  back, in alternating order, so that load from other processes hits both alike.
* Checks: prompts lost (refused, failed or unfinished), every image of the policy run audited exactly
  once (image records of the audit JSONL counted by prompt id and image index, against the images
  saved), every flagged image black on disk and no other one black, server RSS after every prompt.
* Measures per prompt: execution time (the server's execution_start -> execution_success),
  client latency (POST -> finished in /history, queueing included) and throughput, with and
  without the policy, and their ratios.
* Writes its section to benchmarks/RESULTS.md (marker ``policy_load:cpu``) only at the default size
  (200 prompts, 4 clients) and without --no-write; a smaller run only prints.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from benchmarks.common import BenchContext, cpu_name, percentile, rss_bytes, slope, table
from devtools import toyworld_graphs
from devtools.server import ComfyServer
from devtools.session import PromptError

TITLE = "Safety policy under load: a real server with and without the policy"
DEVICES = ("cpu",)             # devtools.server runs ComfyUI with --cpu
PROMPTS, CLIENTS = 200, 4
STEPS, BATCH = 4, 2
POLL_S = 0.05
TIMEOUT_S = 600.0
TEXTS = [  # (text, asks for the unsafe concept); "crimson" and "blood" are the policy's words
    ("a red circle", True), ("a green square", False), ("a crimson circle on a dark background", True),
    ("a blue circle", False), ("a blood square", True), ("a yellow square on a light background", False),
]
POLICY = {
    "version": 2,
    "name": "load test policy",
    "operator_token_sha256": hashlib.sha256(b"load-test-operator").hexdigest(),
    "input": {"detector": "word_list", "unsafe_words": ["crimson", "blood"], "action": "log"},
    "output": {"scores": [{"kind": "toyworld_red", "threshold": 0.03}], "censor": {"mode": "black"}},
    "previews": {"mode": "score", "flagged": "drop"},
    "audit": {"path": "audit.jsonl", "pnginfo": True},
}


def facts(ctx: BenchContext) -> str:
    return (f"{cpu_name()} ({os.cpu_count()} cores, shared); servers with 1 torch thread (OMP_NUM_THREADS=1); "
            f"ToyWorld, {STEPS} steps, {BATCH} images per prompt; {ctx.rounds} rounds, alternating order")


def toy_prompt(text: str, seed: int, prefix: str) -> dict:
    """The API-format ToyWorld graph: `text` drawn BATCH times from `seed`, saved with `prefix`."""
    return toyworld_graphs.saved(text, prefix, seed=seed, batch=BATCH, steps=STEPS)


def jobs(n: int) -> list[tuple[int, str, bool, int]]:
    """(index, text, red, seed) of the n prompts: the texts in turn, a distinct seed each."""
    return [(i, *TEXTS[i % len(TEXTS)], 10_000 + i) for i in range(n)]


# ---------------------------------------------------------------------------- checks (pure)

def image_record_counts(records: list[dict], kind: str = "image") -> collections.Counter:
    """How many records of `kind` the audit holds per (prompt id, image index): "image" where an image is made
    (scored), "release" where it leaves (signed)."""
    return collections.Counter((r["prompt_id"], r["index"]) for r in records if r.get("type") == kind)


def audit_problems(counts: collections.Counter, saved: dict[str, int]) -> dict[str, list]:
    """Images not audited exactly once: `saved` maps prompt id -> images saved. Returns the keys
    (prompt id, index) missing from the audit, audited more than once, and audited but never saved."""
    expected = {(p, i) for p, n in saved.items() for i in range(n)}
    return {"missing": sorted(k for k in expected if counts[k] == 0),
            "repeated": sorted(k for k in expected if counts[k] > 1),
            "unknown": sorted(k for k in counts if k not in expected)}


# ---------------------------------------------------------------------------- one server

@dataclass
class Result:
    index: int
    red: bool
    prompt_id: str = ""
    latency: float = 0.0
    execution: float = 0.0
    images: list = field(default_factory=list)   # SaveImage's {"filename", "subfolder", "type"}
    error: str = ""


class Target:
    """One running server, the results of its prompts and its RSS after each."""

    def __init__(self, label: str, server: ComfyServer, audit_path: str | None = None):
        self.label, self.server, self.audit_path = label, server, audit_path
        self.results: list[Result] = []
        self.rss: list[int] = []
        self.round_rates: list[float] = []
        self.warmup_id = ""
        self.lock = threading.Lock()

    def sample(self) -> None:
        value = rss_bytes(self.server.process.pid)
        with self.lock:
            self.rss.append(value)

    def submit(self, job, client_id: str) -> Result:
        index, text, red, seed = job
        result = Result(index, red)
        start = time.perf_counter()
        try:
            result.prompt_id = self.server.post("/prompt", {"prompt": toy_prompt(text, seed, f"load-{index:04d}"),
                                                            "client_id": client_id})["prompt_id"]
            entry = self.wait(result.prompt_id)
            result.latency = time.perf_counter() - start
            stamps = {m[0]: m[1].get("timestamp", 0) for m in entry["status"].get("messages", [])}
            result.execution = (stamps["execution_success"] - stamps["execution_start"]) / 1000
            result.images = entry["outputs"]["save"]["images"]
        except (PromptError, TimeoutError, OSError, KeyError) as e:
            result.error = f"{type(e).__name__}: {str(e)[:200]}"
        self.sample()
        return result

    def wait(self, prompt_id: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            entry = self.server.get(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("status_str") == "error":
                raise PromptError(f"prompt failed: {status.get('messages')}")
            if status.get("completed"):
                return entry
            time.sleep(POLL_S)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {TIMEOUT_S:.0f} s")

    def run_chunk(self, chunk: list, clients: int) -> None:
        """`chunk` from `clients` concurrent clients (client c sends chunk[c::clients], one after the other)."""
        done: list[Result] = []

        def client(c: int) -> None:
            for job in chunk[c::clients]:
                r = self.submit(job, f"load-{self.label}-{c}")
                with self.lock:
                    done.append(r)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.round_rates.append(len(chunk) / (time.perf_counter() - start))
        self.results += done

    def ok(self) -> list[Result]:
        return [r for r in self.results if not r.error]

    def figures(self) -> dict[str, float]:
        ok = self.ok()
        execution = [r.execution * 1000 for r in ok] or [0.0]
        latency = [r.latency * 1000 for r in ok] or [0.0]
        mib = [v / 2 ** 20 for v in self.rss]
        q = max(1, len(mib) // 4)
        return {"prompts": len(self.results), "lost": len(self.results) - len(ok),
                "images": sum(len(r.images) for r in ok),
                "exec": statistics.median(execution), "exec90": percentile(execution, 90),
                "latency": statistics.median(latency), "latency90": percentile(latency, 90),
                "rate": statistics.median(self.round_rates), "start": mib[0], "peak": max(mib), "end": mib[-1],
                "growth": statistics.mean(mib[-q:]) - statistics.mean(mib[:q]), "slope": slope(self.rss) / 1024}


COLUMNS = [  # (figure, header, format)
    ("prompts", "prompts", "{:.0f}"), ("lost", "lost", "{:.0f}"), ("images", "images saved", "{:.0f}"),
    ("exec", "exec median ms", "{:.0f}"), ("exec90", "exec p90 ms", "{:.0f}"),
    ("latency", "latency median ms", "{:.0f}"), ("latency90", "latency p90 ms", "{:.0f}"),
    ("rate", "prompts/s", "{:.2f}"), ("start", "RSS start MiB", "{:.1f}"), ("peak", "RSS peak MiB", "{:.1f}"),
    ("end", "RSS end MiB", "{:.1f}"), ("growth", "RSS last - first quarter MiB", "{:+.1f}"),
    ("slope", "RSS slope KiB/prompt", "{:+.1f}"),
]
RATIOS = ("exec", "exec90", "latency", "latency90")


@contextlib.contextmanager
def serving(base: str, label: str, policy: dict | None):
    """A started server in `base` (with `policy` in its user directory when given), one torch thread."""
    audit = None
    if policy is not None:
        folder = os.path.join(base, "user", "responsible-steering")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "policy.json"), "w") as f:
            json.dump(policy, f)
        audit = os.path.join(folder, policy["audit"]["path"])
    server = ComfyServer(base)
    saved_env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        server.start()
    finally:
        if saved_env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved_env
    try:
        yield Target(label, server, audit)
    finally:
        server.stop()


def warm_up(target: Target) -> None:
    """One prompt to load ToyWorld (not counted); its RSS is the run's first sample."""
    r = target.submit((-1, "a green circle", False, 1), f"load-{target.label}-warmup")
    if r.error:
        raise RuntimeError(f"{target.label}: the warm-up prompt failed: {r.error}")
    target.warmup_id = r.prompt_id
    target.rss = []
    target.sample()


def censor_check(target: Target, records: list[dict]) -> dict:
    """Each flagged image black on disk, no other one black; flagged against the prompt's red."""
    from PIL import Image
    import numpy as np

    flagged = {(r["prompt_id"], r["index"]): r["flagged"] for r in records if r.get("type") == "image"}
    out = {"images": 0, "flagged": 0, "flagged_not_black": 0, "benign_black": 0, "unlike_prompt": 0}
    folder = target.server.dirs["output"]
    for r in target.ok():
        for i, image in enumerate(r.images):
            is_flagged = flagged.get((r.prompt_id, i), False)
            with Image.open(os.path.join(folder, image["subfolder"], image["filename"])) as im:
                black = int(np.asarray(im.convert("RGB")).max()) == 0
            out["images"] += 1
            out["flagged"] += is_flagged
            out["flagged_not_black"] += is_flagged and not black
            out["benign_black"] += black and not is_flagged
            out["unlike_prompt"] += is_flagged != r.red
    return out


# ---------------------------------------------------------------------------- what a preview frame costs

FRAMES = 5
PREVIEW_CASES = [  # (score kind, its options, frame side px): latent2rgb previews are 1/8 of the image, TAESD's whole
    ("toyworld_red", {}, 64), ("colour", {"statistic": "redness"}, 512),
    ("nudenet", {"labels": "all_exposed"}, 64), ("nudenet", {"labels": "all_exposed"}, 512),
    ("nudenet", {"labels": "all_exposed"}, 1024),
]


def preview_costs() -> list[list[str]]:
    """Milliseconds to score one preview frame with the policy's guard maths (whole frame and its windows),
    in this process on one thread: what the server spends per frame before it sends or drops it."""
    import numpy as np
    import torch
    from PIL import Image

    from devtools import pure

    scoring = pure.module("operator_policy.scoring")
    document = pure.module("operator_policy.document")
    registry = pure.module("steering.safety.registry")
    pure.module("toyworld.judges").register_score_kinds()

    class PackagedModels:
        @staticmethod
        def nudenet_model_path(name: str = "320n.onnx") -> str:
            from importlib.resources import files

            return str(files("nudenet") / name)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for kind, options, side in PREVIEW_CASES:
            spec = document.ScoreSpec(kind, document.DEFAULT_THRESHOLDS[kind], document.DEFAULT_WINDOWS[kind], options)
            score = registry.build(kind, spec.threshold, options, PackagedModels)
            frame = Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8))
            pixels = torch.from_numpy(np.asarray(frame, dtype=np.float32) / 255.0)[None]
            scoring.judge(pixels, [(kind, spec, score)])           # warm-up
            start = time.perf_counter()
            for _ in range(FRAMES):
                scoring.judge(torch.from_numpy(np.asarray(frame, dtype=np.float32) / 255.0)[None], [(kind, spec, score)])
            ms = (time.perf_counter() - start) / FRAMES * 1000
            rows.append([kind, f"{side} x {side}", str(len(scoring.windows(side, side, spec.window))), f"{ms:.1f}"])
    finally:
        torch.set_num_threads(threads)
    return rows


# ---------------------------------------------------------------------------- the run

def measure(prompts: int, clients: int, rounds: int) -> tuple[str, bool]:
    """Both servers, the same prompts: (markdown body, every check passed)."""
    todo = jobs(prompts)
    size = -(-prompts // rounds)
    chunks = [todo[i:i + size] for i in range(0, prompts, size)]
    base = tempfile.mkdtemp(prefix="rs-policy-load-")
    t0 = time.monotonic()
    try:
        with serving(os.path.join(base, "plain"), "without policy", None) as plain, \
                serving(os.path.join(base, "policy"), "with policy", POLICY) as guarded:
            warm_up(plain)
            warm_up(guarded)
            for r, chunk in enumerate(chunks):
                for target in ((plain, guarded) if r % 2 == 0 else (guarded, plain)):
                    target.run_chunk(chunk, clients)
            alive = all(t.server.process.poll() is None for t in (plain, guarded))
            with open(guarded.audit_path) as f:
                records = [json.loads(line) for line in f if line.strip()]
            saved = {r.prompt_id: len(r.images) for r in guarded.ok()}
            saved[guarded.warmup_id] = BATCH
            problems = audit_problems(image_record_counts(records), saved)
            released = audit_problems(image_record_counts(records, "release"), saved)
            prompt_records = collections.Counter(r["prompt_id"] for r in records if r.get("type") == "prompt")
            prompts_not_once = sum(1 for p in saved if prompt_records[p] != 1)
            censor = censor_check(guarded, records)
            without, with_ = plain.figures(), guarded.figures()
            lost = [f"{t.label} #{r.index}: {r.error}" for t in (plain, guarded) for r in t.results if r.error]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - t0
    rows = [[label] + [form.format(figures[key]) for key, _, form in COLUMNS]
            for label, figures in (("without policy", without), ("with policy", with_))]
    ratios = {key: with_[key] / without[key] if without[key] else float("nan") for key in RATIOS}
    ratios["rate"] = statistics.median(g / p for g, p in zip(guarded.round_rates, plain.round_rates))
    rows.append(["with / without"] + [f"{ratios[key]:.3f}" if key in ratios else "" for key, _, _ in COLUMNS])
    audited = sum(image_record_counts(records).values())
    ok = (alive and not lost and not any(problems.values()) and not any(released.values()) and not prompts_not_once
          and not censor["flagged_not_black"] and not censor["benign_black"])
    lines = [
        f"{prompts} prompts x {BATCH} images from {clients} concurrent clients, on each server "
        f"({len(chunks)} rounds of {size}; {elapsed:.0f} s in all).",
        "",
        table(["server"] + [header for _, header, _ in COLUMNS], rows),
        "",
        f"- Policy overhead per prompt: {with_['exec'] - without['exec']:+.0f} ms of execution (median), "
        f"{with_['latency'] - without['latency']:+.0f} ms of client latency (median), throughput x "
        f"{ratios['rate']:.3f}. A ToyWorld prompt is cheap (32 px, {STEPS} steps), so the relative overhead "
        "is the large end of what a real model would see.",
        f"- Lost prompts (refused, failed or unfinished): {len(lost)}; both servers alive at the end: "
        f"{'yes' if alive else 'NO'}.",
        f"- Audit: {audited} image records for {sum(saved.values())} saved images (warm-up prompt included); "
        f"not audited {len(problems['missing'])}, audited more than once {len(problems['repeated'])}, "
        f"records of no saved image {len(problems['unknown'])}; release records (signed, where Save Image takes "
        f"the image): missing {len(released['missing'])}, more than once {len(released['repeated'])}, of no saved "
        f"image {len(released['unknown'])}; prompts without exactly one prompt record: {prompts_not_once}.",
        "- The policy's guards: one where the image is made (VAE Decode: scored on the whole image and its local "
        "windows, censored), one where it leaves (Save Image: its verdicts reused, the pixels hashed and the record "
        "signed).",
        f"- Censoring on disk: {censor['flagged']} of {censor['images']} images flagged, flagged but not black "
        f"{censor['flagged_not_black']}, black but not flagged {censor['benign_black']}; flagged unlike the "
        f"prompt's colour (red / other): {censor['unlike_prompt']}.",
        "- exec = the server's execution_start -> execution_success of the prompt (the guards run inside it); "
        "latency = the client's POST -> finished in /history (the prompt check at POST and the queue wait "
        f"included; /history polled every {POLL_S * 1000:.0f} ms); prompts/s = per round, median; the ratio "
        "row: ratios of medians and p90s, and the median of the per-round throughput ratios.",
        "- RSS: sampled after every prompt (start = after the warm-up prompt, models loaded); "
        "last - first quarter = mean of the last quarter of samples minus mean of the first.",
    ]
    if lost:
        lines.append("- Lost: " + "; ".join(lost[:10]))
    lines += ["", "Live previews under a policy: every frame is scored before it is sent (flagged frames dropped or "
              "blurred). What one frame costs, on one thread of this CPU (mean of "
              f"{FRAMES}; local windows as the policy's defaults):", "",
              table(["score", "frame", "windows", "ms per frame"], preview_costs()), "",
              "- latent2rgb previews of a 512 px SD1.5 image are 64 px; TAESD previews are the image's size (capped "
              "at 512 by ComfyUI's --preview-size). A sampler sends at most one frame per step, so a frame's cost "
              "adds to that step; the policy's own figures (scored, dropped, flagged) are in the operator view of "
              "the panel."]
    return "\n".join(lines), ok


def run(ctx: BenchContext) -> str:
    from benchmarks.run import checked_body

    return checked_body(ctx, *measure(PROMPTS, CLIENTS, ctx.rounds))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=PROMPTS)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.prompts < args.rounds or args.clients < 1 or args.rounds < 1:
        parser.error("need --clients >= 1, --rounds >= 1 and --prompts >= --rounds")
    from benchmarks.run import record_standalone

    ctx = BenchContext("cpu", False, args.rounds)
    body, ok = measure(args.prompts, args.clients, args.rounds)
    return record_standalone("policy_load", sys.modules[__name__], ctx, body, ok,
                             (args.prompts, args.clients) == (PROMPTS, CLIENTS), args.no_write,
                             f"only the full {PROMPTS} prompts x {CLIENTS} clients run is recorded")


if __name__ == "__main__":
    sys.exit(main())
