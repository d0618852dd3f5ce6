"""Prompt lists as users type them: one prompt per line.

Every multi-line text input of the pack that holds several prompts, concepts or class
names is read here: each line stripped, blank lines dropped, order kept.
"""
from __future__ import annotations


def prompt_lines(text: str) -> list[str]:
    """The non-blank lines of `text`, stripped, in order."""
    return [line.strip() for line in text.splitlines() if line.strip()]
