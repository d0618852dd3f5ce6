"""Regenerate the example workflows (UI format) from devtools/workflow_specs/.

    .venv/bin/python -m devtools.build_workflows [--check]

Writes, for every spec, example_workflows/NN <title>.json (the template ComfyUI's template browser
lists, at the quick CPU settings; the frontends show the file name as its title and order by it) and
workflows/real_model/<name>.json (the real SD1.5 settings); SD3/FLUX specs only workflows/dit/<name>.json (the
real settings, for the user's FLUX or SD3 files). Other .json files in those folders are
removed; anything else there (the templates' .jpg thumbnails) is kept.
--check exits non-zero if a committed workflow differs from what the specs produce.
Node sizes come from devtools/node_sizes.json (`python -m devtools.node_sizes`; `make workflows`
runs both).
"""
from __future__ import annotations

import argparse
import glob
import importlib
import os
import pkgutil
import re
import sys
import tempfile
from typing import Any, Callable

from devtools import node_sizes, workflow_specs
from devtools.workflow_builder import Spec, render_workflow
from devtools.workflows import DIT_DIR, EXAMPLE_DIR, WORKFLOW_DIR

# template order: spec modules in this order (the rest after them, by name), specs in module order
MODULE_ORDER = ["toyworld", "vectors", "training", "dual_latent", "stg", "dit"]


def all_specs() -> list[Spec]:
    names = sorted(m.name for m in pkgutil.iter_modules(workflow_specs.__path__))
    names.sort(key=lambda m: MODULE_ORDER.index(m) if m in MODULE_ORDER else len(MODULE_ORDER))
    specs = []
    for module in names:
        specs += importlib.import_module(f"{workflow_specs.__name__}.{module}").WORKFLOWS
    return specs


def template_name(index: int, title: str) -> str:
    """The template's file name without .json: its number and title, without characters that file
    systems or URLs do not take."""
    cleaned = re.sub(r"\s+", " ", re.sub(r"[/\\:*?\"<>|#%&+]", "-", title)).strip(" .-")
    return f"{index:02d} {cleaned}"


def copies() -> list[tuple[Spec, str | None, str | None]]:
    """(spec, its template's path or None, its real-model copy's path or None) for every spec, in template
    order; SD3/FLUX specs have no template and their real-model copy in workflows/dit/."""
    out = []
    templates = [spec for spec in all_specs() if spec.dit is None]
    for index, spec in enumerate(templates, start=1):
        out.append((spec, os.path.join(EXAMPLE_DIR, template_name(index, spec.title) + ".json"),
                    os.path.join(WORKFLOW_DIR, f"{spec.name}.json") if spec.real_model else None))
    out += [(spec, None, os.path.join(DIT_DIR, f"{spec.name}.json")) for spec in all_specs() if spec.dit]
    return out


def outputs(node_class: Callable[[str], Any], sizes: dict | None = None) -> dict[str, str]:
    """Every workflow file the specs produce: path -> text."""
    sizes = node_sizes.load() if sizes is None else sizes
    files = {}
    for spec, template, real in copies():
        if template is None:
            files[real] = render_workflow(spec, node_class, "real", sizes)
            continue
        if real is None:
            files[template] = render_workflow(spec, node_class, "real", sizes)
            continue
        files[template] = render_workflow(spec, node_class, "cpu", sizes,
                                          real_copy=os.path.relpath(real, os.path.dirname(EXAMPLE_DIR)))
        files[real] = render_workflow(spec, node_class, "real", sizes)
    return files


def stale_files(files: dict[str, str]) -> list[str]:
    """Committed workflow files (.json only) that the specs no longer produce."""
    present = [p for folder in (EXAMPLE_DIR, WORKFLOW_DIR, DIT_DIR) for p in glob.glob(os.path.join(folder, "*.json"))]
    return sorted(p for p in present if p not in files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    from devtools.session import ComfySession

    session = ComfySession(tempfile.mkdtemp(prefix="rs-workflows-"))
    try:
        files = outputs(session.node_class)
    except node_sizes.NodeSizesError as e:
        print(e, file=sys.stderr)
        return 1
    extra = stale_files(files)
    if args.check:
        stale = [p for p, text in files.items() if not os.path.exists(p) or open(p).read() != text]
        if stale or extra:
            print("out of date (run `make workflows`):", *stale, *(f"{p} (no spec)" for p in extra), sep="\n  ")
            return 1
        return 0
    for path in extra:
        os.remove(path)
        print(f"removed {path}")
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
