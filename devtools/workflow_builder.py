"""Write example workflows in ComfyUI's UI format (what drag-and-drop loads) from short
Python descriptions, using the real node schemas so widget order and socket types are
exactly what the frontend expects.

A spec module in devtools/workflow_specs/ defines ``WORKFLOWS``: a list of
``Spec(name, title, description, build)`` where ``build(w: WorkflowBuilder)`` adds nodes::

    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    pos = w.node("CLIPTextEncode", text="a photo", clip=ckpt.out("CLIP"))

Specs give the real-model settings; the "cpu" profile applies devtools.workflows.quick_inputs to
every node as it is added. Nodes are laid out from their sizes in the frontends
(devtools/node_sizes.json): one column per graph depth, the Note beside or above, and the saved view
fits the whole graph into the part of a 1280x720 window that the frontends' bars leave free.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from devtools import node_sizes
from devtools.workflows import is_widget, quick_inputs

# What users load: the checkpoint names the example workflows ask for.
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
CONTROL_AFTER_GENERATE_DEFAULT = "fixed"
PROFILES = ("real", "cpu")
GAP_X, GAP_Y = 60, 40      # between columns / between nodes of a column (graph units)
VIEW_MARGIN = 24           # window px kept free around the graph in the saved view
NOTE_WIDTH = 520
# room nodes grow into when they show a result: image outputs draw the images below their widgets,
# the training node its loss graph (GRAPH_HEIGHT in js/training_loss_graph.js)
IMAGE_PREVIEW_SIZE = (300, 330)
RESULT_ROOM = {"RSTrainSteeringVector": 130}
NOTE_CHAR_WIDTH, NOTE_LINE_HEIGHT, NOTE_PADDING = 7.2, 18, 24   # the Note's textarea text, px


@dataclass
class Spec:
    name: str
    title: str
    description: str
    build: Callable[["WorkflowBuilder"], None]
    needs_reference_vectors: bool = False
    # False: the spec's settings already run quickly on a CPU (e.g. on the pack's demo model): the
    # template keeps them and there is no real-model copy
    real_model: bool = True
    # "flux" / "sd3": the workflow loads a FLUX or SD3 user's files; it is written to workflows/dit/ at the real
    # settings only (no template: the demo's checkpoint is SD1) and the tests run it on devtools.tiny_dit's model
    dit: str | None = None


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
    def __init__(self, node_class: Callable[[str], Any], profile: str = "real"):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        self._node_class = node_class
        self.profile = profile
        self.nodes: list[UINode] = []
        self.notes: list[str] = []
        self.real_values: dict[int, dict[str, Any]] = {}   # node id -> widget values the spec gave

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
        self.real_values[node.id] = dict(node.values)
        if self.profile == "cpu":
            quick_inputs(class_type, node.values)
        self.nodes.append(node)
        return node

    def note(self, text: str) -> None:
        self.notes.append(text)

    def _depths(self) -> dict[int, int]:
        depth: dict[int, int] = {}
        for node in self.nodes:  # nodes are created after their inputs
            depth[node.id] = 1 + max((depth[o.node.id] for o in node.links_in.values()), default=-1)
        return depth

    def real_settings(self) -> str:
        """The settings the cpu profile changed, as the real-model copy has them (one line)."""
        changed: dict[str, list] = {}
        for node in self.nodes:
            for name, value in self.real_values[node.id].items():
                if node.values.get(name) != value and value not in changed.setdefault(name, []):
                    changed[name].append(value)
        if changed.get("width") and changed.get("width") == changed.get("height"):
            changed = {"size": changed.pop("width"), **changed}
            del changed["height"]
        order = list(SETTING_WORDS)
        named = sorted((n for n, v in changed.items() if v), key=lambda n: order.index(n) if n in order else len(order))
        return ", ".join(_describe_setting(name, changed[name]) for name in named)

    def to_ui(self, title: str, description: str, sizes: dict | None = None, note_extra: str = "",
              spec_name: str | None = None, dit: str | None = None) -> dict:
        links, ui_nodes = [], []
        outgoing: dict[tuple[int, int], list[int]] = {}
        for node in self.nodes:
            for name, source in node.links_in.items():
                link_id = len(links) + 1
                target_slot = [n for n, s in node.spec.items() if not is_widget(s) or n in node.links_in].index(name)
                links.append([link_id, source.node.id, source.slot, node.id, target_slot, source.type])
                outgoing.setdefault((source.node.id, source.slot), []).append(link_id)
        notes_text = "\n\n".join([f"{title}\n\n{description}"] + ([note_extra] if note_extra else []) + self.notes)
        layout = self.layout(notes_text, sizes)
        link_of = {(l[3], l[4]): l[0] for l in links}
        for order, node in enumerate(self.nodes):
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
            pos, size = layout["boxes"][node.id]
            entry = {
                "id": node.id, "type": node.type, "pos": pos, "size": size, "flags": {}, "order": order, "mode": 0,
                "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node.type}, "widgets_values": widget_values,
            }
            if node.title:
                entry["title"] = node.title
            ui_nodes.append(entry)
        note_id = len(ui_nodes) + 1
        pos, size = layout["boxes"][NOTE_ID]
        ui_nodes.append({"id": note_id, "type": "Note", "pos": pos, "size": size, "flags": {},
                         "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                         "properties": {}, "widgets_values": [notes_text]})
        return {
            "last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": layout["ds"],
                                                  "responsible_steering": {"title": title, "profile": self.profile,
                                                                           **({"name": spec_name} if spec_name else {}),
                                                                           **({"dit": dit} if dit else {})}},
            "version": 0.4,
        }

    def _laid_out_size(self, node: UINode, measured: list[int]) -> list[int]:
        w, h = measured
        cls = self._node_class(node.type)
        if getattr(cls, "OUTPUT_NODE", False) and any(s[0] == "IMAGE" for s in node.spec.values()):
            w, h = max(w, IMAGE_PREVIEW_SIZE[0]), max(h, IMAGE_PREVIEW_SIZE[1])
        return [w, h + RESULT_ROOM.get(node.type, 0)]

    def layout(self, notes_text: str, sizes: dict | None = None) -> dict:
        """Positions and sizes of every node (NOTE_ID: the Note) and the saved view, from the frontends'
        node sizes: boxes {id: ([x, y], [w, h])} (pos is below the title bar, as in LiteGraph), ds."""
        if sizes is None:
            sizes = node_sizes.load()
        types = {n.type for n in self.nodes} | {"Note"}
        node_sizes.check(sizes, types, self._node_class)
        title_h = sizes["title_height"]
        size_of = {n.id: self._laid_out_size(n, sizes["nodes"][n.type]["size"]) for n in self.nodes}
        depth = self._depths()
        columns: dict[int, list[UINode]] = {}
        for node in self.nodes:
            columns.setdefault(depth[node.id], []).append(node)
        boxes: dict[int, tuple[list[int], list[int]]] = {}
        centre: dict[int, float] = {}
        x = 0
        for column in sorted(columns):
            members = columns[column]
            if column > 0:   # next to the nodes they read from (mean height of their inputs), fewer crossings
                members = sorted(members, key=lambda n: (sum(centre[o.node.id] for o in n.links_in.values())
                                                         / max(len(n.links_in), 1), n.id))
            y = title_h
            for node in members:
                w, h = size_of[node.id]
                boxes[node.id] = ([x, y], [w, h])
                centre[node.id] = y + h / 2
                y += h + GAP_Y + title_h
            x += max(size_of[n.id][0] for n in members) + GAP_X
        graph_w = x - GAP_X
        graph_h = max(p[1] + s[1] for p, s in boxes.values())
        min_note = sizes["nodes"]["Note"]["size"]
        # the Note above the graph (as wide as it, up to 2 x NOTE_WIDTH) or in a column left of it:
        # whichever lets the saved view show everything larger
        best = None
        for where in ("above", "left"):
            note_w = max(min_note[0], min(graph_w, 2 * NOTE_WIDTH) if where == "above" else NOTE_WIDTH)
            note_h = max(min_note[1], _note_height(notes_text, note_w))
            if where == "above":
                shift, note_pos = (0, note_h + GAP_Y + title_h), [0, title_h]
            else:
                shift, note_pos = (note_w + GAP_X, 0), [0, title_h]
            placed = {i: ([p[0] + shift[0], p[1] + shift[1]], s) for i, (p, s) in boxes.items()}
            placed[NOTE_ID] = (note_pos, [note_w, note_h])
            bounds = (0, 0, max(p[0] + s[0] for p, s in placed.values()), max(p[1] + s[1] for p, s in placed.values()))
            ds = fit_view(bounds, sizes["free_rects"])
            if best is None or ds["scale"] > best[1]["scale"]:
                best = (placed, ds)
        return {"boxes": best[0], "ds": best[1]}


NOTE_ID = 0


def _note_height(text: str, width: int) -> int:
    per_line = max(1, int((width - NOTE_PADDING) / NOTE_CHAR_WIDTH))
    lines = sum(max(1, -(-len(line) // per_line)) for line in text.split("\n"))
    return int(NOTE_PADDING + lines * NOTE_LINE_HEIGHT)


def fit_view(bounds: tuple[float, float, float, float], free_rects: list[list[int]]) -> dict:
    """The saved view (LiteGraph ds: screen = (graph + offset) x scale) that shows the graph box
    bounds = (x0, y0, x1, y1) as large as possible, scale <= 1, inside one of the window's free
    rectangles less VIEW_MARGIN, at its top left."""
    gw, gh = bounds[2] - bounds[0], bounds[3] - bounds[1]
    best = None
    for x0, y0, x1, y1 in free_rects:
        rx0, ry0, rw, rh = x0 + VIEW_MARGIN, y0 + VIEW_MARGIN, x1 - x0 - 2 * VIEW_MARGIN, y1 - y0 - 2 * VIEW_MARGIN
        if rw <= 0 or rh <= 0:
            continue
        scale = math.floor(min(1.0, rw / gw, rh / gh) * 1000) / 1000
        if best is None or scale > best[0]:
            best = (scale, rx0, ry0)
    if best is None:
        raise ValueError(f"no free canvas area to show the workflow in: {free_rects}")
    scale, rx0, ry0 = best
    return {"scale": scale, "offset": [round(rx0 / scale - bounds[0], 2), round(ry0 / scale - bounds[1], 2)]}


SETTING_WORDS = {"size": "{} px latents", "width": "{} px wide", "height": "{} px high", "steps": "{} sampling steps",
                 "iterations": "{} training iterations", "batch_size": "training batch {}",
                 "resolution": "training resolution {}", "rollout_steps": "{} rollout steps",
                 "gradient_checkpointing": "gradient checkpointing {}"}


def _describe_setting(name: str, values: list) -> str:
    if name == "resolution" and values == [0]:
        return "training at the model's own resolution"
    shown = "/".join("on" if v is True else "off" if v is False else str(v) for v in values)
    return SETTING_WORDS.get(name, name + " {}").format(shown)


def render_workflow(spec: Spec, node_class: Callable[[str], Any], profile: str = "real",
                    sizes: dict | None = None, real_copy: str | None = None) -> str:
    """The workflow file's text. profile "cpu": the quick settings, and the Note names the settings
    of the real-model copy (real_copy: its path, for the Note)."""
    builder = WorkflowBuilder(node_class, profile)
    spec.build(builder)
    extra = ""
    if profile == "cpu":
        real = builder.real_settings()
        where = f" ({real_copy})" if real_copy else ""
        extra = (f"Quick settings, to run on a CPU in about a minute. The real-model copy{where} has the settings "
                 f"for SD1.5: {real}." if real else "")
    return json.dumps(builder.to_ui(spec.title, spec.description, sizes, extra, spec.name, spec.dit), indent=1) + "\n"
