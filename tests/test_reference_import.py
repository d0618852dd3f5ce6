"""Import of the authors' published vectors (weights-only), as a node and as a command."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from rs_harness import REPO, Graph, PromptError


@pytest.fixture(scope="module")
def ri(comfy):
    return comfy.module("steering.reference_import")


def test_embedding_direction_file_converts_exactly(ri, reference_vectors_dir):
    path = os.path.join(reference_vectors_dir, "embedding-direction_safe-direction.pth")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    (vector,) = ri.import_reference_file(path)
    assert vector.method == "embedding_direction" and vector.arch == "sd1"
    expected = (raw["b"] @ raw["a"])[0].float()
    assert expected.shape == (77, 768)
    assert torch.allclose(vector.embedding_direction(), expected, atol=1e-6)


def test_sdisc_file_gives_one_named_vector_per_concept(ri, reference_vectors_dir):
    path = os.path.join(reference_vectors_dir, "sdisc_unet.pth")
    weight = torch.load(path, map_location="cpu", weights_only=True)["controlnet.fc1.weight"].float()
    concepts = json.load(open(os.path.join(reference_vectors_dir, "sdisc_concept_dict.json")))
    vectors = ri.import_reference_file(path)
    assert [v.info["concept"] for v in vectors] == sorted(concepts, key=concepts.get)
    for v in vectors:
        k = concepts[v.info["concept"]]
        assert v.method == "hspace_cvector" and v.tensors["c"].shape == (1280, 8, 8)
        assert torch.equal(v.tensors["c"].flatten(), weight[:, k])


def test_command_line_writes_loadable_files(reference_vectors_dir, tmp_path, comfy):
    out = tmp_path / "vectors"
    for name in ("embedding-direction_safe-direction.pth", "sdisc_unet.pth"):
        subprocess.run([sys.executable, "-m", "steering.reference_import",
                        os.path.join(reference_vectors_dir, name), "--out", str(out)], cwd=REPO, check=True)
    files = sorted(os.listdir(out))
    assert files == sorted(["safe-direction.safetensors"] + [f"sdisc_{c}.safetensors" for c in (
        "female", "male", "young", "old", "whiterace", "blackrace", "asianrace", "antisexual")])
    vf = comfy.module("steering.vector_file")
    assert vf.load_vector(str(out / "sdisc_male.safetensors")).info["concept"] == "male"


def test_command_line_refuses_code_in_pickles(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"a": Exploit()}, str(evil))
    done = subprocess.run([sys.executable, "-m", "steering.reference_import", str(evil), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert "weights-only" in done.stderr
    assert not (tmp_path / "pwned").exists()


def test_import_node_converts_files_in_the_vector_folder(comfy, reference_vectors_dir):
    shutil.copy(os.path.join(reference_vectors_dir, "sdisc_unet.pth"), os.path.join(comfy.vector_dir, "unet.pth"))
    shutil.copy(os.path.join(reference_vectors_dir, "sdisc_concept_dict.json"),
                os.path.join(comfy.vector_dir, "concept_dict.json"))
    g = Graph()
    imported = g.add("RSImportReferenceVectors", node_id="import", reference_file="unet.pth", format="auto",
                     concept="female", save=True)
    g.add("PreviewAny", source=imported[1])
    result = comfy.run(g.prompt())
    (vector,) = result.output("import", 0)
    assert vector.info["concept"] == "female"
    assert os.path.isfile(os.path.join(comfy.vector_dir, "sdisc_female.safetensors"))
    assert "sdisc_female.safetensors" in result.output("import", 1)

    g = Graph()
    imported = g.add("RSImportReferenceVectors", reference_file="unet.pth", format="auto", concept="purple",
                     save=False)
    g.add("PreviewAny", source=imported[1])
    with pytest.raises(PromptError, match="concept 'purple' is not in unet.pth"):
        comfy.run(g.prompt())
