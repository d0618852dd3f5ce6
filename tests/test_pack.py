"""The pack as ComfyUI and ComfyUI-Manager see it: registration, schema hygiene, packaging."""
from __future__ import annotations

import os
import re
import sys
import tomllib

from devtools.comfy_env import REPO

EXPECTED_NODES = {
    "RSLoadVector", "RSSaveVector", "RSCombineVectors", "RSVectorSet", "RSImportReferenceVectors",
    "RSApplyEmbeddingDirection", "RSApplyEmbeddingDirectionFair", "RSApplyHSpaceVector", "RSApplyHSpaceVectorFair",
    "RSTrainSteeringVector", "RSPlotSteeringLoss",
    "RSSTGKSampler", "RSSTGGuider", "RSNudeNetScore", "RSCLIPViolenceScore", "RSCLIPArtistScore",
    "RSColourStatisticScore", "RSDetectUnsafe", "RSCensor",
    "RSDualLatentKSampler", "RSDualLatentGuider", "RSDualLatentInputDetector",
    "RSSafetyRate", "RSCLIPScore", "RSCLIPAttributeClassifier", "RSFairnessDeviation", "RSSemanticDisruption",
    "RSSaDiIndex",
}


def pack_nodes(comfy):
    return {k: v for k, v in comfy.nodes.NODE_CLASS_MAPPINGS.items() if getattr(v, "RELATIVE_PYTHON_MODULE", "")
            and v.RELATIVE_PYTHON_MODULE.endswith("responsible-steering")}


def test_all_nodes_registered_under_steering(comfy):
    nodes = pack_nodes(comfy)
    assert EXPECTED_NODES <= set(nodes)
    for node_id, cls in nodes.items():
        schema = cls.GET_SCHEMA()
        assert schema.category.startswith("steering/"), node_id
        assert schema.description and len(schema.description) > 30, f"{node_id} has no description"
        assert re.fullmatch(r"RS[A-Za-z]+", node_id)


def test_every_input_has_a_tooltip(comfy):
    for node_id, cls in pack_nodes(comfy).items():
        spec = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, value in spec.get(group, {}).items():
                options = value[1] if len(value) > 1 else {}
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_packaging_metadata():
    project = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))
    assert project["project"]["name"] == "responsible-steering"
    assert "comfyui" not in project["project"]["name"].lower()
    comfy_meta = project["tool"]["comfy"]
    assert comfy_meta["PublisherId"] and comfy_meta["DisplayName"] == "Responsible Steering" and comfy_meta["Icon"]
    requirements = [l.strip() for l in open(os.path.join(REPO, "requirements.txt"))
                    if l.strip() and not l.startswith("#")]
    assert not [r for r in requirements if re.match(r"(torch|torchvision|torchaudio)\b", r)]
    names = {re.split(r"[<>=!~ ]", r)[0].lower() for r in requirements}
    assert names == {re.split(r"[<>=!~ ]", d)[0].lower() for d in project["project"]["dependencies"]}


def test_pack_exports_v3_entrypoint_only(comfy):
    assert hasattr(comfy.pack, "comfy_entrypoint") and comfy.pack.WEB_DIRECTORY == "./js"
    assert not hasattr(comfy.pack, "NODE_CLASS_MAPPINGS")
    assert os.path.isdir(os.path.join(REPO, "js"))


def test_the_pack_is_loaded_once(comfy):
    """One copy of the pack's modules per process: the one ComfyUI's loader made, which devtools.pack
    (what benchmarks use) finds by its file."""
    from devtools import pack

    entry = os.path.realpath(os.path.join(REPO, "steering", "architectures.py"))
    copies = [m for m in list(sys.modules.values())
              if os.path.realpath(getattr(m, "__file__", None) or os.devnull) == entry]
    assert copies == [comfy.module("steering.architectures")]
    assert pack.module("steering.architectures") is copies[0]
