"""The prompt detector's bounds through a real ComfyUI server (main.py on a loopback port)."""
from __future__ import annotations

import time

import psutil
import pytest

from comfy_execution.graph_utils import GraphBuilder
from devtools.server import ComfyServer
from devtools.session import PromptError

pytestmark = pytest.mark.slow

MAX_WORD_ENCODINGS = 32   # steering/input_detector.py (documented bound; asserted through the report too)


def detector_prompt(checkpoint: str, text: str, k: int = 1, threshold: float = 0.5) -> dict:
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=checkpoint)
    det = g.node("RSDualLatentInputDetector", id="det", clip=ckpt.out(1), text=text,
                unsafe_concepts="blood\nviolence", safe_concepts="a cat\na dog", k=k, threshold=threshold,
                safe_suffix=", safe for work")
    g.node("PreviewAny", source=det.out(4))
    return g.finalize()


def words_2kb(n: int = 286) -> list[str]:
    """n distinct 6-letter words (about 2 KB with spaces), none a stop word."""
    letters = "bcdfghjklmnpqrstvwxz"
    return ["zo" + letters[i // 400] + letters[(i // 20) % 20] + letters[i % 20] + "a" for i in range(n)]


def report_of(entry: dict) -> str:
    texts = [t for out in entry["outputs"].values() for t in out.get("text", [])]
    return "\n".join(texts)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ComfyServer(str(tmp_path_factory.mktemp("detector-server"))) as s:
        yield s


def test_a_1mb_prompt_is_refused_at_validation_quickly_without_memory_growth(server):
    checkpoint = server.dirs["checkpoint_name"]
    server.run_prompt(detector_prompt(checkpoint, "a cat"), timeout=600)   # models loaded, bank cached
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    huge = "violence " * (1024 * 1024 // 9)
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises(PromptError) as info:
            server.post("/prompt", {"prompt": detector_prompt(checkpoint, huge), "client_id": "rs-tests"})
        elapsed = time.monotonic() - start
        assert elapsed < 1.0, f"refusal took {elapsed:.2f}s"
        message = str(info.value)
        assert "-> 400" in message and "input 'text' expects a text of at most 4096 characters" in message
        assert len(message) < 20000  # the 1 MB text is not echoed back
    grown = (process.memory_info().rss - before) / 2 ** 20
    assert grown < 48, f"server RSS grew by {grown:.1f} MiB"
    assert server.get("/queue")["queue_pending"] == []


def test_a_flagged_2kb_prompt_of_distinct_words_finishes_within_the_bound(server):
    checkpoint = server.dirs["checkpoint_name"]
    server.run_prompt(detector_prompt(checkpoint, "a cat"), timeout=600)
    # calibration: a flagged one-word prompt costs 3 encodings (prompt, one word, safe rewrite)
    start = time.monotonic()
    server.run_prompt(detector_prompt(checkpoint, "a photo of a dog", k=4, threshold=0.0), timeout=600)
    per_encoding = (time.monotonic() - start) / 3
    text = " ".join(words_2kb())
    assert 1900 <= len(text) <= 2100
    start = time.monotonic()
    entry = server.run_prompt(detector_prompt(checkpoint, text, k=4, threshold=0.0), timeout=900)
    elapsed = time.monotonic() - start
    report = report_of(entry)
    assert report.startswith("UNSAFE")
    assert f"word search: {MAX_WORD_ENCODINGS} chunks of up to 9 words" in report
    bound = (1 + MAX_WORD_ENCODINGS + 1) * per_encoding
    assert elapsed < 3 * bound + 30, f"{elapsed:.1f}s for a bound of {bound:.1f}s ({per_encoding:.2f}s/encoding)"
