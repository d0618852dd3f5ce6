"""``python -m devtools.policy_schema``: write ``policy.schema.json`` (the published JSON Schema of the operator's
policy) from operator_policy/document.py's models. A test fails when the file is stale."""
from __future__ import annotations

import json
import os
import sys

from devtools import comfy_env, pure

OUT = os.path.join(comfy_env.REPO, "policy.schema.json")


def text() -> str:
    return json.dumps(pure.module("operator_policy.document").json_schema(), indent=2) + "\n"


def main() -> int:
    with open(OUT, "w") as f:
        f.write(text())
    print(f"-> {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
