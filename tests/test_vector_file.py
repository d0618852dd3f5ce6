"""The vector file format: round trips, atomic and confined saving, combining, and a
corpus of malformed files that must each raise the clear error and nothing else."""
from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from devtools import pure

vf = pure.fixture("steering.vector_file")        # the file format needs no ComfyUI


def make_vector(vf, method="hspace_cvector", arch="sd1", seed=0, spatial=(8, 8), **info):
    g = torch.Generator().manual_seed(seed)
    if method == "hspace_cvector":
        tensors = {"c": torch.randn(1280, *spatial, generator=g)}
    elif method == "respodiff_ram_sam":
        tensors = {"ram": torch.randn(1280, *spatial, generator=g), "sam": torch.randn(1280, *spatial, generator=g)}
    else:
        width = {"sd1": 768, "sdxl": 2048, "sd2": 1024}[arch]
        tensors = {"direction_b": torch.randn(77, 1, generator=g), "direction_a": torch.randn(1, width, generator=g)}
    return vf.SteeringVector(method, arch, tensors, {"name": f"v{seed}", **info})


def test_round_trip_keeps_tensors_and_description(vf, tmp_path):
    vector = make_vector(vf, "respodiff_ram_sam", concept="woman", neutral_prompt="a person",
                         target_prompt="a woman", training={"lr": 0.1, "iterations": 2000})
    path = vf.save_vector(vector, str(tmp_path), "fair woman")
    assert os.path.basename(path) == "fair woman.safetensors"
    loaded = vf.load_vector(path)
    assert loaded.method == "respodiff_ram_sam" and loaded.arch == "sd1"
    for role in ("ram", "sam"):
        assert torch.equal(loaded.tensors[role], vector.tensors[role])
    assert loaded.info["concept"] == "woman"
    assert loaded.info["training"] == {"lr": 0.1, "iterations": 2000}
    assert torch.equal(loaded.hspace_offset(), vector.tensors["ram"] + vector.tensors["sam"])
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "responsible-steering.vector" and meta["format_version"] == "1"
    assert json.loads(meta["tensors"]) == {"ram": {"shape": [1280, 8, 8], "dtype": "F32"},
                                           "sam": {"shape": [1280, 8, 8], "dtype": "F32"}}
    assert meta["created_by"].startswith("responsible-steering ")


def test_low_rank_direction_is_multiplied_out(vf, tmp_path):
    vector = make_vector(vf, "embedding_direction", "sdxl")
    loaded = vf.load_vector(vf.save_vector(vector, str(tmp_path), "d"))
    d = loaded.embedding_direction()
    assert d.shape == (77, 2048)
    assert torch.allclose(d, vector.tensors["direction_b"] @ vector.tensors["direction_a"])


def test_save_is_confined_and_never_overwrites_by_default(vf, tmp_path):
    vector = make_vector(vf)
    inside = tmp_path / "vectors"
    first = vf.save_vector(vector, str(inside), "../../etc/evil")
    assert os.path.dirname(first) == str(inside) and os.path.basename(first) == "evil.safetensors"
    second = vf.save_vector(vector, str(inside), "evil.safetensors")
    assert os.path.basename(second) == "evil_00001.safetensors"
    third = vf.save_vector(vector, str(inside), "evil", overwrite=True)
    assert third == first
    assert sorted(os.listdir(inside)) == ["evil.safetensors", "evil_00001.safetensors"]
    with pytest.raises(vf.VectorFileError, match="nothing usable"):
        vf.save_vector(vector, str(inside), "/../..")


def test_failed_write_leaves_nothing(vf, tmp_path, monkeypatch):
    import safetensors.torch

    def broken_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        vf.save_vector(make_vector(vf), str(tmp_path), "x")
    assert os.listdir(tmp_path) == []


def test_combine_is_exact_and_low_rank(vf):
    a, b = make_vector(vf, "embedding_direction", seed=1), make_vector(vf, "embedding_direction", seed=2)
    combined = vf.combine_vectors([(a, 0.5), (b, -2.0)])
    assert combined.tensors["direction_b"].shape == (77, 2)
    expected = 0.5 * a.embedding_direction() - 2.0 * b.embedding_direction()
    assert torch.allclose(combined.embedding_direction(), expected, atol=1e-5)


def test_combine_hspace_resizes_to_largest(vf):
    small, large = make_vector(vf, seed=1, spatial=(8, 8)), make_vector(vf, seed=2, spatial=(16, 16))
    combined = vf.combine_vectors([(small, 1.0), (large, 1.0)])
    assert combined.tensors["c"].shape == (1280, 16, 16)
    up = torch.nn.functional.interpolate(small.tensors["c"][None], size=(16, 16), mode="bilinear",
                                         align_corners=False)[0]
    assert torch.allclose(combined.tensors["c"], up + large.tensors["c"], atol=1e-5)


def test_combine_refuses_mixed_methods_and_architectures(vf):
    with pytest.raises(vf.VectorFileError, match="must share method and architecture"):
        vf.combine_vectors([(make_vector(vf), 1.0), (make_vector(vf, "respodiff_ram_sam"), 1.0)])
    with pytest.raises(vf.VectorFileError, match="must share method and architecture"):
        vf.combine_vectors([(make_vector(vf, "embedding_direction", "sd1"), 1.0),
                            (make_vector(vf, "embedding_direction", "sdxl"), 1.0)])


def test_vector_set_takes_compatible_vectors_only(vf):
    """A set for fair sampling: one or more vectors of one method and architecture, in the order given."""
    male, female = make_vector(vf, seed=1, name="male"), make_vector(vf, seed=2, name="female")
    assert [v.name for v in vf.vector_set([male, female])] == ["male", "female"]
    with pytest.raises(vf.VectorFileError, match="at least one vector"):
        vf.vector_set([])
    with pytest.raises(vf.VectorFileError, match="must share method and architecture"):
        vf.vector_set([male, make_vector(vf, "respodiff_ram_sam")])


def test_in_memory_validation(vf):
    with pytest.raises(vf.VectorFileError, match="unknown method 'lora'"):
        vf.SteeringVector("lora", "sd1", {"c": torch.zeros(1280, 8, 8)})
    with pytest.raises(vf.VectorFileError, match=r"expected \[1280, H, W\] for sdxl"):
        vf.SteeringVector("hspace_cvector", "sdxl", {"c": torch.zeros(320, 8, 8)})
    with pytest.raises(vf.VectorFileError, match="unknown architecture"):
        vf.SteeringVector("hspace_cvector", "sd9", {"c": torch.zeros(1280, 8, 8)})
    with pytest.raises(vf.VectorFileError, match=r"stores tensors .* got \['c', 'sam'\]"):
        vf.SteeringVector("hspace_cvector", "sd1", {"c": torch.zeros(1280, 8, 8), "sam": torch.zeros(1280, 8, 8)})


# ----------------------------------------------------------------------------- malformed corpus

def _valid_metadata(method="hspace_cvector", arch="sd1", tensors=None):
    tensors = tensors or {"c": {"shape": [1280, 8, 8], "dtype": "F32"}}
    return {"format": "responsible-steering.vector", "format_version": "1", "method": method, "arch": arch,
            "tensors": json.dumps(tensors), "created_by": "test"}


def _write_raw(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def _corpus(tmp_path, vf):
    good = vf.save_vector(make_vector(vf), str(tmp_path), "good")
    data = open(good, "rb").read()
    c = torch.randn(1280, 8, 8)
    cases = {}

    p = tmp_path / "truncated.safetensors"
    p.write_bytes(data[: len(data) // 2])
    cases["truncated"] = (str(p), "truncated")

    p = tmp_path / "tiny.safetensors"
    p.write_bytes(data[:5])
    cases["shorter than a header"] = (str(p), "truncated")

    p = tmp_path / "header-cut.safetensors"
    p.write_bytes(data[:40])
    cases["header cut"] = (str(p), "truncated or not safetensors")

    cases["wrong dtype"] = (_write_raw(tmp_path / "int.safetensors", {"c": c.to(torch.int32)},
                                       _valid_metadata(tensors={"c": {"shape": [1280, 8, 8], "dtype": "I32"}})),
                            "dtype I32")
    cases["float64"] = (_write_raw(tmp_path / "f64.safetensors", {"c": c.double()}, _valid_metadata()),
                        "dtype F64")
    nan = c.clone()
    nan[0, 0, 0] = float("nan")
    cases["NaN"] = (_write_raw(tmp_path / "nan.safetensors", {"c": nan}, _valid_metadata()), "NaN/Inf")
    inf = c.clone()
    inf[3, 1, 2] = float("inf")
    cases["Inf"] = (_write_raw(tmp_path / "inf.safetensors", {"c": inf.half()}, _valid_metadata(
        tensors={"c": {"shape": [1280, 8, 8], "dtype": "F16"}})), "NaN/Inf")
    cases["wrong shape"] = (_write_raw(tmp_path / "shape.safetensors", {"c": torch.randn(640, 8, 8)},
                                       _valid_metadata(tensors={"c": {"shape": [640, 8, 8], "dtype": "F32"}})),
                            r"shape \[640, 8, 8\]; expected \[1280, H, W\]")
    cases["embedding for wrong arch"] = (_write_raw(
        tmp_path / "arch.safetensors", {"direction": torch.randn(77, 768)},
        _valid_metadata("embedding_direction", "sdxl", {"direction": {"shape": [77, 768], "dtype": "F32"}})),
        r"expected \[77, 2048\] for sdxl")
    cases["unknown method"] = (_write_raw(tmp_path / "method.safetensors", {"c": c},
                                          _valid_metadata(method="mystery")), "unknown method 'mystery'")
    cases["unknown arch"] = (_write_raw(tmp_path / "unknown-arch.safetensors", {"c": c},
                                        _valid_metadata(arch="sd7")), "unknown architecture 'sd7'")
    cases["not a vector"] = (_write_raw(tmp_path / "checkpoint.safetensors", {"w": c}, {"foo": "bar"}),
                             "not a steering vector")
    cases["metadata lies"] = (_write_raw(tmp_path / "lie.safetensors", {"c": c}, _valid_metadata(
        tensors={"c": {"shape": [1280, 4, 4], "dtype": "F32"}})), "metadata says")
    cases["future version"] = (_write_raw(tmp_path / "v99.safetensors", {"c": c},
                                          {**_valid_metadata(), "format_version": "99"}), "not supported")

    torch.save({"c": c}, str(tmp_path / "zip.safetensors"))
    cases["torch.save zip disguised"] = (str(tmp_path / "zip.safetensors"), "zip archive")

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/rs-pwned",))

    p = tmp_path / "pickle.safetensors"
    p.write_bytes(pickle.dumps({"c": Exploit()}, protocol=4))
    cases["pickle disguised"] = (str(p), "Python pickle")

    p = tmp_path / "garbage-header.safetensors"
    header = b"{not json" + b" " * 7
    p.write_bytes(struct.pack("<Q", len(header)) + header)
    cases["header not JSON"] = (str(p), "header is not JSON")

    p = tmp_path / "offsets.safetensors"
    header = json.dumps({"__metadata__": _valid_metadata(),
                         "c": {"dtype": "F32", "shape": [1280, 8, 8], "data_offsets": [0, 327680]}}).encode()
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 100)
    cases["data missing"] = (str(p), "outside the file")

    cases["missing file"] = (str(tmp_path / "absent.safetensors"), "cannot read vector file")
    return cases


def test_malformed_corpus_raises_clear_errors_only(vf, tmp_path):
    cases = _corpus(tmp_path, vf)
    assert len(cases) >= 18
    for label, (path, message) in cases.items():
        with pytest.raises(vf.VectorFileError) as info:
            vf.load_vector(path)
        assert type(info.value) is vf.VectorFileError, label
        assert __import__("re").search(message, str(info.value)), f"{label}: {info.value}"
    assert not os.path.exists("/tmp/rs-pwned")


def test_vector_file_rejects_checkpoint_sized_files(vf, tmp_path):
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.truncate(65 * 1024 * 1024)
    with pytest.raises(vf.VectorFileError, match="is this a model checkpoint"):
        vf.load_vector(str(path))
