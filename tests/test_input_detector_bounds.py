"""The prompt detector's cost per prompt is bounded: capped text, capped and deduplicated encodings,
a bounded LRU cache, interruption between encodings, and the prompt encoded once."""
from __future__ import annotations

import math

import pytest
import torch

from comfy_execution.graph_utils import GraphBuilder
from devtools import pure
from devtools.sd import keep


m = pure.fixture("steering.input_detector")


class CountingBag:
    """A deterministic toy text embedding (one axis per known word; aliases share an axis) that records every
    text it encodes."""

    def __init__(self, vocabulary, aliases=None):
        self.vocabulary = {w: i for i, w in enumerate(vocabulary)}
        self.aliases = aliases or {}
        self.calls: list[str] = []

    def __call__(self, text):
        self.calls.append(text)
        v = torch.full((len(self.vocabulary) + 1,), 0.01)
        for word in text.lower().replace(",", " ").split():
            word = self.aliases.get(word, word)
            if word in self.vocabulary:
                v[self.vocabulary[word]] += 1.0
        return v


def distinct_words(n: int) -> list[str]:
    """n distinct lower-case words of letters only (none a stop word, all >= 3 letters)."""
    letters = "bcdfghjklmnpqrstvwxz"
    return ["q" + letters[i // 400] + letters[(i // 20) % 20] + letters[i % 20] for i in range(n)]


def test_lru_cache_is_bounded_and_keeps_recent_texts(m):
    bag = CountingBag(["a", "b", "c", "d"])
    embedder = m.TextEmbedder(bag, max_entries=3)
    embedder(["a", "b", "c"])
    embedder(["a"])             # a is now the most recent; b the least
    embedder(["d"])             # evicts b
    assert list(embedder.cache) == ["c", "a", "d"]
    assert bag.calls == ["a", "b", "c", "d"] and embedder.encodings == 4
    embedder(["b", "b", "a"])   # b again: one encoding, deduplicated within the call
    assert bag.calls[-1] == "b" and len(bag.calls) == 5 and len(embedder.cache) == 3
    with pytest.raises(ValueError):
        m.TextEmbedder(bag, max_entries=0)


def test_interruption_is_checked_before_every_encoding(m):
    class Interrupted(Exception):
        pass

    bag, seen = CountingBag(["x"]), []

    def check():
        seen.append(len(bag.calls))
        if len(bag.calls) == 2:
            raise Interrupted

    embedder = m.TextEmbedder(bag, check_interrupt=check)
    with pytest.raises(Interrupted):
        embedder(["w1", "w2", "w3", "w4"])
    assert bag.calls == ["w1", "w2"] and seen == [0, 1, 2]
    embedder.check_interrupt = None
    embedder(["w1", "w2"])          # cached: no encoding, no check needed
    assert len(bag.calls) == 2


def test_word_chunks_respect_the_budget(m):
    words = [f"w{i}" for i in range(10)]
    assert m.word_chunks(words, 10) == [[w] for w in words]
    assert m.word_chunks(words, 4) == [words[0:3], words[3:6], words[6:9], words[9:10]]  # ceil(10/4) = 3
    for n in (1, 31, 32, 33, 286, 1000):
        chunks = m.word_chunks(distinct_words(n), 32)
        assert len(chunks) <= 32 and sum(chunks, []) == distinct_words(n)
        assert max(map(len, chunks)) == math.ceil(n / 32)


def test_a_long_flagged_prompt_costs_at_most_the_documented_encodings(m):
    words = distinct_words(286)
    bag = CountingBag(["blood", "gore", "cat", "garden"] + words)
    embedder = m.TextEmbedder(bag)
    det = m.InputDetector(embedder, ["blood", "gore"], ["a cat in a garden"], k=1)
    bank = len(bag.calls)
    prompt = " ".join(words[:140] + ["blood"] + words[140:])
    assert len(prompt) > 1400 and len(prompt) <= m.MAX_PROMPT_CHARS
    result = det.detect(prompt)
    spent = len(bag.calls) - bank
    assert spent <= 1 + m.MAX_WORD_ENCODINGS
    assert result.word_chunks <= m.MAX_WORD_ENCODINGS and result.chunk_size == math.ceil(286 / m.MAX_WORD_ENCODINGS)
    # the prompt's nearest concept is "blood" (the only shared word): flagged, and "blood" removed by name
    assert result.unsafe and "blood" in result.flagged_words and "blood" not in result.safe_text.split()
    # the same prompt again: everything cached, no encoding at all
    det.detect(prompt)
    assert len(bag.calls) - bank == spent


def test_a_hidden_unsafe_word_in_a_long_prompt_is_removed_with_its_chunk(m):
    """More candidate words than the budget: the chunk holding an unsafe word that no concept names ('crimson'
    embeds like 'blood') is flagged as a whole (fails closed: more removed, never less); the other chunks stay."""
    words = distinct_words(63)
    bag = CountingBag(["blood"] + words, aliases={"crimson": "blood"})
    det = m.InputDetector(m.TextEmbedder(bag), ["blood"], [" ".join(words)], k=2, threshold=0.0,
                          max_word_encodings=8)
    prompt = " ".join(words[:20] + ["crimson"] + words[20:])
    result = det.detect(prompt, safe_suffix="")
    assert result.unsafe and result.word_chunks == 8 and result.chunk_size == 8
    # by hand: 64 candidates in prompt order, chunks of 8; 'crimson' is candidate 20, in chunk 2 (16..23)
    expected = (words[:20] + ["crimson"] + words[20:])[16:24]
    assert result.flagged_words == expected
    assert result.safe_text == " ".join(words[:16] + words[23:])


def test_oversize_prompt_and_concept_lists_are_refused_before_encoding(m):
    bag = CountingBag(["a"])
    det = m.InputDetector(m.TextEmbedder(bag), ["a"], ["b"])
    before = len(bag.calls)
    with pytest.raises(m.DetectorInputError, match=f"at most {m.MAX_PROMPT_CHARS} characters; got"):
        det.detect("x" * (m.MAX_PROMPT_CHARS + 1))
    assert len(bag.calls) == before
    with pytest.raises(m.DetectorInputError, match=f"at most {m.MAX_CONCEPTS} concept prompts"):
        m.parse_concepts("\n".join(f"concept {i}" for i in range(m.MAX_CONCEPTS + 1)), "unsafe_concepts")


def word_search_encodings(report: str) -> int:
    line = next(l for l in report.splitlines() if l.startswith("word search: "))
    return int(line.split()[2])


def counting_clip(clip, calls: list):
    """A clone of the CLIP whose encode_from_tokens records every call (the real encoder does the work)."""
    counted = clip.clone()
    real = counted.encode_from_tokens

    def encode_from_tokens(tokens, *args, **kwargs):
        calls.append(tokens)
        return real(tokens, *args, **kwargs)

    counted.encode_from_tokens = encode_from_tokens
    return counted


def test_the_node_encodes_the_prompt_once(comfy, tiny, m):
    node = comfy.node_class("RSDualLatentInputDetector")
    calls: list = []
    clip = counting_clip(tiny[1], calls)
    unsafe, safe = "blood\nviolence", "a cat\na dog"
    with torch.inference_mode():
        node.execute(clip, "a cat", unsafe, safe, 1, 0.5, ", safe")        # fills the concept bank
        calls.clear()
        out = node.execute(clip, "a photo of a cat", unsafe, safe, 4, 0.5, ", safe").args
    # a safe prompt: one encoding (its conditioning gives the embedding); a flagged one adds one per word
    # chunk and one for the safe rewrite
    expected = 1 if out[2] is False else 2 + word_search_encodings(out[4])
    assert len(calls) == expected
    reference = tiny[1].encode_from_tokens_scheduled(tiny[1].tokenize("a photo of a cat"))
    assert torch.equal(out[0][0][0], reference[0][0])


def test_the_node_bounds_a_flagged_long_prompt(comfy, tiny, m):
    node = comfy.node_class("RSDualLatentInputDetector")
    calls: list = []
    clip = counting_clip(tiny[1], calls)
    unsafe, safe = "blood\nviolence", "a cat\na dog"
    prompt = " ".join(distinct_words(286))
    with torch.inference_mode():
        node.execute(clip, "a cat", unsafe, safe, 1, 0.5, "")
        calls.clear()
        out = node.execute(clip, prompt, unsafe, safe, 4, 0.0, ", safe").args   # k = all, threshold 0: flagged
    assert out[2] is True
    # 286 candidate words, budget 32: chunks of ceil(286 / 32) = 9 words, 32 chunks
    assert word_search_encodings(out[4]) == 32 and "chunks of up to 9 words" in out[4]
    assert len(calls) == 1 + 32 + 1


def test_the_node_refuses_an_oversize_prompt_at_validation(comfy):
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=comfy.checkpoint_name)
    det = g.node("RSDualLatentInputDetector", clip=ckpt.out(1), text="violence " * 120000, unsafe_concepts="blood",
                safe_concepts="a cat", k=1, threshold=0.5, safe_suffix="")
    keep(g, det.out(3))
    import asyncio
    import uuid

    import execution

    result = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), g.finalize(), None))
    assert not result[0]
    details = [e["details"] for e in result[3][det.id]["errors"]]
    assert any("Dual-Latent Input Detector: input 'text' expects a text of at most "
               f"4096 characters; got a text of {len('violence ' * 120000)} characters" in d for d in details)
