"""The node declarations the policy's graph functions read, snapshotted from a real ComfyUI for fast tests.

``python -m devtools.node_catalog`` writes ``tests/data/node_catalog.json``: for every node class the pack's
policy tests use (ComfyUI's own and the pack's), what ``steering.comfy_compat.node_facts`` reads (inputs with
type, category and rawLink; output types; output node; intermediate output) and the pack's policy marks. The
fast tests build ``operator_policy.graph.NodeInfo`` from it without importing ComfyUI; a slow test checks that
the file still equals what the running ComfyUI declares.
"""
from __future__ import annotations

import json
import os
import sys

from devtools import comfy_env

OUT = os.path.join(comfy_env.REPO, "tests", "data", "node_catalog.json")
CLASSES = sorted({
    "CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "VAEDecodeTiled",
    "VAEEncode", "SaveImage", "PreviewImage", "SaveAnimatedPNG", "SaveLatent", "SaveTrainingDataset",
    "MaskPreview", "PreviewAny", "ImageInvert", "ImageCrop", "ImageBatch", "ImageBlend", "ImageToMask",
    "MaskToImage", "ImagePadForOutpaint", "ImageCompositeMasked", "EmptyImage", "LoadImage", "SolidMask",
    "ImageUpscaleWithModel", "CreateVideo", "SaveVideo", "StringConcatenate", "PrimitiveString", "GetImageSize",
    "ControlNetApplyAdvanced", "RSLoadToyWorld", "RSToyWorldEmptyLatent", "RSToyWorldRedScore", "RSSafetyRate",
    "RSSaDiIndex", "RSBeforeAfterGrid", "RSDetectUnsafe", "RSDualLatentInputDetector", "RSPolicyOutputGuard",
    "RSPolicySteer", "RSSaveVector", "RSLoadVector",
})


def snapshot() -> dict:
    import tempfile

    from devtools.session import ComfySession

    session = ComfySession(tempfile.mkdtemp(prefix="rs-catalog-"))    # ComfyUI's own nodes and the pack's
    compat = session.module("steering.comfy_compat")
    table = {}
    for name in CLASSES:
        facts = compat.node_facts(name)
        if facts is None:
            continue
        table[name] = {"inputs": {k: list(v) for k, v in facts.inputs.items()}, "outputs": list(facts.outputs),
                       "output_node": facts.output_node, "intermediate_output": facts.intermediate_output,
                       "role": getattr(facts.cls, "POLICY_ROLE", None),
                       "concept_inputs": sorted(getattr(facts.cls, "POLICY_CONCEPT_INPUTS", ()) or ())}
    return table


def main() -> int:
    comfy_env.setup()
    table = snapshot()
    with open(OUT, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(table)} node classes -> {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
