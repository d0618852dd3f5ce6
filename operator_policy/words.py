"""The word-list prompt detector: whole words or phrases, any case, and the safe rewrite of a text."""
from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=4096)
def word_pattern(word: str) -> re.Pattern:
    parts = [re.escape(p) for p in word.lower().split()]
    return re.compile(r"(?<![\w])" + r"\s+".join(parts) + r"(?![\w])", re.IGNORECASE)


def match_words(text: str, words: list[str]) -> list[str]:
    """The words (or phrases) of `words` that occur in `text` as whole words, case-insensitive, in list order."""
    return [w for w in words if w.strip() and word_pattern(w).search(text)]


def rewrite_text(text: str, matched: list[str], safe_suffix: str) -> str:
    """`text` without the matched words or phrases (and the connectors they leave dangling), plus `safe_suffix`."""
    from ..steering.input_detector import safe_prompt

    words = [w for w in matched if len(w.split()) == 1]
    for phrase in matched:
        if len(phrase.split()) > 1:
            text = word_pattern(phrase).sub(" ", text)
    return safe_prompt(re.sub(r"\s{2,}", " ", text).strip(), words, safe_suffix)
