"""Write locales/en/ (the pack's English translations, which ComfyUI serves to the frontend at /i18n)
from the node schemas, so display names, descriptions, tooltips and search words cannot drift from them.

    .venv/bin/python -m devtools.build_locales [--check]

* ``locales/en/nodeDefs.json``: for every node of the pack its display name, description, search
  aliases and the name and tooltip of every input and output (outputs keyed by their index, as the
  frontend looks them up);
* ``locales/en/main.json``: the names of the pack's node categories (``nodeCategories``).

--check exits non-zero if a committed file differs from what the schemas produce.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from devtools.comfy_env import REPO

LOCALE_DIR = os.path.join(REPO, "locales", "en")


def output_name(output) -> str:
    """The name the frontend shows for an output (ComfyUI's own rule: its display name, else its type)."""
    return output.display_name or str(output.get_io_type())


def node_def(schema) -> dict:
    entry = {"display_name": schema.display_name or schema.node_id, "description": schema.description}
    aliases = getattr(schema, "search_aliases", None)
    if aliases:
        entry["search_aliases"] = list(aliases)
    entry["inputs"] = {inp.id: {"name": inp.display_name or inp.id, "tooltip": inp.tooltip}
                       for inp in schema.inputs}
    entry["outputs"] = {str(i): {"name": output_name(out), "tooltip": out.tooltip}
                        for i, out in enumerate(schema.outputs)}
    return entry


def node_defs(node_classes) -> dict:
    schemas = [cls.define_schema() for cls in node_classes]
    return {schema.node_id: node_def(schema) for schema in sorted(schemas, key=lambda s: s.node_id)}


def main_messages(node_classes) -> dict:
    segments = sorted({part for cls in node_classes for part in cls.define_schema().category.split("/") if part})
    return {"nodeCategories": {segment: segment for segment in segments}}


def render(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def locale_files(node_classes) -> dict[str, str]:
    """{path: text} of every file this script writes."""
    return {os.path.join(LOCALE_DIR, "nodeDefs.json"): render(node_defs(node_classes)),
            os.path.join(LOCALE_DIR, "main.json"): render(main_messages(node_classes))}


def pack_node_classes() -> list:
    """Every node class of the pack, as ComfyUI loads it."""
    from devtools import comfy_env, pack

    comfy_env.setup()
    return pack.module("nodes").all_nodes()


def read(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    files = locale_files(pack_node_classes())
    if args.check:
        stale = [path for path, text in files.items() if read(path) != text]
        for path in stale:
            print(f"stale: {os.path.relpath(path, REPO)} (run python -m devtools.build_locales)")
        return 1 if stale else 0
    os.makedirs(LOCALE_DIR, exist_ok=True)
    for path, text in files.items():
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(path, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
