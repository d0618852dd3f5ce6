"""The results store: one row per image, in SQLite, written as results arrive.

Design:
* One file (``results.sqlite`` in the output folder), written by the head alone (workers return
  their results to it). Every write is one transaction (WAL journal, synchronous=FULL): a crash,
  a kill or Ctrl-C loses at most the task in flight, never half a task.
* Rows are keyed by (config, prompt id, seed, image index) and inserted with INSERT OR IGNORE: a
  result that arrives twice (a re-queued prompt whose first server answered after all) is stored
  once, and a re-run skips every (prompt id, seed) the configuration already has. A failed prompt
  is one row (image index 0) with status ``error`` and its message: it counts as done (the same
  graph would fail again) until ``--retry-errors`` deletes it.
* A configuration is registered with a fingerprint (workflow, judges, settings); resuming it with a
  different one is refused, so rows of two different setups never mix under one name.
* Scores are one JSON object per row here (judges differ between configurations); the Parquet
  export (pyarrow) spreads them into one column each.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field

SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, settings TEXT NOT NULL,
                                    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    config TEXT NOT NULL, prompt_id TEXT NOT NULL, seed INTEGER NOT NULL, image_index INTEGER NOT NULL,
    categories TEXT NOT NULL, grp TEXT NOT NULL, text TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    scores TEXT NOT NULL, image_path TEXT, server TEXT, execution_s REAL, finished REAL NOT NULL,
    PRIMARY KEY (config, prompt_id, seed, image_index));
"""
COLUMNS = ("config", "prompt_id", "seed", "image_index", "categories", "grp", "text", "status", "error", "scores",
           "image_path", "server", "execution_s", "finished")


class StoreError(ValueError):
    """The results store refuses a request (a configuration resumed with other settings, a bad file)."""


@dataclass
class ResultRow:
    config: str
    prompt_id: str
    seed: int
    image_index: int
    categories: tuple[str, ...]
    group: str
    text: str
    status: str                            # "ok" or "error"
    scores: dict = field(default_factory=dict)
    error: str | None = None
    image_path: str | None = None          # relative to the output folder
    server: str | None = None
    execution_s: float | None = None
    finished: float = 0.0

    def values(self) -> tuple:
        return (self.config, self.prompt_id, int(self.seed), int(self.image_index), ",".join(self.categories),
                self.group, self.text, self.status, self.error, json.dumps(self.scores, sort_keys=True),
                self.image_path, self.server, self.execution_s, self.finished or time.time())


def row_from_record(record: sqlite3.Row) -> ResultRow:
    d = dict(record)
    return ResultRow(d["config"], d["prompt_id"], d["seed"], d["image_index"],
                     tuple(c for c in d["categories"].split(",") if c), d["grp"], d["text"], d["status"],
                     json.loads(d["scores"]), d["error"], d["image_path"], d["server"], d["execution_s"],
                     d["finished"])


class ResultStore:
    def __init__(self, path: str):
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"results store {path}: {e}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def transaction(self):
        return _Transaction(self.db)

    def register_config(self, name: str, fingerprint: str, settings: dict) -> bool:
        """Record configuration `name`; True when new. StoreError when it exists with another fingerprint."""
        with self.transaction():
            found = self.db.execute("SELECT fingerprint FROM configs WHERE name = ?", (name,)).fetchone()
            if found is None:
                self.db.execute("INSERT INTO configs VALUES (?, ?, ?, ?)",
                                (name, fingerprint, json.dumps(settings, sort_keys=True), time.time()))
                return True
        if found["fingerprint"] != fingerprint:
            raise StoreError(f"configuration {name!r} in {self.path} was run with another workflow, judges or "
                             "settings; resume it with the same ones, or give this setup another --config name")
        return False

    def configs(self) -> list[str]:
        return [r["name"] for r in self.db.execute("SELECT name FROM configs ORDER BY created")]

    def settings(self, name: str) -> dict:
        found = self.db.execute("SELECT settings FROM configs WHERE name = ?", (name,)).fetchone()
        if found is None:
            raise StoreError(f"no configuration {name!r} in {self.path}; it has {self.configs()}")
        return json.loads(found["settings"])

    def done_keys(self, config: str) -> set[tuple[str, int]]:
        """The (prompt id, seed) pairs `config` already has a result for (images or an error)."""
        return {(r["prompt_id"], r["seed"]) for r in
                self.db.execute("SELECT DISTINCT prompt_id, seed FROM results WHERE config = ?", (config,))}

    def has(self, config: str, prompt_id: str, seed: int) -> bool:
        return self.db.execute("SELECT 1 FROM results WHERE config = ? AND prompt_id = ? AND seed = ? LIMIT 1",
                               (config, prompt_id, int(seed))).fetchone() is not None

    def add(self, rows: list[ResultRow]) -> int:
        """Insert the rows of one task in one transaction; returns how many were new."""
        with self.transaction():
            before = self.db.total_changes
            self.db.executemany(f"INSERT OR IGNORE INTO results VALUES ({', '.join('?' * len(COLUMNS))})",
                                [r.values() for r in rows])
            return self.db.total_changes - before

    def delete_errors(self, config: str) -> int:
        with self.transaction():
            return self.db.execute("DELETE FROM results WHERE config = ? AND status = 'error'", (config,)).rowcount

    def rows(self, config: str | None = None) -> list[ResultRow]:
        query = "SELECT * FROM results" + (" WHERE config = ?" if config else "")
        query += " ORDER BY config, prompt_id, seed, image_index"
        return [row_from_record(r) for r in self.db.execute(query, (config,) if config else ())]

    def count(self, config: str | None = None) -> int:
        query = "SELECT COUNT(*) FROM results" + (" WHERE config = ?" if config else "")
        return self.db.execute(query, (config,) if config else ()).fetchone()[0]


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def export_parquet(rows: list[ResultRow], path: str) -> None:
    """All rows as one Parquet table (scores spread into columns), written to a temp file then renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    score_names = sorted({k for r in rows for k in r.scores})
    table = {name: [getattr(r, "group" if name == "grp" else name) for r in rows]
             for name in COLUMNS if name not in ("scores", "categories")}
    table["group"] = table.pop("grp")
    table["categories"] = [",".join(r.categories) for r in rows]
    for name in score_names:
        table[f"score_{name}"] = [r.scores.get(name) for r in rows]
    from steering.files import atomic_file

    with atomic_file(path, suffix=".parquet") as tmp:
        pq.write_table(pa.table(table), tmp)
