"""One training loop for every objective: seeds, the update schedule, batched rollouts,
optimizer steps, progress, cancellation, periodic checkpoints and the loss history.

Two schedules (``TrainConfig.schedule``), for any objective of the registry:

* ``on_policy`` (embedding-direction reference, ``train_ptuner.py``): a batch of prompts
  (the prompt set in order, one trajectory per prompt) is sampled from noise; the steps
  before the trained window advance with the plain CFG prediction, then at every step of
  the window the objective makes its update(s) and the latents advance with the guided
  prediction of the vector as it was before that update (detached). One iteration = one
  step of a trajectory; a new trajectory starts when the window is done.
* ``random_timesteps``: every iteration rolls a fresh batch out to random steps t of the
  window (one batched run) and makes one update there (each sample draws its prompt).

Runs inside a ComfyUI node, i.e. under ``torch.inference_mode()``: the model is loaded
there (ComfyUI's model management), then training happens inside
``torch.inference_mode(False)`` with the UNet's weights swapped for zero-copy frozen
aliases (unet.gradient_ready). Only the vector's tensors are leaves that require grad.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
from dataclasses import dataclass
from typing import Callable

import torch

from .checkpoint import CheckpointError, TrainState, load_checkpoint, save_checkpoint
from ..steering.architectures import get_architecture
from ..steering.checkpointing import gradient_checkpointing
from ..steering.comfy_compat import gradient_pass, latent_downscale
from ..steering.prompts import prompt_lines
from ..steering.vector_file import SteeringVector
from .objectives import DIRECTIONS, OBJECTIVES, SCHEDULES, Prompts, get_objective
from .rollout import SAMPLERS, SCHEDULERS, Stepper, batched_rollout, schedule
from .unet import UNetCaller, bottleneck_shape, gradient_ready, sampling_run

# Fields a checkpoint must share with the run that resumes it (iterations may grow).
RESUME_KEYS = ("method", "direction", "batch_size", "learning_rate", "lambda_sem", "sam_lr_scale", "rank", "seed",
               "resolution", "rollout_steps", "scheduler", "rollout_guidance", "target_guidance", "t_start", "t_end",
               "loss_scale", "init_std", "away_base", "neutral_text", "target_text", "arch", "schedule", "init",
               "respodiff_rollout", "rollout_sampler")

class TrainingMemoryError(RuntimeError):
    """The requested batch / resolution does not fit the device's memory."""


@dataclass
class TrainConfig:
    method: str
    direction: str = "toward_target"
    iterations: int = 1000
    batch_size: int = 8
    learning_rate: float = 0.0          # 0: the objective's default (its MethodDefaults)
    lambda_sem: float = 0.5             # RespoDiff: weight of the semantic-alignment (SAM) loss (paper 0.5)
    # RespoDiff: SAM's learning rate as a fraction of RAM's (reference safety scripts: 1e-4 / 1e-2).
    # With equal rates SAM simply learns -RAM and the pair does nothing (measured on ToyWorld).
    sam_lr_scale: float = 0.01
    rank: int = 1                       # embedding direction rank (paper 1)
    seed: int = 0
    resolution: int = 512               # image pixels (square)
    rollout_steps: int = 50
    scheduler: str = ""                 # "": method default (embedding direction "normal", else "ddim_uniform")
    schedule: str = ""                  # "": method default (embedding direction on_policy, else random_timesteps)
    rollout_sampler: str = ""           # "": method default (embedding direction lms, else euler = DDIM)
    rollout_guidance: float = 0.0       # 0: method default
    target_guidance: float = 0.0        # 0: method default (toward / away)
    t_start: float = -1.0               # <0: method default
    t_end: float = -1.0
    loss_scale: float = 0.0             # 0: method default
    init: str = ""                      # "": method default (RespoDiff nn_linear_default; CoDSMa normal)
    init_std: float = 0.01              # std of init "normal"
    respodiff_rollout: str = "ram_sam"  # RespoDiff rollouts: ram_sam (reference) or ram_only
    away_base: str = ""                 # "": method default
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    neutral_text: str = ""
    target_text: str = ""
    arch: str = ""

    def resolved(self) -> "TrainConfig":
        """A copy with every 'method default' placeholder replaced by the paper setting."""
        d = get_objective(self.method).defaults
        return dataclasses.replace(
            self,
            learning_rate=self.learning_rate or d.learning_rate,
            rollout_guidance=self.rollout_guidance or d.rollout_guidance,
            target_guidance=self.target_guidance or (d.toward_guidance if self.direction == "toward_target"
                                                     else d.away_guidance),
            t_start=d.t_start if self.t_start < 0 else self.t_start,
            t_end=d.t_end if self.t_end < 0 else self.t_end,
            loss_scale=self.loss_scale or d.loss_scale,
            away_base=self.away_base or d.away_base,
            scheduler=self.scheduler or d.scheduler,
            schedule=self.schedule or d.schedule,
            rollout_sampler=self.rollout_sampler or d.sampler,
            init=self.init or d.init,
        )

    def validate(self, downscale: int = 8) -> None:
        """Raise ValueError listing every bad setting; `downscale` is the model's pixels per latent pixel."""
        problems = []
        if self.method not in OBJECTIVES:
            problems.append(f"method {self.method!r}; expected one of {list(OBJECTIVES)}")
        else:
            problems.extend(get_objective(self.method).validate(self))
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r}; expected one of {list(SCHEDULES)}")
        if self.direction not in DIRECTIONS:
            problems.append(f"direction {self.direction!r}; expected one of {list(DIRECTIONS)}")
        if self.iterations < 1:
            problems.append(f"iterations must be >= 1; got {self.iterations}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1; got {self.batch_size}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0; got {self.learning_rate}")
        if self.sam_lr_scale <= 0:
            problems.append(f"sam_lr_scale must be > 0; got {self.sam_lr_scale}")
        if self.rank < 1:
            problems.append(f"rank must be >= 1; got {self.rank}")
        step = 8 * downscale
        if self.resolution < step or self.resolution % step:
            problems.append(f"resolution must be a multiple of {step} and >= {step}; got {self.resolution}")
        if self.rollout_steps < 1:
            problems.append(f"rollout_steps must be >= 1; got {self.rollout_steps}")
        if self.rollout_sampler not in SAMPLERS:
            problems.append(f"rollout_sampler {self.rollout_sampler!r}; expected one of {list(SAMPLERS)}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler {self.scheduler!r}; expected one of {list(SCHEDULERS)}")
        if not 0.0 <= self.t_start < self.t_end <= 1.0:
            problems.append(f"need 0 <= t_start < t_end <= 1; got {self.t_start}, {self.t_end}")
        if self.checkpoint_every < 1:
            problems.append(f"checkpoint_every must be >= 1; got {self.checkpoint_every}")
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))

    def step_range(self, steps: int | None = None) -> tuple[int, int]:
        """The trained steps [lo, hi): 0-based step indices k of the schedule's `steps` steps (z_t = the latents
        after k steps, at sigmas[k]); lo = round(t_start * steps), hi = round(t_end * steps). The embedding
        direction's 0.18 / 1.0 of 50 steps give 9..49, the reference's steps 10..50 counted from 1.
        random_timesteps draws k uniformly from the range; on_policy updates at every k of it, in order."""
        steps = steps or self.rollout_steps
        lo = min(int(round(self.t_start * steps)), steps - 1)
        hi = min(max(lo + 1, int(round(self.t_end * steps))), steps)
        return lo, hi

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    params: dict[str, torch.Tensor]          # float32, CPU
    history: dict[str, list[float]]
    config: TrainConfig
    iterations: int


def vector_of(result: TrainResult, arch: str) -> SteeringVector:
    """The trained tensors as a SteeringVector with its training record."""
    cfg = result.config
    toward = cfg.direction == "toward_target"
    target = " | ".join(prompt_lines(cfg.target_text)) or cfg.target_text
    info = {
        "name": target if toward else f"anti-{target}",
        "concept": target if toward else f"away from {target}",
        "neutral_prompt": " | ".join(prompt_lines(cfg.neutral_text)) or cfg.neutral_text,
        "origin": f"trained with Train Steering Vector ({cfg.method})",
        "resolution": str(cfg.resolution),
        "training": {**{k: v for k, v in cfg.as_dict().items() if k not in ("neutral_text", "target_text")},
                     "final_loss": {k: v[-1] for k, v in result.history.items() if v}},
    }
    info["target_prompt" if toward else "negative_prompt"] = target
    return SteeringVector(get_objective(cfg.method).vector_method, arch, dict(result.params), info)


def compute_dtype_of(base) -> torch.dtype:
    return base.manual_cast_dtype or base.get_dtype()


def check_memory(base, latent_shape: tuple, device: torch.device, cfg: TrainConfig) -> None:
    """Refuse up front (with the numbers) what clearly cannot fit, instead of an OOM mid-run."""
    import comfy.model_management as mm

    b = latent_shape[0]
    rollout = base.memory_required([2 * b, *latent_shape[1:]])
    backward = base.memory_required([b, *latent_shape[1:]]) * (1.5 if cfg.gradient_checkpointing else 4.0)
    need = max(rollout, backward)
    free = mm.get_free_memory(device)
    if need > free:
        raise TrainingMemoryError(
            f"training with batch_size {b} at {cfg.resolution} px needs about {need / 2**30:.1f} GiB on {device}, "
            f"but {free / 2**30:.1f} GiB are free; lower batch_size or resolution, or turn on "
            "gradient_checkpointing")


class _Run:
    """Everything one training run holds, so it can all be released at once."""

    def __init__(self):
        self.params: dict[str, torch.Tensor] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, object] = {}

    def release(self):
        self.params.clear()
        self.optimizers.clear()
        self.scalers.clear()


# Settings that checkpoints written by earlier versions of the pack store under another name.
RENAMED_KEYS = {"lam": "lambda_sem"}


def _check_resume(state: TrainState, cfg: TrainConfig, params: dict[str, torch.Tensor], path: str) -> None:
    wanted = cfg.as_dict()
    saved = {RENAMED_KEYS.get(k, k): v for k, v in state.config.items()}
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {wanted[k]!r}"
             for k in RESUME_KEYS if saved.get(k) != wanted[k]]
    if diffs:
        raise CheckpointError(f"{path} belongs to a different training run ({'; '.join(diffs)}); "
                              "turn resume off or restore those settings")
    shapes = {k: list(v.shape) for k, v in state.params.items()}
    if shapes != {k: list(v.shape) for k, v in params.items()}:
        raise CheckpointError(f"{path} holds tensors {shapes}, this run needs "
                              f"{ {k: list(v.shape) for k, v in params.items()} }")
    if state.iteration > cfg.iterations:
        raise CheckpointError(f"{path} is at iteration {state.iteration}, beyond the {cfg.iterations} "
                              "iterations asked for; raise iterations to continue it")


def as_prompt_set(value: list, what: str) -> list[list]:
    """A CONDITIONING, or a list of them (a prompt set), as a list of CONDITIONINGs."""
    if not value:
        raise ValueError(f"{what}: no conditioning given")
    first = value[0]
    is_single = isinstance(first, (list, tuple)) and len(first) == 2 and isinstance(first[0], torch.Tensor)
    return [value] if is_single else list(value)


def train(patcher, conditionings: dict[str, list], cfg: TrainConfig, *,
          checkpoint_path: str | None = None, resume: bool = False,
          on_progress: Callable[[int, int, dict[str, float]], None] | None = None,
          check_interrupt: Callable[[], None] | None = None) -> TrainResult:
    """Train one vector. `conditionings` holds ComfyUI CONDITIONING for 'neutral', 'other' (target
    prompt or concept) and 'uncond'. 'neutral' may be a list of CONDITIONINGs (a prompt set: each
    sample of every batch draws one), and then 'other' one for all or one per neutral prompt
    (paired). Loads the model with ComfyUI's model management first."""
    import comfy.model_management as mm

    cfg = cfg.resolved()
    base = patcher.model
    downscale = latent_downscale(base)
    cfg.validate(downscale)
    neutral_set = as_prompt_set(conditionings["neutral"], "neutral")
    other_set = as_prompt_set(conditionings["other"], "other")
    if len(other_set) not in (1, len(neutral_set)):
        raise ValueError(f"{len(other_set)} target prompts for {len(neutral_set)} neutral prompts; give one target "
                         "for all of them or one per neutral prompt")
    conditionings = {**conditionings, "neutral": neutral_set, "other": other_set,
                     "uncond": as_prompt_set(conditionings["uncond"], "uncond")[:1]}
    mm.load_models_gpu([patcher])
    device = patcher.load_device
    compute_dtype = compute_dtype_of(base)
    size = cfg.resolution // downscale
    latent_shape = (cfg.batch_size, base.latent_format.latent_channels, size, size)
    check_memory(base, latent_shape, device, cfg)
    run = _Run()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(gradient_pass(patcher))
            stack.enter_context(gradient_ready(base.diffusion_model))
            stack.enter_context(gradient_checkpointing(base.diffusion_model, enabled=cfg.gradient_checkpointing))
            stack.enter_context(sampling_run(patcher))
            return _train_loop(run, patcher, conditionings, cfg, device, compute_dtype, latent_shape,
                               checkpoint_path, resume, on_progress, check_interrupt)
    except mm.OOM_EXCEPTION as e:
        run.release()
        raise TrainingMemoryError(
            f"out of memory while training with batch_size {cfg.batch_size} at {cfg.resolution} px on {device}; "
            f"lower batch_size or resolution, or turn on gradient_checkpointing ({e})") from None
    finally:
        run.release()
        gc.collect()
        mm.soft_empty_cache()


def _train_loop(run: _Run, patcher, conditionings, cfg: TrainConfig, device, compute_dtype, latent_shape,
                checkpoint_path, resume, on_progress, check_interrupt) -> TrainResult:
    objective = get_objective(cfg.method)
    caller = UNetCaller(patcher, device, compute_dtype, autocast=compute_dtype != torch.float32)
    prompt_set = Prompts(*(caller.prepare_prompts(conditionings[k], latent_shape, k)
                           for k in ("neutral", "other", "uncond")))
    sigmas = schedule(caller.sampling, cfg.rollout_steps, cfg.scheduler)
    k_lo, k_hi = cfg.step_range(sigmas.shape[0] - 1)
    generator = torch.Generator().manual_seed(cfg.seed)

    # a CLIP-chunk model: one direction per 77-token chunk; a token sequence (SD3/FLUX): one row per token
    chunk = get_architecture(cfg.arch).text_tokens if cfg.arch else 77
    tokens = prompt_set.neutral.tokens if chunk is None else min(chunk, prompt_set.neutral.tokens)
    text_shape = (tokens, prompt_set.neutral.cross_attn.shape[-1])
    hshape = bottleneck_shape(caller, latent_shape, prompt_set.neutral) if objective.needs_bottleneck else None
    initial = objective.init_params(generator, text_shape=text_shape, bottleneck_shape=hshape, cfg=cfg)
    run.params.update({k: v.to(device).requires_grad_(True) for k, v in initial.items()})
    params = run.params
    use_scaler = compute_dtype == torch.float16 and device.type == "cuda"
    for name, roles in objective.phase_params().items():
        run.optimizers[name] = torch.optim.Adam([params[p] for p in roles],
                                                lr=objective.phase_learning_rate(name, cfg))
        if use_scaler:
            run.scalers[name] = torch.amp.GradScaler(device.type)
    history: dict[str, list[float]] = {name: [] for name in objective.phase_names}
    start = 0
    trajectory: dict[str, torch.Tensor] = {}
    if resume and checkpoint_path:
        try:
            state = load_checkpoint(checkpoint_path)
        except CheckpointError:
            state = None  # nothing to resume: start fresh
        if state is not None:
            _check_resume(state, cfg, params, checkpoint_path)
            with torch.no_grad():
                for k, v in state.params.items():
                    params[k].copy_(v.to(device))
            for name, opt in run.optimizers.items():
                opt.load_state_dict(state.optimizers[name])
            for name, scaler in run.scalers.items():
                if name in state.scalers:
                    scaler.load_state_dict(state.scalers[name])
            generator.set_state(state.rng_state)
            history = {k: list(v) for k, v in state.history.items()}
            start = state.iteration
            trajectory = {k: v.to(device) for k, v in state.trajectory.items()}
            if cfg.schedule == "on_policy" and start % (k_hi - k_lo) and "x" not in trajectory:
                raise CheckpointError(f"{checkpoint_path} stops inside an on-policy trajectory but does not hold "
                                      "its latents; turn resume off")

    def update(phases, it: int) -> dict[str, float]:
        latest = {}
        for phase in phases:
            opt = run.optimizers[phase.name]
            opt.zero_grad(set_to_none=True)
            loss = phase.loss()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{phase.name} loss became {float(loss)} at iteration {it + 1}; lower learning_rate")
            scaler = run.scalers.get(phase.name)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            latest[phase.name] = float(loss.detach())
            history[phase.name].append(latest[phase.name])
        return latest

    window = k_hi - k_lo
    on_policy = cfg.schedule == "on_policy"
    stepper = None
    for it in range(start, cfg.iterations):
        if check_interrupt is not None:
            check_interrupt()
        if on_policy:
            # iteration it = step k_lo + it % window of trajectory it // window; the trajectory's prompts are the
            # prompt set in order (one trajectory per prompt), its noise is drawn when it starts
            k = k_lo + it % window
            prompts = _trajectory_prompts(prompt_set, it // window, cfg.batch_size)
            if it % window == 0:
                noise = torch.randn(latent_shape, generator=generator).to(device)
                trajectory.clear()
                stepper = Stepper(sigmas, cfg.rollout_sampler)
                trajectory["x"] = batched_rollout(
                    caller, noise, sigmas, torch.full((cfg.batch_size,), k_lo), prompts.neutral, prompts.uncond,
                    cfg.rollout_guidance, stepper=stepper)  # the warm-up steps before the window: no vector applied
            elif stepper is None:  # resumed inside a trajectory
                stepper = Stepper(sigmas, cfg.rollout_sampler, [trajectory[f"eps{i}"] for i in range(LMS_KEPT)
                                                                if f"eps{i}" in trajectory])
            x = trajectory["x"]
            sigma = torch.full((cfg.batch_size,), float(sigmas[k]), device=device)
            phases, advance = objective.on_policy_step(caller, x, sigma, prompts, params, cfg)
            latest = update(phases, it)
            with torch.no_grad():
                trajectory["x"] = stepper.step(x, k, advance())
            trajectory.update({f"eps{i}": e for i, e in enumerate(stepper.history)})
            del phases, advance, x
        else:
            stop = torch.randint(k_lo, k_hi, (cfg.batch_size,), generator=generator)
            noise = torch.randn(latent_shape, generator=generator).to(device)
            prompts = prompt_set
            if prompt_set.neutral.rows > 1:  # a prompt set: every sample draws its prompt (and paired target)
                pick = torch.randint(0, prompt_set.neutral.rows, (cfg.batch_size,), generator=generator)
                prompts = Prompts(prompt_set.neutral.take(pick), prompt_set.other.take(pick), prompt_set.uncond)
            z = batched_rollout(caller, noise, sigmas, stop, prompts.neutral, prompts.uncond, cfg.rollout_guidance,
                                **objective.rollout_shift(params, cfg), stepper=Stepper(sigmas, cfg.rollout_sampler))
            sigma = sigmas[stop].to(device)
            phases = objective.phases(caller, z, sigma, prompts, params, cfg)
            latest = update(phases, it)
            del z, phases
        done = it + 1
        if checkpoint_path and (done % cfg.checkpoint_every == 0 or done == cfg.iterations):
            mid_trajectory = on_policy and done % window != 0
            save_checkpoint(checkpoint_path, TrainState(
                iteration=done, params=params, optimizers={k: o.state_dict() for k, o in run.optimizers.items()},
                scalers={k: s.state_dict() for k, s in run.scalers.items()}, rng_state=generator.get_state(),
                history=history, config=cfg.as_dict(), trajectory=dict(trajectory) if mid_trajectory else {}))
        if on_progress is not None:
            on_progress(done, cfg.iterations, latest)

    out = {k: v.detach().to("cpu", torch.float32).clone() for k, v in params.items()}
    return TrainResult(out, history, cfg, cfg.iterations)


LMS_KEPT = 4  # eps of the last steps an lms trajectory keeps (checkpoint keys eps0..eps3, oldest first)


def _trajectory_prompts(prompt_set: Prompts, index: int, batch_size: int) -> Prompts:
    """The prompts of on-policy trajectory batch `index`: the prompt set in order, wrapping around."""
    if prompt_set.neutral.rows == 1:
        return prompt_set
    pick = (index * batch_size + torch.arange(batch_size)) % prompt_set.neutral.rows
    return Prompts(prompt_set.neutral.take(pick), prompt_set.other.take(pick), prompt_set.uncond)
