"""Before / After Grid (steering/evaluation): the same seeds without and with a method, in one
labelled image (steering/comparison.py)."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..operator_policy.graph import IMAGE_TRANSFORM
from ..steering.comparison import before_after_grid
from .common import CATEGORY, schema


class BeforeAfterGrid(io.ComfyNode):
    POLICY_ROLE = IMAGE_TRANSFORM   # its image is made only from its two IMAGE inputs and labels
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSBeforeAfterGrid",
            search_aliases=["before", "after", "compare", "comparison", "grid", "evaluation", "demo"],
            display_name="Before / After Grid",
            category=f"{CATEGORY}/evaluation",
            description="One labelled image of two batches made with the same seeds: the top row without the "
                        "method, the bottom row with it, image i of both rows from the same seed. Small images "
                        "are enlarged with sharp pixels.",
            inputs=[
                io.Image.Input("before", tooltip="Images without the method (a batch)."),
                io.Image.Input("after", tooltip="Images with the method: same seeds and size, same order."),
                io.String.Input("caption", default="", tooltip="Written above the grid (may be empty)."),
                io.String.Input("before_label", default="before", tooltip="Label of the top row."),
                io.String.Input("after_label", default="after", tooltip="Label of the bottom row."),
                io.Int.Input("cell_size", default=128, min=16, max=1024,
                             tooltip="Images are enlarged by a whole factor to at most this many pixels "
                                     "(never shrunk)."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The grid as one image.")],
        )

    @classmethod
    def execute(cls, before, after, caption, before_label, after_label, cell_size) -> io.NodeOutput:
        return io.NodeOutput(before_after_grid(before, after, caption, (before_label, after_label), cell_size))


NODES = [BeforeAfterGrid]
