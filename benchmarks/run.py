"""`make bench`: run benchmarks/bench_*.py and record their sections in RESULTS.md.

    .venv/bin/python -m benchmarks.run [NAME ...] [--device cpu|cuda] [--full-size] [--rounds N]

Each bench module defines TITLE and ``run(ctx) -> str`` (a markdown section); optionally DEVICES
(the devices it measures on; others skip it) and ``facts(ctx) -> str`` (the line under its title,
in place of device, model size and rounds). Results
are written between markers keyed by bench name and device, so CPU and GPU figures
of every bench live side by side and a re-run replaces only its own section.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import pkgutil
import re
import sys

from benchmarks.common import BenchContext, setup_comfy
from devtools import pure

HERE = os.path.dirname(os.path.abspath(__file__))

RESULTS = os.path.join(HERE, "RESULTS.md")
HEADER = ("# Benchmark results\n\nWritten by `make bench` (benchmarks/run.py). Ratios are medians of per-round "
          "ratios of variants run side by side in one process. CPU figures come from the tiny generated "
          "checkpoint, except the real-size section (random-weight SD1.5 and SDXL models, one run per variant); GPU "
          "figures (when a GPU was lent) from random-weight models of real SD1.5 size.\n")


def bench_names() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([HERE]) if m.name.startswith("bench_"))


def write_section(key: str, text: str, path: str = RESULTS) -> None:
    current = open(path).read() if os.path.exists(path) else HEADER
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block + "\n"
    pure.module("steering.files").write_atomically(path, updated.encode())


def section(name: str, module, ctx: BenchContext, body: str) -> tuple[str, str]:
    """(marker key, markdown) of bench `name`'s section: title, the run's facts, `body`, ctx's notes."""
    stamp = datetime.date.today().isoformat()
    if hasattr(module, "facts"):
        facts = f"{module.facts(ctx)}; {stamp}."
    else:
        size = "SD1.5-size random weights" if ctx.full_size else "tiny checkpoint"
        facts = f"{ctx.device_name}; {size}; {ctx.rounds} rounds; {stamp}."
    text = f"## {module.TITLE} [{ctx.device}]\n\n{facts}\n\n{body}"
    if ctx.notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in ctx.notes)
    return f"{name}:{ctx.device}{':full' if ctx.full_size else ''}", text


def checked_body(ctx: BenchContext, body: str, ok: bool) -> str:
    """A bench's section body, with a note in `ctx` when one of its checks failed."""
    if not ok:
        ctx.notes.append("A CHECK FAILED: see the figures above.")
    return body


def record_standalone(name: str, module, ctx: BenchContext, body: str, ok: bool, default_size: bool,
                      no_write: bool, size_note: str) -> int:
    """What a bench's own main() does with its run: print its section, write it to RESULTS.md only at the
    bench's default size (`size_note` says which) and without --no-write; exit status 1 when a check failed."""
    key, text = section(name, module, ctx, checked_body(ctx, body, ok))
    print(text)
    if no_write:
        pass
    elif not default_size:
        print(f"\n(not written to RESULTS.md: {size_note})")
    else:
        write_section(key, text)
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"benches to run (default all: {bench_names()})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--full-size", action="store_true", help="SD1.5-size random-weight models")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    setup_comfy(args.device)
    ctx = BenchContext(args.device, args.full_size, args.rounds or (10 if args.device == "cuda" else 5))
    for name in args.names or bench_names():
        module = importlib.import_module(f"benchmarks.bench_{name}")
        if args.device not in getattr(module, "DEVICES", (args.device,)):
            print(f"(bench {name} measures on {'/'.join(module.DEVICES)} only: skipped for {args.device})\n")
            continue
        ctx.notes = []
        key, text = section(name, module, ctx, module.run(ctx))
        print(text + "\n")
        if not args.no_write:
            write_section(key, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
