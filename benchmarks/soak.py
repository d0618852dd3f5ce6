"""Soak and bad-input run against a real ComfyUI server (loopback only, bounded loops).

    .venv/bin/python -m benchmarks.soak [--prompts 100] [--clients 3] [--no-write]

* Starts ``main.py`` of the cached ComfyUI 0.3.75 with the pack and the tiny SD1 checkpoint in a
  temporary base directory, on a free 127.0.0.1 port.
* Sends a mix of the pack's workflows at 64 px / 3 steps (dual-latent with the prompt detector,
  STG with the colour score, h-space and embedding-direction vectors trained in the run, detect
  unsafe / safety rate, training) and bad inputs (NaN, +-inf, out-of-range, unknown options,
  empty and 1 MB texts), each with a fresh seed so nothing is served from cache. The last
  ``clients * 10`` prompts come from that many concurrent clients.
* Measures: prompts sent, lost (accepted but never finished, or a bad input that was not refused
  with the pack's error), server RSS first / last / max and its least-squares slope per prompt.
* Also: a training run cancelled mid-run (POST /interrupt) must leave no vector and no temp file;
  a flagged 2 KB prompt of 286 distinct words through the detector (time and encodings).
* Writes its section to benchmarks/RESULTS.md (marker ``soak:cpu``) unless --no-write.
"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

from benchmarks.common import cpu_name, rss_bytes, slope
from devtools import comfy_env
from devtools.server import ComfyServer
from devtools.session import PromptError

comfy_env.setup()
from comfy_execution.graph_utils import GraphBuilder  # noqa: E402  (ComfyUI's, importable after setup)

SIZE, STEPS = 64, 3
ONE_MB = "violence " * (1024 * 1024 // 9)


def words_2kb(n: int = 286) -> list[str]:
    letters = "bcdfghjklmnpqrstvwxz"
    return ["zo" + letters[i // 400] + letters[(i // 20) % 20] + letters[i % 20] + "a" for i in range(n)]


# ---------------------------------------------------------------------------- workflows

def base(g: GraphBuilder, ckpt_name: str, text: str = "a photo of a person"):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    pos = g.node("CLIPTextEncode", text=text, clip=ckpt.out(1))
    neg = g.node("CLIPTextEncode", text="", clip=ckpt.out(1))
    latent = g.node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    return ckpt, pos, neg, latent


def ksampler(g, model, pos, neg, latent, seed):
    return g.node("KSampler", model=model, positive=pos, negative=neg, latent_image=latent, seed=seed, steps=STEPS,
                 cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)


def finish(g, vae, samples, score=None):
    image = g.node("VAEDecode", samples=samples, vae=vae)
    if score is not None:
        g.node("RSSafetyRate", images=image.out(0), safety_score=score)
    else:
        g.node("PreviewImage", images=image.out(0))


def node(g: GraphBuilder, class_type: str, bad: dict, **inputs):
    """Add a `class_type` node with `inputs`, each of which `bad` (the soak's invalid values) may override."""
    return g.node(class_type, **{**inputs, **bad})


def vector_graph(ckpt_name: str, vector: str):
    """The base graph plus a Load Vector node for `vector`: (graph, ckpt, pos, neg, latent, vector node)."""
    g = GraphBuilder(prefix="")
    ckpt, pos, neg, latent = base(g, ckpt_name)
    return g, ckpt, pos, neg, latent, g.node("RSLoadVector", vector_name=vector)


def dual_latent(ckpt_name, seed, **bad):
    g = GraphBuilder(prefix="")
    ckpt, pos, neg, latent = base(g, ckpt_name)
    det = g.node("RSDualLatentInputDetector", clip=ckpt.out(1), text=bad.pop("text", f"a person with a gun {seed}"),
                unsafe_concepts="blood\nviolence\nweapons", safe_concepts="a cat\na person", k=3, threshold=0.5,
                safe_suffix=", safe for work")
    samples = node(g, "RSDualLatentKSampler", bad,
        model=ckpt.out(0), seed=seed, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="normal",
        positive=det.out(0), safe_positive=det.out(1), negative=neg.out(0), latent_image=latent.out(0), denoise=1.0,
        w_xi=0.75, w_x=0.25, tau_gc=0.5)
    finish(g, ckpt.out(2), samples.out(0))
    return g.finalize()


def stg(ckpt_name, seed, **bad):
    g = GraphBuilder(prefix="")
    ckpt, pos, neg, latent = base(g, ckpt_name)
    score = g.node("RSColourStatisticScore", statistic="redness", threshold=-1.0)
    samples = node(g, "RSSTGKSampler", bad,
        model=ckpt.out(0), seed=seed, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="normal",
        positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0), denoise=1.0, vae=ckpt.out(2),
        safety_score=score.out(0), rho=0.5, start_percent=0.0, end_percent=0.5, update_ratio=1.0, prior_weight=0.0,
        rebase=False, guide_pooled=False, decoder="vae", autocast="none")
    finish(g, ckpt.out(2), samples.out(0), score.out(0))
    return g.finalize()


def hspace(ckpt_name, seed, vector="soak_cvector.safetensors", **bad):
    g, ckpt, pos, neg, latent, vec = vector_graph(ckpt_name, vector)
    model = node(g, "RSApplyHSpaceVector", bad,
        model=ckpt.out(0), vector=vec.out(0), strength=1.0, start_percent=0.0, end_percent=1.0, branches="cond_only",
        resize_mode="bilinear")
    finish(g, ckpt.out(2), ksampler(g, model.out(0), pos.out(0), neg.out(0), latent.out(0), seed).out(0))
    return g.finalize()


def embedding(ckpt_name, seed, vector="soak_embedding.safetensors", **bad):
    g, ckpt, pos, neg, latent, vec = vector_graph(ckpt_name, vector)
    cond = node(g, "RSApplyEmbeddingDirection", bad,
        conditioning=pos.out(0), vector=vec.out(0), strength=1.0, start_percent=0.3, end_percent=1.0,
        chunk_mode="every_chunk")
    score = g.node("RSColourStatisticScore", statistic="brightness", threshold=0.5)
    image = g.node("VAEDecode", samples=ksampler(g, ckpt.out(0), cond.out(0), neg.out(0), latent.out(0), seed).out(0), vae=ckpt.out(2))
    g.node("PreviewAny", source=g.node("RSDetectUnsafe", images=image.out(0), safety_score=score.out(0)).out(3))
    return g.finalize()


def train(ckpt_name, seed, method="codsma_cvector", save_name="soak_cvector", iterations=2, **bad):
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    node(g, "RSTrainSteeringVector", bad,
        model=ckpt.out(0), clip=ckpt.out(1), method=method, direction="toward_target", neutral_prompt="a person",
        target_prompt="a woman", iterations=iterations, batch_size=1, learning_rate=0.0, lambda_sem=0.5, rank=1,
        seed=seed, resolution=SIZE, rollout_steps=2, scheduler="ddim_uniform", target_guidance=0.0,
        gradient_checkpointing=False, checkpoint_every=1000, resume=False, save_name=save_name)
    return g.finalize()


def nudenet_score(ckpt_name, seed, **bad):
    g = GraphBuilder(prefix="")
    score = node(g, "RSNudeNetScore", bad,
        label_preset="stg_nudity", custom_labels="", detection_threshold=0.25, threshold=0.0)
    image = g.node("EmptyImage", width=32, height=32, batch_size=1, color=seed % 0xFFFFFF)
    g.node("RSSafetyRate", images=image.out(0), safety_score=score.out(0))
    return g.finalize()


GOOD = [dual_latent, stg, hspace, embedding]
BAD = [  # (workflow, overrides): every one must be refused at validation with the pack's error
    (dual_latent, {"w_xi": 1e30}), (dual_latent, {"scheduler": "bogus"}), (dual_latent, {"tau_gc": "NaN"}),
    (dual_latent, {"text": ONE_MB}), (dual_latent, {"cfg": float("inf")}),
    (stg, {"rho": "NaN"}), (stg, {"cfg": "NaN"}), (stg, {"prior_weight": "NaN"}), (stg, {"decoder": "bogus"}),
    (stg, {"sampler_name": "bogus"}), (stg, {"steps": -5}),
    (hspace, {"strength": "NaN"}), (hspace, {"branches": "bogus"}), (hspace, {"strength": float("-inf")}),
    (embedding, {"strength": "NaN"}), (embedding, {"chunk_mode": "bogus"}),
    (train, {"rank": 500}), (train, {"batch_size": 0}), (train, {"iterations": -5}), (train, {"method": "bogus"}),
    (train, {"neutral_prompt": ""}), (train, {"save_name": ""}),
    (nudenet_score, {"detection_threshold": "NaN"}), (nudenet_score, {"threshold": float("nan")}),
]


# ---------------------------------------------------------------------------- measurement

class Soak:
    def __init__(self, server: ComfyServer):
        self.server = server
        self.ckpt = server.dirs["checkpoint_name"]
        self.rss: list[int] = []
        self.sent = self.completed = self.refused = 0
        self.lost: list[str] = []
        self.lock = threading.Lock()

    def sample(self):
        with self.lock:
            self.rss.append(rss_bytes(self.server.process.pid))

    def good(self, workflow, seed: int, timeout: float = 600) -> None:
        with self.lock:
            self.sent += 1
        try:
            self.server.run_prompt(workflow(self.ckpt, seed), timeout=timeout)
            with self.lock:
                self.completed += 1
        except (PromptError, TimeoutError, OSError) as e:
            with self.lock:
                self.lost.append(f"{workflow.__name__} seed {seed}: {str(e)[:200]}")
        self.sample()

    def bad(self, workflow, overrides: dict, seed: int) -> None:
        with self.lock:
            self.sent += 1
        start = time.monotonic()
        try:
            self.server.post("/prompt", {"prompt": workflow(self.ckpt, seed, **overrides), "client_id": "soak"})
            with self.lock:
                self.lost.append(f"{workflow.__name__} {short(overrides)}: accepted")
        except PromptError as e:
            text = str(e)
            name = next(iter(overrides))
            if "-> 400" in text and f"input '{name}'" in text and time.monotonic() - start < 5:
                with self.lock:
                    self.refused += 1
            else:
                with self.lock:
                    self.lost.append(f"{workflow.__name__} {short(overrides)}: {text[:200]}")
        self.sample()

    def slope_kib(self, start: int = 0) -> float:
        """Least-squares slope of the RSS samples from `start` on, KiB per prompt."""
        return slope(self.rss[start:]) / 1024


def short(overrides: dict) -> str:
    return ", ".join(f"{k}={v if not isinstance(v, str) or len(v) < 20 else f'<{len(v)} chars>'}"
                     for k, v in overrides.items())


def schedule(n: int, rng: random.Random) -> list:
    """n steps: about 60 % good workflows, 40 % bad inputs, in a seeded random order."""
    steps = []
    for i in range(n):
        if i % 5 in (1, 3):
            steps.append(("bad",) + BAD[(i * 7) % len(BAD)])
        else:
            steps.append(("good", GOOD[i % len(GOOD)]))
    rng.shuffle(steps)
    return steps


def run_step(soak: Soak, step, seed: int) -> None:
    if step[0] == "good":
        soak.good(step[1], seed)
    else:
        soak.bad(step[1], step[2], seed)


def cancelled_training(soak: Soak) -> dict:
    """Start a long training run, interrupt it mid-run; nothing of it may remain in the vector folder."""
    vectors = soak.server.dirs["models/steering_vectors"]
    training = os.path.join(soak.server.dirs["output"], "steering_training")
    before = set(os.listdir(vectors))
    prompt_id = soak.server.post("/prompt", {"prompt": train(soak.ckpt, 99, save_name="soak_cancelled",
                                                             iterations=500), "client_id": "soak"})["prompt_id"]
    deadline = time.time() + 300
    while time.time() < deadline and not soak.server.get("/queue")["queue_running"]:
        time.sleep(0.2)
    time.sleep(8.0)  # inside the loop (model loaded, iterations running)
    request = urllib.request.Request(soak.server.url + "/interrupt", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()  # empty answer
    status = None
    while time.time() < deadline:
        history = soak.server.get(f"/history/{prompt_id}")
        if prompt_id in history:
            status = history[prompt_id]["status"]
            break
        time.sleep(0.25)
    after = set(os.listdir(vectors))
    leftovers = sorted(after - before)
    temp = [f for d in (vectors, training) if os.path.isdir(d) for f in os.listdir(d)
            if f.startswith(".tmp") or f.endswith((".tmp", ".partial"))]
    messages = [m[0] for m in (status or {}).get("messages", [])]
    return {"interrupted": "execution_interrupted" in messages, "new_files": leftovers, "temp_files": temp}


def flagged_2kb(soak: Soak) -> dict:
    def prompt(text):
        g = GraphBuilder(prefix="")
        ckpt = g.node("CheckpointLoaderSimple", ckpt_name=soak.ckpt)
        det = g.node("RSDualLatentInputDetector", clip=ckpt.out(1), text=text, unsafe_concepts="blood\nviolence",
                    safe_concepts="a cat\na dog", k=4, threshold=0.0, safe_suffix=", safe for work")
        g.node("PreviewAny", source=det.out(4))
        return g.finalize()

    soak.server.run_prompt(prompt("a cat"))
    start = time.monotonic()
    soak.server.run_prompt(prompt("a photo of a dog"))
    per_encoding = (time.monotonic() - start) / 3
    text = " ".join(words_2kb())
    start = time.monotonic()
    entry = soak.server.run_prompt(prompt(text), timeout=900)
    elapsed = time.monotonic() - start
    report = "\n".join(t for out in entry["outputs"].values() for t in out.get("text", []))
    line = next((l for l in report.splitlines() if l.startswith("word search")), "")
    return {"chars": len(text), "seconds": elapsed, "per_encoding": per_encoding, "word_search": line}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    base_dir = tempfile.mkdtemp(prefix="rs-soak-")
    rng = random.Random(0)
    t0 = time.monotonic()
    try:
        with ComfyServer(base_dir) as server:
            soak = Soak(server)
            # the run's own vectors (two tiny trainings, counted as prompts), then the mix
            soak.good(train, 1)
            soak.good(lambda ckpt, seed: train(ckpt, seed, method="embedding_direction", save_name="soak_embedding"),
                      2)
            concurrent = args.clients * 10
            steps = [("good", train)] * 2 + schedule(args.prompts - 2, rng)
            steps, done = steps[2:], steps[:2]
            for i, step in enumerate(steps[:len(steps) - concurrent]):
                run_step(soak, step, 1000 + i)
            t_seq = time.monotonic()
            rest = steps[len(steps) - concurrent:]
            threads = [threading.Thread(target=lambda c=c: [run_step(soak, s, 5000 + c * 100 + j)
                                                              for j, s in enumerate(rest[c::args.clients])])
                       for c in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=1800)
            t_conc = time.monotonic() - t_seq
            cancel = cancelled_training(soak)
            detector = flagged_2kb(soak)
            soak.sample()
            alive = server.process.poll() is None
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    mib = [r / 2 ** 20 for r in soak.rss]
    good = sum(1 for s in done + steps if s[0] == "good")
    lines = [
        f"## Soak: {args.prompts} mixed prompts against a real server [cpu]",
        "",
        f"{cpu_name()} ({os.cpu_count()} cores, shared); tiny checkpoint, {SIZE} px, {STEPS} steps; "
        f"{datetime.date.today().isoformat()} (`benchmarks/soak.py`, {time.monotonic() - t0:.0f} s in all).",
        "",
        "| prompts | good / bad | completed | refused (pack error, 400) | lost | RSS first MiB | RSS last MiB "
        "| RSS max MiB | slope KiB/prompt |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {soak.sent} | {good} / {soak.sent - good} | {soak.completed} | {soak.refused} | {len(soak.lost)} | "
        f"{mib[0]:.0f} | {mib[-1]:.0f} | {max(mib):.0f} | {soak.slope_kib():+.1f} |",
        "",
        f"- The last {concurrent} prompts came from {args.clients} concurrent clients ({t_conc:.0f} s); "
        f"server alive at the end: {'yes' if alive else 'NO'}.",
        f"- Training interrupted mid-run: interrupted {'yes' if cancel['interrupted'] else 'NO'}, new vector files "
        f"{cancel['new_files'] or 'none'}, temp files {cancel['temp_files'] or 'none'}.",
        f"- Flagged {detector['chars']}-character prompt of 286 distinct words through the detector: "
        f"{detector['seconds']:.1f} s ({detector['word_search']}; one encoding of the prompt, one of the "
        f"rewrite; calibrated {detector['per_encoding']:.2f} s per encoding, bound 34 encodings = "
        f"{34 * detector['per_encoding']:.0f} s). Before the bound: 960 s.",
        "- RSS sampled after every prompt (first = after the first training, models loaded); slope = "
        f"least-squares fit over all samples; over the second half (every workflow warmed up): "
        f"{soak.slope_kib(len(soak.rss) // 2):+.1f} KiB/prompt.",
    ]
    if soak.lost:
        lines.append("- Lost: " + "; ".join(soak.lost[:10]))
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        from benchmarks.run import write_section

        write_section("soak:cpu", text)
    return 0 if not soak.lost and alive else 1


if __name__ == "__main__":
    sys.exit(main())
