"""`make demo`: a real ComfyUI server with this pack in custom_nodes runs every example
workflow on the tiny generated checkpoint, through POST /prompt. `make serve` keeps the
UI up on 127.0.0.1:8188 with the example workflows in its workflow browser.

    .venv/bin/python -m devtools.demo [--serve] [--port N]

No model weights exist here, so the checkpoint is generated (random weights) and the
images are noise-like: the demo shows the graphs run, not what they look like on SD1.5.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from devtools import comfy_env, workflows
from devtools.server import ComfyServer

DEMO_BASE = os.path.join(comfy_env.REPO, "out", "demo")


def prepare(base: str) -> None:
    os.makedirs(base, exist_ok=True)
    workflows_dir = os.path.join(base, "user", "default", "workflows")
    os.makedirs(workflows_dir, exist_ok=True)
    for path in workflows.workflow_paths():
        shutil.copy(path, workflows_dir)


def run_all(server: ComfyServer) -> int:
    info = server.object_info()
    vector_dir = server.dirs["models/steering_vectors"]
    failures = 0
    for path in workflows.workflow_paths():
        name = os.path.basename(path)
        api = workflows.ui_to_api(workflows.load_workflow(path), lambda t: info[t]["input"])
        prompt = workflows.tiny_profile(api, server.dirs["checkpoint_name"])
        try:
            workflows.provide_reference_vectors(workflows.vector_files_needed(prompt), vector_dir)
            workflows.provide_safety_models(prompt, os.path.dirname(vector_dir))
        except FileNotFoundError as e:
            print(f"[skip] {name}: {e}")
            continue
        started = time.time()
        try:
            entry = server.run_prompt(prompt)
        except Exception as e:  # report every workflow, then fail
            print(f"[FAIL] {name}: {e}")
            failures += 1
            continue
        images = [os.path.join(server.base_dir, "output", i["subfolder"], i["filename"])
                  for out in entry["outputs"].values() for i in out.get("images", []) if i.get("type") == "output"]
        print(f"[ok] {name} ({time.time() - started:.1f}s): {len(images)} image(s)")
        for image in images:
            print(f"     {image}")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="keep the UI up on 127.0.0.1:8188")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    prepare(DEMO_BASE)
    port = args.port or (8188 if args.serve else None)
    server = ComfyServer(DEMO_BASE, port=port, log_path=os.path.join(comfy_env.REPO, "out", "demo-server.log"))
    print(f"starting ComfyUI with responsible-steering on {server.url} (log: {server.log_path})")
    with server:
        failures = run_all(server)
        if args.serve:
            print(f"\nComfyUI is up at {server.url} (Ctrl-C to stop). The example workflows are in the "
                  "Workflows sidebar; the tiny checkpoint is selected by the demo profile only.")
            try:
                while server.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    print(f"\noutputs in {os.path.join(DEMO_BASE, 'output')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
