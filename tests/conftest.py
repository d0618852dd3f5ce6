"""Fixtures shared by all tests: a real ComfyUI session with the pack loaded (see devtools/)."""
from __future__ import annotations

import os

import pytest

from devtools import comfy_env

comfy_env.setup()  # before any test module imports ComfyUI's modules

from devtools.browser import FRONTENDS, app_page  # noqa: E402
from devtools.server import ComfyServer  # noqa: E402

from devtools.sd import load_tiny_objects  # noqa: E402
from devtools.session import ComfySession  # noqa: E402
from devtools.workflows import REFERENCE_DIR  # noqa: E402


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> ComfySession:
    """ComfyUI in this process, with the tiny SD1 checkpoint and the pack loaded."""
    return ComfySession(str(tmp_path_factory.mktemp("comfy-base")))


def pytest_collection_modifyitems(config, items):
    """Mark `fast` every test that needs neither ComfyUI in this process (the `comfy` fixture, directly or through
    another fixture) nor a server or a browser (`slow`): ``make test-fast`` runs those."""
    for item in items:
        if "comfy" not in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)


def pack_module(dotted_name: str):
    """A module-scoped fixture returning the pack's module `dotted_name` (e.g. "steering.stg") as
    ComfyUI loaded it; the fixture's name is the name it is assigned to here."""
    @pytest.fixture(scope="module")
    def module(comfy):
        return comfy.module(dotted_name)

    module.__doc__ = f"The pack's {dotted_name}, as ComfyUI loaded it."
    return module


vf = pack_module("steering.vector_file")
ed = pack_module("steering.embedding_direction")
stg = pack_module("steering.stg")
guidance = pack_module("steering.guidance")
guiders = pack_module("steering.guiders")
decoders = pack_module("steering.decoders")
safety = pack_module("steering.safety")
nudenet = pack_module("steering.safety.nudenet")
clip_scores = pack_module("steering.safety.clip_scores")
dl = pack_module("steering.dual_latent")
detector_module = pack_module("steering.input_detector")
paths = pack_module("nodes.paths")


@pytest.fixture
def one_thread():
    """One torch thread for the test (put back after): several times faster than two on a shared 2-core
    machine, and deterministic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="module", params=sorted(FRONTENDS))
def frontend(request, tmp_path_factory):
    """(page, server, errors): a real server with the pack and its UI open in headless Chromium, once per
    frontend (the pinned one and the newest)."""
    import importlib.metadata

    pytest.importorskip("playwright.sync_api")
    root = FRONTENDS[request.param]
    assert root is None or os.path.isfile(os.path.join(root, "index.html")), \
        f"the newest frontend is not at {root}; run `make setup`"
    with ComfyServer(str(tmp_path_factory.mktemp("frontend-server")), front_end_root=root) as server, \
            app_page(server.url) as (page, errors):
        page.wait_for_function("() => window.app.extensions.length > 0", timeout=60_000)
        page.keyboard.press("Escape")
        served = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
        expected = (importlib.metadata.version("comfyui-frontend-package") if root is None
                    else os.path.basename(os.path.realpath(root)))
        assert served == expected, f"{request.param} frontend: served {served}, expected {expected}"
        yield page, server, errors


@pytest.fixture(scope="module")
def plain_unet(tiny):
    """A second copy of the tiny UNet loaded OUTSIDE inference mode (normal autograd)."""
    import comfy.sd
    import torch
    from devtools import session as rs_session

    assert not torch.is_inference_mode_enabled()
    model = comfy.sd.load_checkpoint_guess_config(rs_session.tiny_checkpoint_path(), output_vae=False,
                                                  output_clip=False)[0]
    return model.model.diffusion_model.requires_grad_(False)
