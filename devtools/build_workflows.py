"""Regenerate workflows/*.json (UI format) from devtools/workflow_specs/.

    .venv/bin/python -m devtools.build_workflows [--check]

--check exits non-zero if a committed workflow differs from what the specs produce.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import tempfile

from devtools import workflow_specs
from devtools.session import ComfySession
from devtools.workflow_builder import Spec, render_workflow
from devtools.workflows import WORKFLOW_DIR


def all_specs() -> list[Spec]:
    specs = []
    for module in sorted(m.name for m in pkgutil.iter_modules(workflow_specs.__path__)):
        specs += importlib.import_module(f"{workflow_specs.__name__}.{module}").WORKFLOWS
    return specs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
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
