"""ComfyUI's API prompt format, as its executor reads it (comfy_execution/graph_utils.py ``is_link`` and the
input types execution.py converts from widget values, 0.3.75 and upstream 0.38): no ComfyUI import, for the
code that reads prompts outside a server (the evaluation command, the node input checks, the policy's graph).

The server-side policy calls ComfyUI's own ``is_link`` (steering/comfy_compat.py); a test checks that
:func:`is_link` answers the same for every kind of value.
"""
from __future__ import annotations

from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
"""Input types whose values are written in the prompt (widgets): numbers, texts, booleans and option lists."""


def is_link(value: Any) -> bool:
    """Whether ComfyUI's executor follows `value` as a link: a list [node id text, int or float slot] (a JSON
    boolean is a Python int)."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)))
