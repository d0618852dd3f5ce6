"""Every example workflow runs as opened, from the UI: the demo's server (what `make serve` starts, with the
models the workflows name in place) in headless Chromium on the pinned frontend; each workflow is loaded
as a user opens it and queued by clicking the Run button; the prompt must finish without error and save
its images. No widget is edited."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from devtools import build_workflows, demo, workflows
from devtools.node_sizes import CHROMIUM, open_frontend
from devtools.server import ComfyServer

EXAMPLES = workflows.template_paths()
# the SD1.5 templates (the quick settings of the real-model workflows, on the tiny checkpoint)
SD15_TEMPLATES = {template for _, template, real in build_workflows.copies() if template and real}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs it via apt as root)"),
]


@pytest.fixture(scope="module")
def ui(comfy):
    """(page, server, its /object_info): the demo's server (demo.prepare: what `make serve` puts in place) with
    every model the example workflows name, and the pinned frontend. The pack is loaded in this process first (the
    `comfy` session): reference vectors are converted with it, outside playwright's event loop."""
    pytest.importorskip("playwright.sync_api")
    with open_frontend(None, prepare=demo.prepare) as (page, server, _):
        info = server.object_info()
        demo.provide_models(server, info)
        yield page, server, info


def history_ids(server: ComfyServer) -> set[str]:
    return set(server.get("/history"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_workflow_runs_as_opened_by_clicking_run(ui, path):
    page, server, info = ui
    before = history_ids(server)
    page.evaluate("async (w) => { await app.loadGraphData(w); }", workflows.load_workflow(path))
    page.locator('[data-testid="queue-button"]').first.click()
    deadline = time.time() + 300
    new: set[str] = set()
    while time.time() < deadline and not new:
        time.sleep(0.5)
        new = history_ids(server) - before
        if not new:
            continue
        entry = server.get(f"/history/{next(iter(new))}")[next(iter(new))]
        if not entry.get("status", {}).get("completed") and entry.get("status", {}).get("status_str") != "error":
            new = set()
    assert new, f"{os.path.basename(path)}: no prompt finished within 300 s of clicking Run"
    prompt_id = next(iter(new))
    entry = server.get(f"/history/{prompt_id}")[prompt_id]
    status = entry["status"]
    assert status["status_str"] == "success", status.get("messages")
    files = demo.saved_images(server, entry)
    assert files, f"{os.path.basename(path)} saved no image"
    for f in files:
        assert os.path.getsize(f) > 0
    if path in SD15_TEMPLATES:   # one image per latent of the batch, at the quick size, not flat
        prompt = workflows.ui_to_api(workflows.load_workflow(path), lambda t: info[t]["input"])
        batch = max(n["inputs"].get("batch_size", 1) for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
        assert len(files) == batch
        for f in files:
            pixels = np.asarray(Image.open(f))
            assert pixels.shape == (workflows.QUICK_SIZE, workflows.QUICK_SIZE, 3)
            assert pixels.std() > 1.0, f"{f} is a flat image"
