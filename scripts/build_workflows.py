"""Regenerate workflows/*.json (UI format) from scripts/workflow_specs/.

    .venv/bin/python scripts/build_workflows.py [--check]

--check exits non-zero if a committed workflow differs from what the specs produce.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

import workflow_specs  # noqa: E402
from workflow_builder import render_workflow  # noqa: E402

WORKFLOW_DIR = os.path.join(REPO, "workflows")


def all_specs():
    specs = []
    for module in sorted(m.name for m in pkgutil.iter_modules(workflow_specs.__path__)):
        specs += importlib.import_module(f"workflow_specs.{module}").WORKFLOWS
    return specs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    from rs_harness import ComfySession

    session = ComfySession(tempfile.mkdtemp(prefix="rs-workflows-"))
    stale = []
    for spec in all_specs():
        text = render_workflow(spec, session.node_class)
        path = os.path.join(WORKFLOW_DIR, f"{spec.name}.json")
        if args.check:
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(path)
            continue
        with open(path, "w") as f:
            f.write(text)
        print(path)
    if stale:
        print("out of date (run `make workflows`):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
