"""Train steering vectors in the graph (embedding direction, CoDSMa c-vector, RespoDiff RAM+SAM),
and plot their loss history."""
from __future__ import annotations

import time

import torch
from comfy_api.v0_0_2 import io

from ..steering import comfy_compat
from ..steering.vector_file import sanitize_filename
from ..training.checkpoint import CHECKPOINT_SUFFIX
from ..training.loop import TrainConfig
from ..training.objectives import DIRECTIONS, INITS, OBJECTIVES, RESPODIFF_ROLLOUTS, SCHEDULES
from ..training.plot import plot_loss
from ..training.rollout import SAMPLERS, SCHEDULERS
from ..training.session import prompt_problem, train_vector
from . import paths
from .common import CATEGORY, schema
from .types import SteeringLossType, SteeringVectorType

LIVE_EVENT = "responsible-steering.training-loss"


METHOD_DEFAULT = "method_default"


def _method_defaults_text(field: str) -> str:
    return "; ".join(f"{name}: {getattr(o.defaults, field)}" for name, o in OBJECTIVES.items())


def _methods_text() -> str:
    return "; ".join(f"{name}: {o.description}" for name, o in OBJECTIVES.items())


def _or_default(value: str) -> str:
    return "" if value == METHOD_DEFAULT else value


class _LiveLoss:
    """Progress bar + (when a server is running) live loss points for the node's graph."""

    def __init__(self, total: int, node_id):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.node_id = node_id
        self.last_sent = 0.0
        self.pending: dict[str, list[float]] = {}
        self.server = comfy_compat.prompt_server()      # None without a server (scripts, tests in-process)

    def __call__(self, done: int, total: int, latest: dict[str, float]):
        for k, v in latest.items():
            self.pending.setdefault(k, []).append(v)
        now = time.monotonic()
        if self.server is not None and (now - self.last_sent > 0.5 or done == total):
            self.server.send_sync(LIVE_EVENT, {"node": self.node_id, "iteration": done, "total": total,
                                               "points": self.pending}, self.server.client_id)
            self.pending = {}
            self.last_sent = now
        self.bar.update_absolute(done, total)


class TrainSteeringVector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSTrainSteeringVector",
            search_aliases=["vector", "train", "training", "learn", "safety", "fair", "bias", "codsma", "respodiff"],
            display_name="Train Steering Vector",
            category=f"{CATEGORY}/training",
            description="Learn a steering vector on this model: an embedding direction (arXiv 2505.15427), a "
                        "CoDSMa h-space c-vector or RespoDiff RAM+SAM, matching the model's noise prediction "
                        "for the neutral prompt to the target's along rollouts of the neutral prompt (on-policy "
                        "trajectories with an update at every trained step, or random steps t; see schedule). "
                        "Only the vector is trained; the model is never changed. "
                        "Writes the vector to models/steering_vectors at the end (a checkpoint is kept in "
                        "output/steering_training for resuming). Shows the loss curve on the node.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to learn for: SD1.x, SD2.x or SDXL (every method); "
                                                "SD3 or FLUX (embedding directions)."),
                io.Clip.Input("clip", tooltip="The text encoder belonging to the model."),
                io.Combo.Input("method", options=list(OBJECTIVES), default="codsma_cvector",
                               tooltip=_methods_text() + "."),
                io.Combo.Input("direction", options=list(DIRECTIONS), default="toward_target",
                               tooltip="toward_target: steer the neutral prompt toward the target prompt "
                                       "(fairness, e.g. 'a person' -> 'a woman'); away_from_concept: steer away "
                                       "from the concept (safety, e.g. 'violence')."),
                io.String.Input("neutral_prompt", default="a person", multiline=True,
                                tooltip="The neutral prompt the vector is learned on ('a person' for fairness, "
                                        "'a scene' for safety), or several, one per line: each sample of every "
                                        "batch then draws one (the embedding-direction paper trains on 60 "
                                        "prompts)."),
                io.String.Input("target_prompt", default="a woman", multiline=True,
                                tooltip="toward_target: the target prompt ('a woman'); away_from_concept: the "
                                        "concept to move away from ('violence'). With several neutral prompts: "
                                        "one line for all of them, or one line per neutral prompt (paired, e.g. "
                                        "'a doctor' -> 'a female doctor')."),
                io.Int.Input("iterations", default=1000, min=1, max=100000,
                             tooltip="Optimizer updates (CoDSMa paper: 1000 fairness, 1500 safety). on_policy: one "
                                     "per trained step of a trajectory (embedding-direction reference: 41 per "
                                     "prompt, i.e. 41 x number of prompts / batch_size)."),
                io.Int.Input("batch_size", default=8, min=1, max=64,
                             tooltip="Samples per update, rolled out together in one batched reverse run "
                                     "(CoDSMa / RespoDiff papers: 8). on_policy: trajectories sampled together, "
                                     "one per prompt of the set in order; 1 = the embedding-direction "
                                     "reference exactly (one prompt per trajectory)."),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=10.0, step=0.0001,
                               tooltip="Adam learning rate; 0 = the method's paper setting "
                                       f"({_method_defaults_text('learning_rate')})."),
                io.Float.Input("lambda_sem", default=0.5, min=0.0, max=100.0, step=0.01,
                               tooltip="RespoDiff only: weight of the semantic-alignment (SAM) loss "
                                       "(paper 0.5; reference scripts 1.0 and 0.3)."),
                io.Int.Input("rank", default=1, min=1, max=77,
                             tooltip="Embedding direction only: rank r of d = B A (B: 77 x r zero-initialised, "
                                     "A: r x D random). Paper: 1."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial vector, the noise and the sampled timesteps: the same "
                                     "seed and settings give the same vector."),
                io.Int.Input("resolution", default=0, min=0, max=4096, step=64,
                             tooltip="Training image size in pixels (square, multiple of 64); 0 = the model's "
                                     "native size (512 SD1.x, 768 SD2.x, 1024 SDXL, SD3, FLUX). h-space vectors are "
                                     "learned at this bottleneck size and resized when applied."),
                io.Int.Input("rollout_steps", default=50, min=1, max=1000,
                             tooltip="Steps of the reverse-process schedule z_t is taken from (papers: 50)."),
                io.Combo.Input("scheduler", options=[METHOD_DEFAULT, *SCHEDULERS], default=METHOD_DEFAULT,
                               tooltip="Sigmas of the rollout (the model's own); method_default = the "
                                       "reference's: normal for the embedding direction (LMS's 50-step grid in "
                                       "train_ptuner.py), ddim_uniform (DDIM) for CoDSMa and RespoDiff."),
                io.Float.Input("target_guidance", default=0.0, min=0.0, max=50.0, step=0.1,
                               tooltip="Guidance of the target noise prediction; 0 = the method's setting "
                                       "(embedding direction 7.5; CoDSMa 1 toward / 7.5 away; RespoDiff 4 "
                                       "toward / 12 away)."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute the model's activations in the backward pass instead of storing "
                                         "them: much less memory, about 30% slower."),
                io.Int.Input("checkpoint_every", default=100, min=1, max=100000,
                             tooltip="Save a resumable checkpoint every N iterations (and at the end)."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue from this save name's checkpoint if there is one (same "
                                         "settings required; iterations may be raised). The result equals an "
                                         "uninterrupted run."),
                io.String.Input("save_name", default="trained_vector",
                                tooltip="File name in models/steering_vectors (a numeric suffix is added if it "
                                        "exists). The checkpoint is output/steering_training/<name>"
                                        f"{CHECKPOINT_SUFFIX}."),
                io.Float.Input("sam_lr_scale", default=0.01, min=0.0001, max=1.0, step=0.0001, optional=True,
                               tooltip="RespoDiff only: SAM's learning rate as a fraction of RAM's (reference "
                                       "safety scripts: 1e-4 vs 1e-2). At 1 (equal rates) SAM just learns to "
                                       "cancel RAM and the pair has no effect."),
                io.Combo.Input("schedule", options=[METHOD_DEFAULT, *SCHEDULES], default=METHOD_DEFAULT,
                               optional=True,
                               tooltip="on_policy: sample trajectories of the neutral prompts and update at every "
                                       "trained step along them, advancing with the vector applied (detached) - "
                                       "the embedding-direction reference; random_timesteps: every update rolls "
                                       "a fresh batch out to random steps t (CoDSMa / RespoDiff references). "
                                       f"method_default: {_method_defaults_text('schedule')}."),
                io.Combo.Input("init", options=[METHOD_DEFAULT, *INITS], default=METHOD_DEFAULT, optional=True,
                               tooltip="Initial h-space tensors. nn_linear_default: RespoDiff reference (nn.Linear's "
                                       "default init of its Linear(10 concepts -> 1280*h*w): uniform in "
                                       "+-1/sqrt(10), std 0.18); normal: N(0, 0.01^2). The embedding direction "
                                       "always starts at B = 0, A ~ N(0, 1). "
                                       f"method_default: {_method_defaults_text('init')}."),
                io.Combo.Input("rollout_sampler", options=[METHOD_DEFAULT, *SAMPLERS], default=METHOD_DEFAULT,
                               optional=True,
                               tooltip="The rollout's update: euler (= DDIM, the CoDSMa / RespoDiff references) or "
                                       "lms (4th-order linear multistep, the embedding-direction reference's "
                                       f"LMSDiscreteScheduler). method_default: {_method_defaults_text('sampler')}."),
                io.Combo.Input("respodiff_rollout", options=list(RESPODIFF_ROLLOUTS), default="ram_sam",
                               optional=True,
                               tooltip="RespoDiff only: what the rollouts add to the conditional half - ram_sam "
                                       "(reference pipeline) or ram_only (RAM alone)."),
            ],
            outputs=[
                SteeringVectorType.Output(display_name="vector", tooltip="The trained vector (also saved: filename)."),
                SteeringLossType.Output(display_name="loss", tooltip="The loss history, for Plot Steering Loss."),
                io.String.Output(display_name="filename", tooltip="Name of the vector file written."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, neutral_prompt=None, target_prompt=None, resolution=None, save_name=None, **_):
        problem = prompt_problem(neutral_prompt, target_prompt)
        if problem:
            return problem
        if resolution is not None and resolution % 64:
            return f"resolution must be 0 (native) or a multiple of 64; got {resolution}"
        if save_name is not None:
            try:
                sanitize_filename(save_name)
            except ValueError as e:
                return f"save_name: {e}"
        return True

    @classmethod
    def execute(cls, model, clip, method, direction, neutral_prompt, target_prompt, iterations, batch_size,
                learning_rate, lambda_sem, rank, seed, resolution, rollout_steps, scheduler, target_guidance,
                gradient_checkpointing, checkpoint_every, resume, save_name, sam_lr_scale=0.01,
                schedule=METHOD_DEFAULT, init=METHOD_DEFAULT, respodiff_rollout="ram_sam",
                rollout_sampler=METHOD_DEFAULT) -> io.NodeOutput:
        import comfy.model_management as mm

        cfg = TrainConfig(
            method=method, direction=direction, iterations=iterations, batch_size=batch_size,
            learning_rate=learning_rate, lambda_sem=lambda_sem, sam_lr_scale=sam_lr_scale, rank=rank, seed=seed,
            resolution=resolution, rollout_steps=rollout_steps, scheduler=_or_default(scheduler),
            schedule=_or_default(schedule), init=_or_default(init), respodiff_rollout=respodiff_rollout,
            rollout_sampler=_or_default(rollout_sampler), target_guidance=target_guidance,
            gradient_checkpointing=gradient_checkpointing, checkpoint_every=checkpoint_every)
        trained = train_vector(model, clip, cfg, neutral_prompt, target_prompt, save_name=save_name, resume=resume,
                               folder=paths.save_folder(),
                               on_progress=_LiveLoss(iterations, cls.hidden.unique_id if cls.hidden else None),
                               check_interrupt=mm.throw_exception_if_processing_interrupted)
        vector, filename, result = trained.vector, trained.filename, trained.result
        loss = {"method": method, "name": filename, "iterations": result.iterations, "series": result.history}
        return io.NodeOutput(vector, loss, filename, ui={"rs_loss": [loss], "text": [f"saved {filename}"]})


class PlotSteeringLoss(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="RSPlotSteeringLoss",
            search_aliases=["loss", "plot", "graph", "training"],
            display_name="Plot Steering Loss",
            category=f"{CATEGORY}/training",
            description="Draw a training loss history (from Train Steering Vector) as an image: one line per "
                        "loss (RespoDiff: RAM and SAM), with a moving average.",
            inputs=[
                SteeringLossType.Input("loss", tooltip="Loss history from Train Steering Vector."),
                io.Int.Input("width", default=768, min=128, max=4096, tooltip="Image width in pixels."),
                io.Int.Input("height", default=384, min=96, max=4096, tooltip="Image height in pixels."),
                io.Boolean.Input("log_scale", default=True, tooltip="Logarithmic loss axis."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The loss curves as an image.")],
        )

    @classmethod
    def execute(cls, loss, width, height, log_scale) -> io.NodeOutput:
        image = plot_loss(loss["series"], width, height, log_scale, title=f"{loss['method']} - {loss['name']}")
        return io.NodeOutput(torch.from_numpy(image).float().div(255.0).unsqueeze(0))


NODES = [TrainSteeringVector, PlotSteeringLoss]
