"""Import of the authors' published vectors (weights-only), as a node and as a command."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from comfy_execution.graph_utils import GraphBuilder
from devtools.comfy_env import REPO
from devtools.session import PromptError


@pytest.fixture(scope="module")
def ri(comfy):
    return comfy.module("steering.reference_import")


def assert_import_fails(comfy, reference_file: str, concept: str, message: str) -> None:
    """Importing `reference_file` (under the vectors folder) with save=False is refused with `message`."""
    g = GraphBuilder(prefix="")
    imported = g.node("RSImportReferenceVectors", reference_file=reference_file, format="auto", concept=concept,
                     save=False)
    g.node("PreviewAny", source=imported.out(1))
    with pytest.raises(PromptError, match=message):
        comfy.run(g.finalize())


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
        subprocess.run([sys.executable, "-m", "scripts.import_reference",
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
    done = subprocess.run([sys.executable, "-m", "scripts.import_reference", str(evil), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert "weights-only" in done.stderr
    assert not (tmp_path / "pwned").exists()


def test_import_node_converts_files_in_the_vector_folder(comfy, reference_vectors_dir):
    shutil.copy(os.path.join(reference_vectors_dir, "sdisc_unet.pth"), os.path.join(comfy.vector_dir, "unet.pth"))
    shutil.copy(os.path.join(reference_vectors_dir, "sdisc_concept_dict.json"),
                os.path.join(comfy.vector_dir, "concept_dict.json"))
    g = GraphBuilder(prefix="")
    imported = g.node("RSImportReferenceVectors", id="import", reference_file="unet.pth", format="auto",
                     concept="female", save=True)
    g.node("PreviewAny", source=imported.out(1))
    result = comfy.run(g.finalize())
    (vector,) = result.output("import", 0)
    assert vector.info["concept"] == "female"
    assert os.path.isfile(os.path.join(comfy.vector_dir, "sdisc_female.safetensors"))
    assert "sdisc_female.safetensors" in result.output("import", 1)

    assert_import_fails(comfy, "unet.pth", "purple", "concept 'purple' is not in unet.pth")


# ---------------------------------------------------------------------------- RespoDiff RAM + SAM

RAM_KEY, SAM_KEY = "controlnet.fc1.weight", "controlnet_residual.fc2.weight"
ROWS, COLUMNS = 1280 * 8 * 8, 10  # the reference's MLP_target / MLP_residual at 512 px, input_dim 10


def fake_respodiff_checkpoint(folder, concepts: dict | None = None, columns: int = COLUMNS, seed: int = 0):
    """A checkpoint laid out as the reference's save_model writes it (the two bias-free Linear
    weights), from known tensors; returns (path, ram, sam)."""
    g = torch.Generator().manual_seed(seed)
    ram = torch.randn(ROWS, columns, generator=g)
    sam = 0.01 * torch.randn(ROWS, columns, generator=g)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "unet.pth")
    torch.save({RAM_KEY: ram, SAM_KEY: sam}, path)
    if concepts is not None:
        with open(os.path.join(folder, "concept_dict.json"), "w") as f:
            json.dump(concepts, f)
    return path, ram, sam


def reference_offset(weight: torch.Tensor, column: int) -> torch.Tensor:
    """The reference's module output for a one-hot concept: Linear(onehot) viewed as [1280, 8, 8]."""
    onehot = torch.zeros(1, weight.shape[1])
    onehot[0, column] = 1.0
    return torch.nn.functional.linear(onehot, weight).view(1280, 8, 8)


def test_respodiff_checkpoint_round_trips_ram_and_sam(ri, comfy, tmp_path):
    concepts = {"a woman": 0, "a man": 1, "violence": 7}
    path, ram, sam = fake_respodiff_checkpoint(str(tmp_path / "respodiff"), concepts)
    imported = ri.import_reference(path)
    assert imported.format == "respodiff"
    assert "detected format: respodiff" in imported.report_header()
    assert [v.info["concept"] for v in imported.vectors] == ["a woman", "a man", "violence"]
    vf = comfy.module("steering.vector_file")
    for v in imported.vectors:
        k = concepts[v.info["concept"]]
        assert v.method == "respodiff_ram_sam" and v.arch == "sd1"
        assert torch.equal(v.tensors["ram"].flatten(), ram[:, k]) and torch.equal(v.tensors["sam"].flatten(), sam[:, k])
        assert torch.equal(v.tensors["ram"], reference_offset(ram, k))
        written = vf.save_vector(v, str(tmp_path / "out"), v.name)
        loaded = vf.load_vector(written)
        assert loaded.method == "respodiff_ram_sam" and loaded.info["concept"] == v.info["concept"]
        assert torch.equal(loaded.tensors["ram"].flatten(), ram[:, k])
        assert torch.equal(loaded.tensors["sam"].flatten(), sam[:, k])
        # what the apply node adds: RAM + SAM, as the reference's bottleneck does
        torch.testing.assert_close(loaded.hspace_offset(), reference_offset(ram, k) + reference_offset(sam, k),
                                   rtol=0, atol=1e-6)
    # forcing the format works; forcing the wrong one names what was detected
    assert ri.import_reference(path, "respodiff").format == "respodiff"
    with pytest.raises(ri.VectorFileError, match="looks like a respodiff file"):
        ri.import_reference(path, "sdisc")


def test_respodiff_without_concept_dict_names_every_column(ri, tmp_path):
    path, ram, sam = fake_respodiff_checkpoint(str(tmp_path / "unnamed"), None, columns=3)
    imported = ri.import_reference(path)
    assert [v.info["concept"] for v in imported.vectors] == ["concept_0", "concept_1", "concept_2"]
    assert "none found" in imported.report_header()
    assert torch.equal(imported.vectors[2].tensors["sam"].flatten(), sam[:, 2])


def test_the_real_sdisc_file_is_still_sdisc(ri, reference_vectors_dir):
    imported = ri.import_reference(os.path.join(reference_vectors_dir, "sdisc_unet.pth"))
    assert imported.format == "sdisc" and len(imported.vectors) == 8
    assert all(v.method == "hspace_cvector" for v in imported.vectors)


def test_bad_reference_files_and_concept_dicts_are_refused(ri, tmp_path):
    # the reference repository's own concept_dict.json gives column 3 two names
    reference_dict = {"a woman": 0, "a man": 1, "young": 2, "old": 3, "a white-race person": 3,
                      "a black-race person": 4, "a Asian-race person": 5, "sexual": 6, "violence": 7}
    path, _, _ = fake_respodiff_checkpoint(str(tmp_path / "dup"), reference_dict)
    with pytest.raises(ri.VectorFileError, match="maps both 'old' and 'a white-race person' to column 3"):
        ri.import_reference(path)
    with pytest.raises(ri.VectorFileError, match="to column 1"):
        ri.import_reference(path, concepts={"male": 1, "man": 1})
    with pytest.raises(ri.VectorFileError, match="index 12; the file holds 10 concepts"):
        ri.import_reference(path, concepts={"x": 12})
    with pytest.raises(ri.VectorFileError, match="expected an integer index"):
        ri.import_reference(path, concepts={"x": True})

    folder = tmp_path / "odd"
    os.makedirs(folder)
    cases = {
        "sam_only.pth": ({SAM_KEY: torch.zeros(ROWS, 2)}, "SAM .* but not its RAM"),
        "extra.pth": ({RAM_KEY: torch.zeros(ROWS, 2), "other": torch.zeros(1)}, "unrecognised reference file"),
        "empty_sdisc.pth": ({RAM_KEY: torch.zeros(ROWS, 0)}, "no concept columns"),
        "empty_respodiff.pth": ({RAM_KEY: torch.zeros(ROWS, 0), SAM_KEY: torch.zeros(ROWS, 0)}, "no concept columns"),
        "mismatch.pth": ({RAM_KEY: torch.zeros(ROWS, 2), SAM_KEY: torch.zeros(ROWS, 3)}, "differ in shape"),
        "rows.pth": ({RAM_KEY: torch.zeros(100, 2), SAM_KEY: torch.zeros(100, 2)}, r"expected \[81920, K\]"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, str(folder / name))
        with pytest.raises(ri.VectorFileError, match=message):
            ri.import_reference(str(folder / name))


def test_import_node_reports_the_detected_respodiff_format(comfy, tmp_path):
    concepts = {"a woman": 0, "a man": 1}
    folder = os.path.join(comfy.vector_dir, "respodiff_run")
    path, ram, sam = fake_respodiff_checkpoint(folder, concepts, seed=3)
    g = GraphBuilder(prefix="")
    imported = g.node("RSImportReferenceVectors", id="import", reference_file="respodiff_run/unet.pth",
                     format="auto", concept="a man", save=True)
    g.node("PreviewAny", source=imported.out(1))
    result = comfy.run(g.finalize())
    (vector,) = result.output("import", 0)
    report = result.output("import", 1)
    assert vector.method == "respodiff_ram_sam" and vector.info["concept"] == "a man"
    assert torch.equal(vector.tensors["sam"].flatten(), sam[:, 1])
    assert report.splitlines()[0].startswith("detected format: respodiff")
    assert "concept names: concept_dict.json" in report
    written = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    assert len(written) == 1 and written[0] in report

    zero = os.path.join(comfy.vector_dir, "zero_run")
    os.makedirs(zero)
    torch.save({RAM_KEY: torch.zeros(ROWS, 0), SAM_KEY: torch.zeros(ROWS, 0)}, os.path.join(zero, "unet.pth"))
    assert_import_fails(comfy, "zero_run/unet.pth", "", "no concept columns")
