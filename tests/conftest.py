"""Fixtures shared by all tests: a real ComfyUI session with the pack loaded (see devtools/)."""
from __future__ import annotations

import os

import pytest

from devtools import comfy_env

comfy_env.setup()  # before any test module imports ComfyUI's modules

from devtools.sd import load_tiny_objects  # noqa: E402
from devtools.session import ComfySession  # noqa: E402
from devtools.workflows import REFERENCE_DIR  # noqa: E402


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
    """The authors' published vectors beside the repository (tests using them skip when absent)."""
    if not os.path.isdir(REFERENCE_DIR):
        pytest.skip(f"reference vectors not available at {REFERENCE_DIR}")
    return REFERENCE_DIR
