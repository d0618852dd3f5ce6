"""`make demo`: a real ComfyUI server with this pack in custom_nodes runs every example
workflow on the tiny generated checkpoint, through POST /prompt. `make serve` keeps the
UI up on 127.0.0.1:8188 with the example workflows in its workflow browser.

No model weights exist here, so the checkpoint is generated (random weights) and the
images are noise-like: the demo shows the graphs run, not what they look like on SD1.5.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from rs_harness import ComfyServer, load_workflow, ui_to_api  # noqa: E402
import workflow_runner  # noqa: E402

DEMO_BASE = os.path.join(REPO, "out", "demo")


def prepare(base: str) -> None:
    os.makedirs(base, exist_ok=True)
    workflows_dir = os.path.join(base, "user", "default", "workflows")
    os.makedirs(workflows_dir, exist_ok=True)
    for path in workflow_runner.workflow_paths():
        shutil.copy(path, workflows_dir)


def run_all(server: ComfyServer) -> int:
    info = server.object_info()
    vector_dir = server.dirs["models/steering_vectors"]
    failures = 0
    for path in workflow_runner.workflow_paths():
        name = os.path.basename(path)
        prompt = workflow_runner.tiny_profile(ui_to_api(load_workflow(path), lambda t: info[t]["input"]),
                                              server.dirs["checkpoint_name"])
        try:
            workflow_runner.provide_reference_vectors(workflow_runner.vector_files_needed(prompt), vector_dir)
            workflow_runner.provide_safety_models(prompt, os.path.dirname(vector_dir))
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
    server = ComfyServer(DEMO_BASE, port=port, log_path=os.path.join(REPO, "out", "demo-server.log"))
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
