"""Paper step k of N <-> start_percent (steering/schedule.py), and the apply nodes' defaults:
counted through real 50-step sampling runs on the `normal` scheduler, the defaults steer
exactly the reference's steps (embedding direction: 15..50 for safety, 10..50 for fairness;
h-space: every step)."""
from __future__ import annotations

import pytest
import torch

from devtools import pure
from devtools.sd import encode

STEPS = 50


schedule = pure.fixture("steering.schedule")


def reference_steered_steps(start_step: int, end_step: int = STEPS, steps: int = STEPS) -> list[int]:
    """The reference generation loop (generate.py / generate_fair.py): `step` counts from 1 and
    the direction is added when start_step <= step <= end_step."""
    steered, step = [], 0
    for _timestep in range(steps):
        step += 1
        if start_step <= step <= end_step:
            steered.append(step)
    return steered


def schema_default(comfy, node_id: str, name: str) -> float:
    schema = comfy.node_class(node_id).define_schema()
    return next(i for i in schema.inputs if i.id == name).default


def test_paper_step_to_percent_lies_strictly_inside_the_intervals(schedule):
    # hand-computed: step k first  <=>  (k - 2) / 49 < p <= (k - 1) / 49
    assert schedule.paper_step_to_start_percent(15, 50) == 0.276 and 13 / 49 < 0.276 < 14 / 49
    assert schedule.paper_step_to_start_percent(10, 50) == 0.173 and 8 / 49 < 0.173 < 9 / 49
    assert schedule.paper_step_to_start_percent(1, 50) == 0.0
    assert schedule.paper_step_to_start_percent(15, 50, decimals=None) == pytest.approx(13.5 / 49)
    assert schedule.paper_step_to_end_percent(50, 50) == 1.0
    assert 44 / 49 < schedule.paper_step_to_end_percent(45, 50) < 45 / 49
    for steps in (10, 20, 25, 30, 50, 100):
        for k in range(2, steps + 1):
            p = schedule.paper_step_to_start_percent(k, steps)
            lo, hi = (k - 2) / (steps - 1), (k - 1) / (steps - 1)
            margin = (hi - lo) / 4
            assert lo + margin <= p <= hi - margin, (k, steps, p)
            assert schedule.steered_paper_steps(p, 1.0, steps) == list(range(k, steps + 1))
    assert schedule.steered_paper_steps(0.3, 1.0, 50)[0] == 16  # the old default: one step late
    for bad in ((0, 50), (51, 50), (3, 0), (2.0, 50), (True, 50)):
        with pytest.raises(ValueError):
            schedule.paper_step_to_start_percent(*bad)


def test_percents_select_the_steps_on_comfyuis_normal_sigmas(comfy, schedule, tiny):
    """ComfyUI's own normal-schedule sigmas and percent_to_sigma, with the inclusive window test."""
    import comfy.samplers

    sampling = tiny[0].get_model_object("model_sampling")
    for steps in (20, 25, 50):
        sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)[:-1]
        assert len(sigmas) == steps
        for k in range(1, steps + 1):
            sigma_start = sampling.percent_to_sigma(schedule.paper_step_to_start_percent(k, steps))
            steered = [i + 1 for i, s in enumerate(sigmas) if float(s) <= sigma_start]
            assert steered == list(range(k, steps + 1)), (k, steps)


def record_cond_context(model, calls: list):
    """A clone whose UNet calls record, per call, the text context of each conditional chunk.
    Which conditioning reaches the UNet is decided before it runs (ComfyUI's range test in
    calc_cond_batch), so the UNet itself is skipped (zeros): 50 steps cost nothing."""
    counted = model.clone()

    def wrapper(apply_model, args):
        labels = list(args["cond_or_uncond"])
        rows = args["input"].shape[0] // len(labels)
        context = args["c"]["c_crossattn"]
        calls.append([context[j * rows:(j + 1) * rows].clone() for j, label in enumerate(labels) if label == 0])
        return torch.zeros_like(args["input"])

    counted.set_model_unet_function_wrapper(wrapper)
    return counted


def sample(model, positive, negative, steps: int = STEPS, seed: int = 1, cfg: float = 5.0, size: int = 4):
    import comfy.sample

    latent = torch.zeros(1, 4, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                               disable_pbar=True, seed=seed)


def steered_steps_of_conditioning(model, positive, steered, negative) -> list[int]:
    calls = []
    with torch.inference_mode():
        sample(record_cond_context(model, calls), steered, negative)
    assert len(calls) == STEPS
    out = []
    for step, chunks in enumerate(calls, start=1):
        assert len(chunks) == 1, f"step {step}: {len(chunks)} conditional entries (a step on a window boundary)"
        if not torch.equal(chunks[0], positive[0][0].to(chunks[0])):
            out.append(step)
    return out


def direction(vf, seed: int):
    g = torch.Generator().manual_seed(seed)
    return vf.SteeringVector("embedding_direction", "sd1", {"direction": torch.randn(77, 768, generator=g)},
                             {"name": f"sched-{seed}"})


def test_embedding_direction_defaults_steer_the_papers_steps(comfy, vf, tiny):
    model = tiny[0]
    positive, negative = encode(comfy, "a photo of a person"), encode(comfy, "")
    start = schema_default(comfy, "RSApplyEmbeddingDirection", "start_percent")
    end = schema_default(comfy, "RSApplyEmbeddingDirection", "end_percent")
    node = comfy.node_class("RSApplyEmbeddingDirection")
    with torch.inference_mode():
        steered = node.execute(positive, direction(vf, 1), 1.0, start, end, "every_chunk").args[0]
        old = node.execute(positive, direction(vf, 1), 1.0, 0.3, 1.0, "every_chunk").args[0]
    assert steered_steps_of_conditioning(model, positive, steered, negative) == reference_steered_steps(15)
    assert steered_steps_of_conditioning(model, positive, old, negative) == reference_steered_steps(16)

    fair_start = schema_default(comfy, "RSApplyEmbeddingDirectionFair", "start_percent")
    fair_end = schema_default(comfy, "RSApplyEmbeddingDirectionFair", "end_percent")
    fair = comfy.node_class("RSApplyEmbeddingDirectionFair")
    with torch.inference_mode():
        fair_steered = fair.execute(positive, (direction(vf, 2), direction(vf, 3)), 1, 0, "uniform", 1.0,
                                    fair_start, fair_end, "every_chunk").args[0]
    assert steered_steps_of_conditioning(model, positive, fair_steered, negative) == reference_steered_steps(10)


class BottleneckRecorder:
    """An output_block_patch that records the bottleneck (the middle-block output) it is given.
    Model clones deep-copy their patches; the copies keep recording into the same list."""

    def __init__(self, store: list):
        self.store = store

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h, hsp, transformer_options):
        if transformer_options.get("block") == ("output", 0):
            self.store.append(h.clone())
        return h, hsp


def apply_hspace(comfy, vf, model, value: float, start_percent: float, end_percent: float):
    vector = vf.SteeringVector("hspace_cvector", "sd1", {"c": torch.full((1280, 1, 1), value)}, {"name": "sched-h"})
    node = comfy.node_class("RSApplyHSpaceVector")
    return node.execute(model, vector, 1.0, start_percent, end_percent, "cond_only", "bilinear").args[0]


def test_hspace_defaults_steer_every_step_and_the_mapping_holds_there_too(comfy, vf, schedule, tiny):
    """One real 50-step run (cfg 1: the conditional chunk only) through a model with two h-space
    patches, each between two recorders: the node's default window and the window of paper
    steps 15..45. A patch steered a step iff the bottleneck after it differs from before it."""
    positive, negative = encode(comfy, "a photo of a person"), encode(comfy, "")
    for node_id in ("RSApplyHSpaceVector", "RSApplyHSpaceVectorFair"):
        assert schema_default(comfy, node_id, "start_percent") == 0.0
        assert schema_default(comfy, node_id, "end_percent") == 1.0
    default = (schema_default(comfy, "RSApplyHSpaceVector", "start_percent"),
               schema_default(comfy, "RSApplyHSpaceVector", "end_percent"))
    window = (schedule.paper_step_to_start_percent(15, STEPS), schedule.paper_step_to_end_percent(45, STEPS))
    records = [[], [], []]
    model = tiny[0].clone()
    model.set_model_output_block_patch(BottleneckRecorder(records[0]))
    with torch.inference_mode():
        model = apply_hspace(comfy, vf, model, 0.5, *default).clone()
        model.set_model_output_block_patch(BottleneckRecorder(records[1]))
        model = apply_hspace(comfy, vf, model, -0.25, *window).clone()
        model.set_model_output_block_patch(BottleneckRecorder(records[2]))
        sample(model, positive, negative, cfg=1.0, size=2)
    assert [len(r) for r in records] == [STEPS] * 3

    def steered(before, after):
        return [step for step, (b, a) in enumerate(zip(before, after), start=1) if not torch.equal(a, b)]

    assert steered(records[0], records[1]) == reference_steered_steps(1)
    assert steered(records[1], records[2]) == reference_steered_steps(15, 45)


def test_readme_table_is_the_generated_one(schedule):
    import os

    from devtools.comfy_env import REPO

    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert schedule.step_table(schedule.README_ROWS) in readme
