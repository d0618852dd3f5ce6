"""A progress line for the run: images done, throughput, ETA, servers alive, errors and re-queues.

Design: throughput and ETA count only the images of this run (not those resumed from the store),
over the wall time since the first task was sent. On a terminal the line is redrawn in place; in a
log (not a TTY) a line is printed at most every ``interval_s`` seconds, and at the end.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, already: int = 0, stream: TextIO = sys.stderr, interval_s: float = 10.0,
                 width: int = 28):
        self.total, self.already = total, already
        self.done = 0            # tasks of this run
        self.images = 0
        self.errors = 0
        self.requeued = 0
        self.servers = ""
        self.stream, self.interval_s, self.width = stream, interval_s, width
        self.start = time.monotonic()
        self.last_print = 0.0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        finished = self.already + self.done
        share = finished / self.total if self.total else 1.0
        bar = "#" * int(self.width * share) + "." * (self.width - int(self.width * share))
        rate = self.images / elapsed if elapsed > 0 else 0.0
        left = self.total - finished
        eta = clock(left * elapsed / self.done) if self.done else "?"
        return (f"[{bar}] {finished}/{self.total} tasks  {rate:.2f} images/s  ETA {eta}  elapsed {clock(elapsed)}"
                f"  servers {self.servers}  errors {self.errors}  re-queued {self.requeued}")

    def update(self, images: int = 0, error: bool = False, force: bool = False) -> None:
        self.done += 1 if images or error else 0
        self.images += images
        self.errors += bool(error)
        self.show(force)

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line())
            self.stream.flush()
        elif force or now - self.last_print >= self.interval_s:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self.last_print = now

    def note(self, message: str) -> None:
        self.stream.write(("\n" if self.tty else "") + message + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.show(force=True)
        if self.tty:
            self.stream.write("\n")
