"""Write example workflows in ComfyUI's UI format (what drag-and-drop loads) from short
Python descriptions, using the real node schemas so widget order and socket types are
exactly what the frontend expects.

A spec module in devtools/workflow_specs/ defines ``WORKFLOWS``: a list of
``Spec(name, title, description, build)`` where ``build(w: WorkflowBuilder)`` adds nodes::

    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    pos = w.node("CLIPTextEncode", text="a photo", clip=ckpt.out("CLIP"))
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from devtools.workflows import is_widget

# What users load: the checkpoint names the example workflows ask for.
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
CONTROL_AFTER_GENERATE_DEFAULT = "fixed"


@dataclass
class Spec:
    name: str
    title: str
    description: str
    build: Callable[["WorkflowBuilder"], None]
    needs_reference_vectors: bool = False


@dataclass
class Output:
    node: "UINode"
    slot: int
    type: str


@dataclass
class UINode:
    id: int
    type: str
    spec: dict
    return_types: list[str]
    return_names: list[str]
    values: dict[str, Any]
    links_in: dict[str, Output] = field(default_factory=dict)
    title: str | None = None

    def out(self, name_or_slot: str | int = 0) -> Output:
        if isinstance(name_or_slot, int):
            slot = name_or_slot
        elif name_or_slot in self.return_names:
            slot = self.return_names.index(name_or_slot)
        elif name_or_slot in self.return_types:
            slot = self.return_types.index(name_or_slot)
        else:
            raise KeyError(f"{self.type} has no output {name_or_slot!r}: {self.return_names or self.return_types}")
        return Output(self, slot, self.return_types[slot])


def _socket_type(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


class WorkflowBuilder:
    def __init__(self, node_class: Callable[[str], Any]):
        self._node_class = node_class
        self.nodes: list[UINode] = []
        self.notes: list[str] = []

    def node(self, class_type: str, title: str | None = None, **inputs) -> UINode:
        cls = self._node_class(class_type)
        spec = cls.INPUT_TYPES()
        ordered = {**spec.get("required", {}), **spec.get("optional", {})}
        unknown = set(inputs) - set(ordered)
        if unknown:
            raise KeyError(f"{class_type} has no inputs {sorted(unknown)}; it has {list(ordered)}")
        names = list(getattr(cls, "RETURN_NAMES", None) or [])
        types = [t if isinstance(t, str) else "COMBO" for t in cls.RETURN_TYPES]
        node = UINode(len(self.nodes) + 1, class_type, ordered, types, names or types, {}, title=title)
        for name, value in inputs.items():
            if isinstance(value, Output):
                node.links_in[name] = value
            else:
                if not is_widget(ordered[name]):
                    raise TypeError(f"{class_type}.{name} is a socket; connect an output to it")
                node.values[name] = value
        for name, s in ordered.items():  # widgets not given take their defaults, as in the frontend
            if name in inputs:
                continue
            options = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            if is_widget(s) and "default" in options:
                node.values[name] = options["default"]
            elif is_widget(s) and isinstance(s[0], list) and s[0]:
                node.values[name] = s[0][0]
            elif name in spec.get("required", {}):
                raise KeyError(f"{class_type}: required input {name!r} not given")
        self.nodes.append(node)
        return node

    def note(self, text: str) -> None:
        self.notes.append(text)

    def _depths(self) -> dict[int, int]:
        depth: dict[int, int] = {}
        for node in self.nodes:  # nodes are created after their inputs
            depth[node.id] = 1 + max((depth[o.node.id] for o in node.links_in.values()), default=-1)
        return depth

    def to_ui(self, title: str, description: str) -> dict:
        links, ui_nodes = [], []
        outgoing: dict[tuple[int, int], list[int]] = {}
        for node in self.nodes:
            for name, source in node.links_in.items():
                link_id = len(links) + 1
                target_slot = [n for n, s in node.spec.items() if not is_widget(s) or n in node.links_in].index(name)
                links.append([link_id, source.node.id, source.slot, node.id, target_slot, source.type])
                outgoing.setdefault((source.node.id, source.slot), []).append(link_id)
        depth = self._depths()
        rows: dict[int, int] = {}
        link_of = {(l[3], l[4]): l[0] for l in links}
        for order, node in enumerate(self.nodes):
            column = depth[node.id]
            row = rows.get(column, 0)
            rows[column] = row + 1
            inputs, widget_values = [], []
            sockets = [n for n, s in node.spec.items() if not is_widget(s) or n in node.links_in]
            for slot, name in enumerate(sockets):
                s = node.spec[name]
                entry = {"name": name, "type": _socket_type(s), "link": link_of.get((node.id, slot))}
                if is_widget(s):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            for name, s in node.spec.items():
                if not is_widget(s):
                    continue
                options = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                if name not in node.values and name in node.links_in:
                    node.values[name] = options.get("default")
                if name not in node.values:
                    continue
                widget_values.append(node.values[name])
                if options.get("control_after_generate") or name in ("seed", "noise_seed"):  # as the frontend does
                    widget_values.append(CONTROL_AFTER_GENERATE_DEFAULT)
            outputs = [{"name": node.return_names[i], "type": t, "links": outgoing.get((node.id, i), []),
                        "slot_index": i} for i, t in enumerate(node.return_types)]
            entry = {
                "id": node.id, "type": node.type, "pos": [40 + 360 * column, 40 + 260 * row],
                "size": [320, 120 + 24 * len(widget_values)], "flags": {}, "order": order, "mode": 0,
                "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node.type}, "widgets_values": widget_values,
            }
            if node.title:
                entry["title"] = node.title
            ui_nodes.append(entry)
        notes_text = "\n\n".join([f"{title}\n\n{description}"] + self.notes)
        note_id = len(ui_nodes) + 1
        ui_nodes.append({"id": note_id, "type": "Note", "pos": [40, -260], "size": [700, 220], "flags": {},
                         "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                         "properties": {}, "widgets_values": [notes_text]})
        return {
            "last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 300]},
                                                  "responsible_steering": {"title": title}},
            "version": 0.4,
        }


def render_workflow(spec: Spec, node_class: Callable[[str], Any]) -> str:
    builder = WorkflowBuilder(node_class)
    spec.build(builder)
    return json.dumps(builder.to_ui(spec.title, spec.description), indent=1) + "\n"
