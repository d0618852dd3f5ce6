"""``python -m operator_policy verify IMAGE.png [IMAGE.png ...] (--policy POLICY.json | --key KEY)``: whether each
PNG's responsible_steering record was signed by this server for exactly its pixels. Exit 0 when every file is
genuine, 1 otherwise. Run from the pack's folder; needs numpy and Pillow only."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import provenance


def key_path_of(policy_path: str) -> str:
    """The key a policy file names (provenance.key_path, relative to the policy; default provenance.key)."""
    with open(policy_path, "rb") as f:
        document = json.loads(f.read().decode("utf-8"))
    path = ((document.get("provenance") or {}).get("key_path") if isinstance(document, dict) else None) \
        or "provenance.key"
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(policy_path)), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operator_policy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check saved PNGs against the server's signing key")
    verify.add_argument("images", nargs="+")
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--policy", help="the server's policy.json (its key sits beside it)")
    where.add_argument("--key", help="the server's provenance.key")
    args = parser.parse_args(argv)
    key_file = args.key or key_path_of(args.policy)
    try:
        with open(key_file, "rb") as f:
            key = f.read()
    except OSError as e:
        print(f"cannot read the key {key_file}: {e.strerror}", file=sys.stderr)
        return 2
    if len(key) != provenance.KEY_BYTES:
        print(f"{key_file} is not a provenance key ({len(key)} bytes; expected {provenance.KEY_BYTES})",
              file=sys.stderr)
        return 2
    genuine = True
    for path in args.images:
        result = provenance.verify_png(path, key)
        genuine &= result.genuine
        detail = ""
        if result.record is not None:
            r = result.record
            detail = (f" (prompt {r.get('prompt_id')}, node {r.get('output_node')} {r.get('class_type')}, image "
                      f"{r.get('index')}, flagged {r.get('flagged')}, {r.get('action')}, policy "
                      f"{str(r.get('policy_sha256'))[:12]})")
        print(f"{path}: {'GENUINE' if result.genuine else 'NOT GENUINE'}: {result.reason}{detail}")
    return 0 if genuine else 1


if __name__ == "__main__":
    raise SystemExit(main())
