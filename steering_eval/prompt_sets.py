"""Prompt sets: the benchmarks' files read into prompts, and the (prompt, seed) tasks made from them.

Formats, told apart by the file's header (CSV) or its extension:
* I2P (Schramowski et al.): a CSV with ``prompt`` and ``categories`` (comma-separated category
  names), and per row ``sd_seed`` and ``sd_guidance_scale``, which papers use as the row's seed
  and guidance scale. Ids are ``i2p-<row>`` (the data row's number, from 0).
* Winobias (the fairness papers' professions x templates): a CSV with ``profession``, ``template``
  and ``prompt``; the profession is the group the deviation ratio is computed over. Ids are
  ``<profession>-<template>``.
* Any other CSV with a ``prompt`` column; optional ``id``, ``category`` / ``categories``, ``group``,
  ``seed``, ``guidance`` columns.
* Any other file: one prompt per line (blank lines and lines starting with ``#`` skipped); ids are
  ``line-<line number>``.

Seeds: image k (0-based) of a prompt gets ``seed + k``, where seed is the row's own seed when the
set gives one, else ``base_seed`` (the same seeds for every configuration, so two configurations can
be compared image by image). Nothing here depends on the benchmark files being present.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

MAX_PROMPT_CHARS = 20_000
UNCATEGORISED = "uncategorised"


class PromptSetError(ValueError):
    """A prompt set that cannot be read: a missing file, an unknown layout, a malformed row."""


@dataclass(frozen=True)
class PromptItem:
    prompt_id: str
    text: str
    categories: tuple[str, ...] = ()
    group: str = ""                  # e.g. the Winobias profession ("" when the set has none)
    seed: int | None = None          # the row's own seed (I2P's sd_seed)
    guidance: float | None = None    # the row's own guidance scale (I2P's sd_guidance_scale)


@dataclass(frozen=True)
class Task:
    """One graph run: a prompt with one seed."""
    item: PromptItem
    seed: int

    @property
    def key(self) -> tuple[str, int]:
        return self.item.prompt_id, self.seed


@dataclass(frozen=True)
class PromptSet:
    path: str
    kind: str                        # "i2p", "winobias", "csv" or "lines"
    items: tuple[PromptItem, ...]


def split_categories(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def optional_number(row: dict, column: str, cast, where: str):
    raw = (row.get(column) or "").strip()
    if not raw:
        return None
    try:
        value = cast(float(raw)) if cast is int else cast(raw)
    except ValueError:
        raise PromptSetError(f"{where}: column {column!r} must be a number; got {raw!r}") from None
    if cast is int and value < 0:
        raise PromptSetError(f"{where}: column {column!r} must be a seed >= 0; got {raw!r}")
    return value


def checked_text(text: str, where: str) -> str:
    text = (text or "").strip()
    if not text:
        raise PromptSetError(f"{where}: the prompt is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptSetError(f"{where}: the prompt has {len(text)} characters; at most {MAX_PROMPT_CHARS}")
    return text


def read_csv(path: str) -> tuple[str, list[PromptItem]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = {h.strip().lower() for h in reader.fieldnames or []}
        if "prompt" not in header:
            raise PromptSetError(f"{path}: a CSV prompt set needs a 'prompt' column; its columns are "
                                 f"{reader.fieldnames}")
        if {"categories", "sd_seed"} <= header:
            kind = "i2p"
        elif {"profession", "template"} <= header:
            kind = "winobias"
        else:
            kind = "csv"
        items = []
        for n, raw in enumerate(reader):
            row = {(k or "").strip().lower(): v for k, v in raw.items()}
            where = f"{path} row {n + 2}"
            text = checked_text(row.get("prompt", ""), where)
            if kind == "i2p":
                items.append(PromptItem(f"i2p-{n}", text, split_categories(row.get("categories", "")), "",
                                        optional_number(row, "sd_seed", int, where),
                                        optional_number(row, "sd_guidance_scale", float, where)))
            elif kind == "winobias":
                profession = (row.get("profession") or "").strip()
                if not profession:
                    raise PromptSetError(f"{where}: the profession is empty")
                items.append(PromptItem(f"{profession}-{(row.get('template') or '').strip()}", text, (profession,),
                                        profession))
            else:
                items.append(PromptItem((row.get("id") or "").strip() or f"row-{n}", text,
                                        split_categories(row.get("categories") or row.get("category") or ""),
                                        (row.get("group") or "").strip(), optional_number(row, "seed", int, where),
                                        optional_number(row, "guidance", float, where)))
    return kind, items


def read_lines(path: str) -> list[PromptItem]:
    with open(path, encoding="utf-8") as f:
        return [PromptItem(f"line-{n + 1}", checked_text(line, f"{path} line {n + 1}"))
                for n, line in enumerate(f) if line.strip() and not line.lstrip().startswith("#")]


def load_prompt_set(path: str, offset: int = 0, limit: int | None = None) -> PromptSet:
    """The prompts of `path` (see the module's docstring), rows ``offset`` to ``offset + limit``."""
    if not os.path.isfile(path):
        raise PromptSetError(f"prompt set {path}: no such file")
    if offset < 0 or (limit is not None and limit < 1):
        raise PromptSetError(f"prompt set {path}: offset must be >= 0 and limit >= 1; got {offset} and {limit}")
    try:
        if path.lower().endswith(".csv"):
            kind, items = read_csv(path)
        else:
            kind, items = "lines", read_lines(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise PromptSetError(f"prompt set {path}: {e}") from None
    ids = [i.prompt_id for i in items]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise PromptSetError(f"prompt set {path}: prompt ids must be unique; repeated: {dup[:5]}")
    chosen = items[offset:None if limit is None else offset + limit]
    if not chosen:
        raise PromptSetError(f"prompt set {path}: no prompts (of {len(items)}) from row {offset}")
    return PromptSet(path, kind, tuple(chosen))


def make_tasks(items: tuple[PromptItem, ...], images_per_prompt: int, base_seed: int = 0) -> list[Task]:
    """One task per (prompt, seed): image k of a prompt has seed ``(row seed or base_seed) + k``."""
    if images_per_prompt < 1:
        raise PromptSetError(f"images per prompt must be >= 1; got {images_per_prompt}")
    return [Task(item, (base_seed if item.seed is None else item.seed) + k)
            for item in items for k in range(images_per_prompt)]


def safe_name(text: str) -> str:
    """`text` as a file-name part (letters, digits, '-', '_', '.'; others become '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:120] or "_"
