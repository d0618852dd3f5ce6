"""`make demo`: a real ComfyUI server with this pack in custom_nodes runs the example workflows
through POST /prompt, as a user's browser would.

1. The ToyWorld workflows (the pack's demo model, which knows its concepts): each saves a labelled
   before/after grid; the demo writes them all into one overview image, titled, and prints the paths.
2. The SD-format workflows, on a tiny generated SD1 checkpoint with random weights (no model weights
   exist here, so their images are noise): a smoke test that the real graphs run.

`make serve` keeps the UI up on 127.0.0.1:8188 with everything the example workflows name in place
(the tiny checkpoint under the name the SD workflows load, the vector files, a tiny safety CLIP), so
every example workflow runs as opened.

    .venv/bin/python -m devtools.demo [--serve] [--port N] [--thumbnails] [--overview PATH]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from devtools import comfy_env, workflows
from devtools.server import ComfyServer
from devtools.workflow_builder import SD15_CHECKPOINT

DEMO_BASE = os.path.join(comfy_env.REPO, "out", "demo")
OVERVIEW = os.path.join(DEMO_BASE, "overview.png")
README_OVERVIEW = os.path.join(comfy_env.REPO, "js", "docs", "images", "toyworld_overview.png")
THUMBNAIL_SIZE = 384


def is_toyworld(path: str) -> bool:
    return (workflows.spec_name(workflows.load_workflow(path)) or "").startswith("toyworld_")


def prepare(server: ComfyServer) -> None:
    """Put in place what the example workflows name, before the server starts: the tiny SD1
    checkpoint under the SD workflows' checkpoint name, the user's workflow copies, and (once the
    pack is loaded) vector files and safety CLIP models."""
    checkpoints = server.dirs["models/checkpoints"]
    target = os.path.join(checkpoints, SD15_CHECKPOINT)
    if not os.path.lexists(target):
        os.symlink(os.path.realpath(os.path.join(checkpoints, server.dirs["checkpoint_name"])), target)
    user_workflows = os.path.join(server.base_dir, "user", "default", "workflows")
    os.makedirs(user_workflows, exist_ok=True)
    for path in workflows.template_paths():
        shutil.copy(path, user_workflows)


def provide_models(server: ComfyServer, info: dict) -> None:
    """Vector files and safety models every SD example workflow loads (converted from the authors'
    reference vectors beside the repository, when they are there)."""
    vector_dir = server.dirs["models/steering_vectors"]
    for path in workflows.template_paths():
        prompt = workflows.ui_to_api(workflows.load_workflow(path), lambda t: info[t]["input"])
        try:
            workflows.provide_reference_vectors(workflows.vector_files_needed(prompt), vector_dir)
        except FileNotFoundError as e:
            print(f"[note] {os.path.basename(path)} will not run: {e}")
        workflows.provide_safety_models(prompt, os.path.dirname(vector_dir), register=False)


def saved_images(server: ComfyServer, entry: dict) -> list[str]:
    return [os.path.join(server.base_dir, "output", i["subfolder"], i["filename"])
            for out in entry["outputs"].values() for i in out.get("images", []) if i.get("type") == "output"]


def run(server: ComfyServer, paths: list[str], info: dict) -> tuple[dict[str, list[str]], int]:
    """Run each workflow as it is (API form of the UI file); (images per workflow path, failures)."""
    results, failures = {}, 0
    for path in paths:
        name = os.path.basename(path)
        prompt = workflows.ui_to_api(workflows.load_workflow(path), lambda t: info[t]["input"])
        started = time.time()
        try:
            entry = server.run_prompt(prompt)
        except Exception as e:  # report every workflow, then fail
            print(f"[FAIL] {name}: {e}")
            failures += 1
            continue
        results[path] = saved_images(server, entry)
        print(f"[ok] {name} ({time.time() - started:.1f}s): {len(results[path])} image(s)")
        for image in results[path]:
            print(f"     {image}")
    return results, failures


def overview(grids: list[str], path: str) -> str:
    """One image: a heading, then every ToyWorld workflow's before/after grid, in workflow order."""
    from PIL import Image, ImageDraw, ImageFont

    images = [Image.open(g).convert("RGB") for g in grids]
    heading = 40
    width = max(i.width for i in images)
    canvas = Image.new("RGB", (width, heading + sum(i.height + 8 for i in images)), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=20)
    except TypeError:
        font = ImageFont.load_default()
    draw.text((8, 8), "Each method on ToyWorld (h-space: ToyWorld-SD), same seeds without (top) and with it",
              fill=(235, 235, 235), font=font)
    y = heading
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height + 8
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.save(path)
    return path


def write_thumbnails(results: dict[str, list[str]]) -> None:
    """example_workflows/<template name>.jpg (what the template browser requests): the first image each
    template saved, fitted into a THUMBNAIL_SIZE square (small images enlarged with sharp pixels)."""
    from PIL import Image

    for path, images in results.items():
        if not images:
            continue
        image = Image.open(images[0]).convert("RGB")
        scale = THUMBNAIL_SIZE / max(image.size)
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
        square = Image.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), (24, 24, 28))
        square.paste(image, ((THUMBNAIL_SIZE - image.width) // 2, (THUMBNAIL_SIZE - image.height) // 2))
        target = os.path.splitext(path)[0] + ".jpg"
        square.save(target, quality=90)
        print(f"thumbnail {target}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="keep the UI up on 127.0.0.1:8188")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--thumbnails", action="store_true",
                        help="write each example workflow's thumbnail from its first saved image")
    parser.add_argument("--overview", default=None,
                        help=f"also copy the overview image here (the README's: {README_OVERVIEW})")
    args = parser.parse_args(argv)
    port = args.port or (8188 if args.serve else None)
    server = ComfyServer(DEMO_BASE, port=port, log_path=os.path.join(comfy_env.REPO, "out", "demo-server.log"))
    prepare(server)
    print(f"starting ComfyUI with responsible-steering on {server.url} (log: {server.log_path})")
    with server:
        info = server.object_info()
        provide_models(server, info)
        paths = workflows.template_paths()
        toy_paths = [p for p in paths if is_toyworld(p)]
        print("\nToyWorld, the pack's demo model: every method before / after")
        toy, toy_failures = run(server, toy_paths, info)
        grids = [images[0] for images in toy.values() if images]
        if grids:
            print(f"\noverview: {overview(grids, OVERVIEW)}")
            if args.overview:
                shutil.copy(OVERVIEW, args.overview)
                print(f"copied to {args.overview}")
        print("\nSD-format workflows on the tiny random checkpoint (smoke test: the images are noise)")
        sd, sd_failures = run(server, [p for p in paths if p not in toy_paths], info)
        if args.thumbnails:
            write_thumbnails({**toy, **sd})
        if args.serve:
            print(f"\nComfyUI is up at {server.url} (Ctrl-C to stop). The example workflows are in the "
                  "Workflows sidebar and the templates; each runs as opened.")
            try:
                while server.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    print(f"\noutputs in {os.path.join(DEMO_BASE, 'output')}")
    return 1 if toy_failures or sd_failures else 0


if __name__ == "__main__":
    sys.exit(main())
