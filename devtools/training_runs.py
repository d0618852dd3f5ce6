"""Train Steering Vector on the tiny SD1 checkpoint through real prompts: the graph, a run, a run that Cancel
interrupts (shared by the training tests)."""
from __future__ import annotations

import os

import pytest

from devtools.session import PromptError


def train_inputs(**overrides) -> dict:
    inputs = dict(method="codsma_cvector", direction="toward_target", neutral_prompt="a person",
                  target_prompt="a woman", iterations=4, batch_size=2, learning_rate=0.0, lambda_sem=0.5, rank=1,
                  seed=0, resolution=64, rollout_steps=1, scheduler="method_default", target_guidance=0.0,
                  gradient_checkpointing=False, checkpoint_every=1, resume=False, save_name="trained")
    inputs.update(overrides)
    return inputs


def train_graph(comfy, **overrides):
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", id="ckpt", ckpt_name=comfy.checkpoint_name)
    g.node("RSTrainSteeringVector", id="train", model=ckpt.out(0), clip=ckpt.out(1), **train_inputs(**overrides))
    return g


def run_training(comfy, plot: bool = False, **overrides) -> dict:
    g = train_graph(comfy, **overrides)
    if plot:
        image = g.node("RSPlotSteeringLoss", id="plot", loss=["train", 1], width=320, height=160, log_scale=True)
        g.node("PreviewImage", images=image.out(0))
    result = comfy.run(g.finalize())
    return {"vector": result.output("train", 0), "loss": result.output("train", 1),
            "filename": result.output("train", 2), "ui": result.ui.get("train", {}),
            "model": result.output("ckpt", 0), "plot": result.output("plot", 0) if plot else None}


def checkpoint_file(comfy, name: str) -> str:
    return os.path.join(comfy.output_dir, "steering_training", f"{name}.checkpoint.safetensors")


class InterruptAfter:
    """A progress hook (as the server installs one) that presses Cancel after N iterations."""

    def __init__(self, iterations: int):
        self.iterations = iterations

    def __call__(self, value, total, preview, node_id=None):
        import comfy.model_management

        if value >= self.iterations:
            comfy.model_management.interrupt_current_processing(True)


def cancelled_training(comfy, after: int, save_name: str, **settings):
    """Run training that Cancel interrupts after `after` iterations (the prompt must fail with "interrupted");
    returns the checkpoint it left. The progress hook and the interrupt flag are reset whatever happens."""
    from comfy import model_management, utils as comfy_utils

    comfy_utils.set_progress_bar_global_hook(InterruptAfter(after))
    try:
        with pytest.raises(PromptError, match="interrupted"):
            run_training(comfy, save_name=save_name, **settings)
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
        model_management.interrupt_current_processing(False)
    return comfy.module("training.checkpoint").load_checkpoint(checkpoint_file(comfy, save_name))
