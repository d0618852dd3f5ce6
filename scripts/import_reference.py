"""Convert the methods' published reference vectors (.pth) into Responsible Steering vector files.

Run from the repository root (torch alone is needed, not ComfyUI)::

    python -m scripts.import_reference FILE.pth --out DIR [--concepts concept_dict.json]

The formats and the conversion are steering/reference_import.py's; this is only the
command line around it: it prints the detected format to stderr and each written file to
stdout, and exits with 2 on a file it refuses.
"""
from __future__ import annotations

import argparse
import json
import sys

from steering.reference_import import FORMATS, import_reference
from steering.vector_file import VectorFileError, save_vector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.import_reference",
        description="Convert published reference vectors (.pth) into Responsible Steering vector files.")
    parser.add_argument("file", help="reference .pth file (safe-direction.pth, SDisc or RespoDiff unet.pth)")
    parser.add_argument("--out", required=True, help="folder to write .safetensors vectors into")
    parser.add_argument("--format", choices=FORMATS, default="auto")
    parser.add_argument("--concepts", help="SDisc / RespoDiff concept_dict.json (default: found beside the file)")
    parser.add_argument("--arch", default="sd1", help="architecture the vectors were learned for")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files of the same name")
    args = parser.parse_args(argv)
    concepts = None
    if args.concepts:
        with open(args.concepts) as f:
            concepts = json.load(f)
    try:
        imported = import_reference(args.file, args.format, concepts, args.arch)
        print(imported.report_header(), file=sys.stderr)
        for vector in imported.vectors:
            print(save_vector(vector, args.out, vector.name, overwrite=args.overwrite))
    except VectorFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
