"""The maths, file formats and the policy's graph functions import without ComfyUI: only steering/comfy_compat.py
(inside its functions) and the node glue reach ComfyUI, so these modules can be read, used and tested on their own.
Checked in a fresh interpreter whose path has the repository but not ComfyUI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from devtools import comfy_env

PURE = [
    "steering.architectures", "steering.comfy_compat", "steering.comparison", "steering.decoders",
    "steering.dual_latent", "steering.embedding_direction", "steering.evaluation_metrics", "steering.fair",
    "steering.files", "steering.guidance", "steering.hspace", "steering.input_detector", "steering.label_metrics",
    "steering.reference_import", "steering.safety", "steering.safety.censor", "steering.safety.clip_scores",
    "steering.safety.nudenet", "steering.safety.registry", "steering.schedule", "steering.vector_file",
    "steering.window", "steering.stg", "steering.precision", "steering.checkpointing", "steering.gradient_memory",
    "steering.autograd_views", "steering.codsma", "steering.respodiff", "training.objectives", "training.loop", "training.rollout", "training.unet",
    "operator_policy.document", "operator_policy.graph", "operator_policy.provenance", "operator_policy.scoring",
    "operator_policy.words", "operator_policy.enforcement", "toyworld.world", "toyworld.judges", "toyworld.model",
]
COMFY_MODULES = ("comfy", "comfy_api", "comfy_execution", "nodes", "server", "execution", "folder_paths")

PROBE = """
import json, sys
from devtools import pure
found = {}
for name in sys.argv[1:]:
    try:
        pure.module(name)
        found[name] = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
    except Exception as e:
        found[name] = f"{type(e).__name__}: {e}"
print(json.dumps(found))
""" % (COMFY_MODULES,)


def test_the_pure_modules_import_without_comfyui():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", PROBE, *PURE], cwd=comfy_env.REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    problems = {name: result for name, result in found.items() if result != []}
    assert not problems, f"modules that import ComfyUI (or fail without it): {problems}"
