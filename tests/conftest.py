"""Fixtures shared by all tests: a real ComfyUI session with the pack loaded."""
from __future__ import annotations

import os

import pytest

from rs_harness import ComfySession, ensure_comfy_importable
from sd_helpers import load_tiny_objects

ensure_comfy_importable()

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
REFERENCE_VECTORS = os.path.normpath(os.path.join(SHARED, "fixtures", "reference-vectors"))


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> ComfySession:
    """ComfyUI in this process, with the tiny SD1 checkpoint and the pack loaded."""
    return ComfySession(str(tmp_path_factory.mktemp("comfy-base")))


@pytest.fixture(scope="module")
def vf(comfy):
    """The pack's steering.vector_file, as ComfyUI loaded it."""
    return comfy.module("steering.vector_file")


@pytest.fixture(scope="module")
def tiny(comfy):
    """(model, clip, vae) of the tiny checkpoint, loaded by a real prompt (inference tensors)."""
    return load_tiny_objects(comfy)


@pytest.fixture(scope="session")
def reference_vectors_dir() -> str:
    """The authors' published vectors in ../shared (tests using them skip when it is absent)."""
    if not os.path.isdir(REFERENCE_VECTORS):
        pytest.skip(f"reference vectors not available at {REFERENCE_VECTORS}")
    return REFERENCE_VECTORS
