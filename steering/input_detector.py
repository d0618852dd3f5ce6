"""Input detector of the dual-latent method (arXiv 2411.13982): flag an unsafe prompt by the
nearest neighbours of its text embedding among labelled concept prompts, and write a safe
rewrite of it.

* Embedding: the text encoder's pooled (projected) output, L2-normalised; cosine similarity.
  Any CLIP that ComfyUI loads works (SD1.x CLIP-L, SDXL CLIP-G pooled, ...).
* Verdict: the k most similar concept prompts vote with their similarities; the prompt is
  unsafe when the unsafe share of the vote exceeds ``threshold``.
* Safe rewrite ("remove" the unsafe concept): every word of the prompt whose own nearest
  concept is unsafe, and every word of the unsafe neighbours found in the prompt, is
  removed; ``safe_suffix`` is appended. A prompt judged safe is passed through unchanged,
  so the dual-latent sampler skips its second branch.

Bounded cost per prompt (anyone who can queue a prompt can send any text):

* the prompt is at most ``MAX_PROMPT_CHARS`` characters and each concept list at most
  ``MAX_CONCEPTS`` lines (the node refuses more at validation, before any model runs);
* the prompt is encoded once: its conditioning is the node's ``positive`` output and its
  pooled vector the detector's embedding;
* the search for the unsafe words of a flagged prompt makes at most ``MAX_WORD_ENCODINGS``
  encodings: with more candidate words than that, consecutive words are checked together in
  chunks (``word_chunks``), and every word of a chunk whose nearest concept is unsafe is
  removed (more removed, never less: fails closed). Each distinct chunk is encoded once;
* so a prompt costs at most 1 + ``MAX_WORD_ENCODINGS`` + 1 (the safe rewrite) text encodings
  once the concept lists are cached, plus one per concept line the first time a list is used;
* embeddings are kept in a bounded LRU cache (``EMBEDDING_CACHE_SIZE`` per text encoder), and
  the run checks for interruption (ComfyUI's Cancel) between encodings.
"""
from __future__ import annotations

import math
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .prompts import prompt_lines

# The categories of Safe Latent Diffusion's safety concept (Schramowski et al., CVPR 2023), and "nude";
# one concept per line.
DEFAULT_UNSAFE_CONCEPTS = (
    "hate", "harassment", "violence", "suffering", "humiliation", "harm", "suicide", "sexual", "nudity",
    "nude", "bodily fluids", "blood", "obscene gestures", "illegal activity", "drug use", "theft",
    "vandalism", "weapons", "child abuse", "brutality", "cruelty",
)
# Benign prompts, including proximal concepts of the unsafe ones (red paint, a kitchen knife,
# a swimsuit at the beach, a boxing match...), so that the detector does not over-censor them.
DEFAULT_SAFE_CONCEPTS = (
    "a photo of a person", "a portrait of a smiling woman", "a portrait of a man", "a group of friends",
    "a family having dinner", "children playing in a park", "a landscape with mountains", "a city street",
    "a cat", "a dog", "a bowl of fruit", "a car on a road", "a house", "a painting in a museum",
    "red paint", "a glass of red wine", "a kitchen knife on a cutting board", "people at the beach in swimsuits",
    "a boxing match", "a doctor in a hospital", "a medieval knight in armour", "a sunset over the sea",
)
DEFAULT_SAFE_SUFFIX = ", safe for work, family-friendly"

MAX_PROMPT_CHARS = 4096
"""Longest prompt the detector accepts (about 700 words; CLIP itself reads 77-token chunks)."""
MAX_CONCEPTS = 256
"""Most concept prompts per list (each is encoded once, then cached)."""
MAX_WORD_ENCODINGS = 32
"""Most encodings spent on finding the unsafe words of one flagged prompt."""
EMBEDDING_CACHE_SIZE = 2048
"""Embeddings kept per text encoder (least recently used dropped first); above 2 * MAX_CONCEPTS, so
one prompt's word checks never evict the concept bank in use."""


class DetectorInputError(ValueError):
    """A detector input outside the documented bounds."""


def check_prompt_length(text: str, name: str = "text") -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise DetectorInputError(f"{name}: the prompt detector accepts at most {MAX_PROMPT_CHARS} characters; "
                                 f"got {len(text)}")
STOPWORDS = frozenset(
    "a an the of and or in on at to with by for from as is are was were be been being this that these those "
    "it its his her their our your my very some any into onto over under near photo image picture".split())


def parse_concepts(text: str, name: str) -> list[str]:
    """One concept prompt per line; blank lines and lines starting with # are ignored; duplicates dropped."""
    seen, concepts = set(), []
    for line in prompt_lines(text):
        if not line.startswith("#") and line.lower() not in seen:
            seen.add(line.lower())
            concepts.append(line)
    if not concepts:
        raise DetectorInputError(f"{name}: expected at least one concept prompt (one per line); got none")
    if len(concepts) > MAX_CONCEPTS:
        raise DetectorInputError(f"{name}: at most {MAX_CONCEPTS} concept prompts; got {len(concepts)}")
    return concepts


@dataclass
class Neighbour:
    concept: str
    unsafe: bool
    similarity: float


@dataclass
class PromptDetection:
    """The detector's verdict on one prompt, its evidence and the safe rewrite."""
    text: str
    unsafe: bool
    unsafe_share: float                  # unsafe part of the similarity-weighted vote, 0..1
    neighbours: list[Neighbour]
    flagged_words: list[str] = field(default_factory=list)
    safe_text: str = ""
    word_chunks: int = 0                 # encodings spent on the word search (<= MAX_WORD_ENCODINGS)
    chunk_size: int = 1                  # words checked together per encoding

    def report(self) -> str:
        verdict = "UNSAFE" if self.unsafe else "safe"
        lines = [f"{verdict} (unsafe share of the vote {self.unsafe_share:.2f})", "nearest concepts:"]
        lines += [f"  {n.similarity:+.3f} {'unsafe' if n.unsafe else 'safe  '} {n.concept}" for n in self.neighbours]
        if self.unsafe:
            lines.append(f"removed words: {', '.join(self.flagged_words) if self.flagged_words else '(none)'}")
            lines.append(f"word search: {self.word_chunks} chunks of up to {self.chunk_size} words "
                         f"(at most {MAX_WORD_ENCODINGS} encodings)")
            lines.append(f"safe prompt: {self.safe_text}")
        else:
            lines.append("the prompt is used as it is (no second branch)")
        return "\n".join(lines)


class TextEmbedder:
    """L2-normalised text embeddings from a function text -> [D], in a bounded LRU cache per text.

    ``encodings`` counts the calls of ``embed`` (cache misses); ``check_interrupt`` (if given) is
    called before each of them, so a long run can be cancelled between encodings."""

    def __init__(self, embed: Callable[[str], torch.Tensor], max_entries: int = EMBEDDING_CACHE_SIZE,
                 check_interrupt: Callable[[], None] | None = None):
        if max_entries < 1:
            raise DetectorInputError(f"max_entries must be >= 1; got {max_entries}")
        self.embed = embed
        self.max_entries = max_entries
        self.check_interrupt = check_interrupt
        self.cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.encodings = 0

    def put(self, text: str, feature: torch.Tensor) -> None:
        """Store an embedding computed elsewhere (e.g. from the prompt's own conditioning)."""
        self.cache[text] = torch.nn.functional.normalize(feature.detach().float().reshape(-1).cpu(), dim=0)
        self.cache.move_to_end(text)
        while len(self.cache) > self.max_entries:
            self.cache.popitem(last=False)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        found: dict[str, torch.Tensor] = {}
        for t in dict.fromkeys(texts):
            if t in self.cache:
                self.cache.move_to_end(t)
            else:
                if self.check_interrupt is not None:
                    self.check_interrupt()
                self.encodings += 1
                self.put(t, self.embed(t))
            found[t] = self.cache[t]
        return torch.stack([found[t] for t in texts])


def conditioning_feature(conditioning) -> torch.Tensor:
    """The detector's embedding of a ComfyUI CONDITIONING: its pooled output (first entry), or the mean
    of the token states when there is none."""
    cond, options = conditioning[0][0], conditioning[0][1]
    pooled = options.get("pooled_output")
    if pooled is not None:
        return pooled[0]
    return cond[0].mean(dim=0)


def clip_text_feature(clip, text: str) -> torch.Tensor:
    """The pooled (projected) text embedding of a ComfyUI CLIP; mean of the token states if it has none."""
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    if pooled is not None:
        return pooled[0]
    return cond[0].mean(dim=0)


_EMBEDDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def clip_embedder(clip, check_interrupt: Callable[[], None] | None = None) -> TextEmbedder:
    """One cached embedder per CLIP object (a CLIP with other patches is another object)."""
    embedder = _EMBEDDERS.get(clip)
    if embedder is None:
        embedder = TextEmbedder(lambda text: clip_text_feature(clip, text))
        _EMBEDDERS[clip] = embedder
    embedder.check_interrupt = check_interrupt
    return embedder


def prompt_words(text: str) -> list[str]:
    """Candidate content words of a prompt (lower case, no stop words, at least 3 letters)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", text)
    return list(dict.fromkeys(w.lower() for w in words if len(w) >= 3 and w.lower() not in STOPWORDS))


def word_chunks(words: Sequence[str], budget: int = MAX_WORD_ENCODINGS) -> list[list[str]]:
    """The candidate words grouped for at most ``budget`` encodings: one word per chunk when they fit,
    otherwise consecutive runs of ceil(n / budget) words."""
    if budget < 1:
        raise DetectorInputError(f"budget must be >= 1; got {budget}")
    size = max(1, math.ceil(len(words) / budget))
    return [list(words[i:i + size]) for i in range(0, len(words), size)]


LEADING_CONNECTORS = frozenset("and or with but plus".split())
TRAILING_CONNECTORS = frozenset("and or with but plus of in on at by for a an the".split())


def remove_words(text: str, words: Sequence[str]) -> str:
    """The prompt without the given words (whole words, any case). Connectors left dangling next to a
    removed word ("a man with a gun in the park" -> "a man in the park") or at the ends of a
    comma-separated part ("blood and gore, a cat" -> "a cat") and empty parts are dropped."""
    if not words:
        return text.strip()
    remove = {w.lower() for w in words}
    tokens = re.findall(r"[^\s,]+|,", text)
    keep = [True] * len(tokens)

    def bare(token: str) -> str:
        return token.strip(".!?;:\"()").lower()

    for i, token in enumerate(tokens):
        if bare(token) not in remove:
            continue
        keep[i] = False
        j = i - 1
        while j >= 0 and tokens[j] != "," and bare(tokens[j]) in TRAILING_CONNECTORS:
            keep[j] = False
            j -= 1
        j = i + 1
        while j < len(tokens) and tokens[j] != "," and bare(tokens[j]) in LEADING_CONNECTORS:
            keep[j] = False
            j += 1
    parts, current = [], []
    for token, kept in zip(tokens + [","], keep + [True]):
        if token == ",":
            while current and bare(current[0]) in LEADING_CONNECTORS:
                current.pop(0)
            while current and bare(current[-1]) in TRAILING_CONNECTORS:
                current.pop()
            if current:
                parts.append(" ".join(current))
            current = []
        elif kept:
            current.append(token)
    return ", ".join(parts)


class InputDetector:
    """Nearest-neighbour prompt classifier over labelled concept prompts."""

    def __init__(self, embedder: TextEmbedder, unsafe_concepts: Sequence[str], safe_concepts: Sequence[str],
                 k: int = 3, threshold: float = 0.5, max_word_encodings: int = MAX_WORD_ENCODINGS):
        if k < 1:
            raise DetectorInputError(f"k (number of neighbours) must be >= 1; got {k}")
        if not (isinstance(threshold, (int, float)) and 0.0 <= threshold < 1.0):
            raise DetectorInputError(f"threshold must lie in [0, 1); got {threshold}")
        if not unsafe_concepts or not safe_concepts:
            raise DetectorInputError("the detector needs at least one unsafe and one safe concept prompt; got "
                                     f"{len(unsafe_concepts)} unsafe and {len(safe_concepts)} safe")
        self.embedder = embedder
        self.concepts = list(unsafe_concepts) + list(safe_concepts)
        self.labels = torch.tensor([True] * len(unsafe_concepts) + [False] * len(safe_concepts))
        self.k = min(k, len(self.concepts))
        self.threshold = threshold
        self.max_word_encodings = max_word_encodings
        self.bank = embedder(self.concepts)

    def neighbours(self, text: str, k: int | None = None) -> list[Neighbour]:
        similarity = self.bank @ self.embedder([text])[0]
        values, index = similarity.topk(k or self.k)
        return [Neighbour(self.concepts[i], bool(self.labels[i]), float(v)) for v, i in zip(values, index.tolist())]

    def detect(self, text: str, safe_suffix: str = DEFAULT_SAFE_SUFFIX) -> PromptDetection:
        check_prompt_length(text)
        neighbours = self.neighbours(text)
        weights = [max(n.similarity, 1e-6) for n in neighbours]
        unsafe_share = sum(w for w, n in zip(weights, neighbours) if n.unsafe) / sum(weights)
        detection = PromptDetection(text, unsafe_share > self.threshold, unsafe_share, neighbours)
        if detection.unsafe:
            detection.flagged_words, chunks = self.unsafe_words(text, neighbours)
            detection.word_chunks = len(chunks)
            detection.chunk_size = max((len(c) for c in chunks), default=1)
            detection.safe_text = safe_prompt(text, detection.flagged_words, safe_suffix)
        else:
            detection.safe_text = text
        return detection

    def unsafe_words(self, text: str, neighbours: Sequence[Neighbour]) -> tuple[list[str], list[list[str]]]:
        """Words of the unsafe neighbours found in the prompt, and words whose own nearest concept is unsafe
        (checked one per encoding, or in chunks when there are more than ``max_word_encodings`` of them).
        Returns the flagged words (prompt order) and the chunks that were encoded."""
        words = prompt_words(text)
        named = {w.lower() for n in neighbours if n.unsafe for w in re.findall(r"[A-Za-z][A-Za-z'-]*", n.concept)}
        flagged = {w for w in words if w in named}
        chunks = word_chunks([w for w in words if w not in flagged], self.max_word_encodings)
        for chunk in chunks:
            if self.neighbours(" ".join(chunk), k=1)[0].unsafe:
                flagged.update(chunk)
        return [w for w in words if w in flagged], chunks


def safe_prompt(text: str, flagged_words: Sequence[str], safe_suffix: str) -> str:
    """The prompt with the flagged words removed and the suffix appended."""
    cleaned = remove_words(text, flagged_words)
    suffix = safe_suffix.strip()
    if suffix.startswith(","):
        suffix = suffix[1:].strip()
    return ", ".join(part for part in (cleaned, suffix) if part)
