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
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

# The unsafe concepts of SLD (METHODS.md), one per line.
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
STOPWORDS = frozenset(
    "a an the of and or in on at to with by for from as is are was were be been being this that these those "
    "it its his her their our your my very some any into onto over under near photo image picture".split())


def parse_concepts(text: str, name: str) -> list[str]:
    """One concept prompt per line; blank lines and lines starting with # are ignored; duplicates dropped."""
    seen, concepts = set(), []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line.lower() not in seen:
            seen.add(line.lower())
            concepts.append(line)
    if not concepts:
        raise ValueError(f"{name}: expected at least one concept prompt (one per line); got none")
    return concepts


@dataclass
class Neighbour:
    concept: str
    unsafe: bool
    similarity: float


@dataclass
class Detection:
    text: str
    unsafe: bool
    unsafe_share: float                  # unsafe part of the similarity-weighted vote, 0..1
    neighbours: list[Neighbour]
    flagged_words: list[str] = field(default_factory=list)
    safe_text: str = ""

    def report(self) -> str:
        verdict = "UNSAFE" if self.unsafe else "safe"
        lines = [f"{verdict} (unsafe share of the vote {self.unsafe_share:.2f})", "nearest concepts:"]
        lines += [f"  {n.similarity:+.3f} {'unsafe' if n.unsafe else 'safe  '} {n.concept}" for n in self.neighbours]
        if self.unsafe:
            lines.append(f"removed words: {', '.join(self.flagged_words) if self.flagged_words else '(none)'}")
            lines.append(f"safe prompt: {self.safe_text}")
        else:
            lines.append("the prompt is used as it is (no second branch)")
        return "\n".join(lines)


class TextEmbedder:
    """L2-normalised text embeddings from a function text -> [D], cached per text."""

    def __init__(self, embed: Callable[[str], torch.Tensor]):
        self.embed = embed
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for t in missing:
            self.cache[t] = torch.nn.functional.normalize(self.embed(t).detach().float().reshape(-1).cpu(), dim=0)
        return torch.stack([self.cache[t] for t in texts])


def clip_text_feature(clip, text: str) -> torch.Tensor:
    """The pooled (projected) text embedding of a ComfyUI CLIP; mean of the token states if it has none."""
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    if pooled is not None:
        return pooled[0]
    return cond[0].mean(dim=0)


_EMBEDDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def clip_embedder(clip) -> TextEmbedder:
    """One cached embedder per CLIP object (a CLIP with other patches is another object)."""
    embedder = _EMBEDDERS.get(clip)
    if embedder is None:
        embedder = TextEmbedder(lambda text: clip_text_feature(clip, text))
        _EMBEDDERS[clip] = embedder
    return embedder


def prompt_words(text: str) -> list[str]:
    """Candidate content words of a prompt (lower case, no stop words, at least 3 letters)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", text)
    return list(dict.fromkeys(w.lower() for w in words if len(w) >= 3 and w.lower() not in STOPWORDS))


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
                 k: int = 3, threshold: float = 0.5):
        if k < 1:
            raise ValueError(f"k (number of neighbours) must be >= 1; got {k}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1); got {threshold}")
        if not unsafe_concepts or not safe_concepts:
            raise ValueError("the detector needs at least one unsafe and one safe concept prompt; got "
                             f"{len(unsafe_concepts)} unsafe and {len(safe_concepts)} safe")
        self.embedder = embedder
        self.concepts = list(unsafe_concepts) + list(safe_concepts)
        self.labels = torch.tensor([True] * len(unsafe_concepts) + [False] * len(safe_concepts))
        self.k = min(k, len(self.concepts))
        self.threshold = threshold
        self.bank = embedder(self.concepts)

    def neighbours(self, text: str, k: int | None = None) -> list[Neighbour]:
        similarity = self.bank @ self.embedder([text])[0]
        values, index = similarity.topk(k or self.k)
        return [Neighbour(self.concepts[i], bool(self.labels[i]), float(v)) for v, i in zip(values, index.tolist())]

    def detect(self, text: str, safe_suffix: str = DEFAULT_SAFE_SUFFIX) -> Detection:
        neighbours = self.neighbours(text)
        weights = [max(n.similarity, 1e-6) for n in neighbours]
        unsafe_share = sum(w for w, n in zip(weights, neighbours) if n.unsafe) / sum(weights)
        detection = Detection(text, unsafe_share > self.threshold, unsafe_share, neighbours)
        if detection.unsafe:
            detection.flagged_words = self.unsafe_words(text, neighbours)
            detection.safe_text = safe_prompt(text, detection.flagged_words, safe_suffix)
        else:
            detection.safe_text = text
        return detection

    def unsafe_words(self, text: str, neighbours: Sequence[Neighbour]) -> list[str]:
        """Words whose own nearest concept is unsafe, and words of the unsafe neighbours found in the prompt."""
        words = prompt_words(text)
        named = {w.lower() for n in neighbours if n.unsafe for w in re.findall(r"[A-Za-z][A-Za-z'-]*", n.concept)}
        flagged = [w for w in words if w in named]
        for word in words:
            if word not in flagged and self.neighbours(word, k=1)[0].unsafe:
                flagged.append(word)
        return flagged


def safe_prompt(text: str, flagged_words: Sequence[str], safe_suffix: str) -> str:
    """The prompt with the flagged words removed and the suffix appended."""
    cleaned = remove_words(text, flagged_words)
    suffix = safe_suffix.strip()
    if suffix.startswith(","):
        suffix = suffix[1:].strip()
    return ", ".join(part for part in (cleaned, suffix) if part)
