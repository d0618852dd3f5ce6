"""The training objectives, one class each, in a registry (``OBJECTIVES``) that the loop and
the Train Steering Vector node are built from (as ComfyUI's ``nodes_train.py`` maps adapter
names to adapter classes). An objective owns everything that differs between methods: its
paper / reference defaults, its initial tensors, what a rollout applies, its update phases
and the vector kind it produces. The loop (loop.py) has no per-method branches.

Notation: ``z`` is the noisy latent at step t, ``h`` the UNet bottleneck (middle-block
output), ``P_y`` the text embedding of prompt y. ``eps(z; h + c, y, t)`` is the UNet noise
prediction for prompt y with ``c`` added to the bottleneck, ``eps(z; P_y + d, t)`` the
prediction with ``d`` added to the prompt embedding. MSE is the mean over all elements.

* Embedding direction (arXiv 2505.15427), d = B @ A:
  ``L = loss_scale * MSE(eps(z; P_neutral + d), target)``; gradients through the whole UNet.
  Reference (``train_ptuner.py``): on-policy, one trajectory per prompt, an Adam update at
  every step of the trained window, latents advanced with the CFG prediction of the
  *shifted* embedding (the loss's own forward pass, detached, before the update).
* CoDSMa: ``L = MSE(eps(z; h + c, neutral), target)``; only the decoder half sees the
  vector (the encoder computes h without any requires-grad input, so no graph is built).
* RespoDiff, alternating: ``L_resp = MSE(eps(z; h + RAM, neutral), target)`` updates RAM,
  then ``L_sem = lambda_sem * MSE(eps(z; h + RAM + SAM, neutral), eps(z; h, neutral))``
  updates SAM (RAM held fixed). Rollouts add RAM + SAM to the conditional half (the
  reference pipeline's ``controlnet_cond_guidance``); RAM and SAM start at ``nn.Linear``'s
  default initialisation of the reference's ``Linear(10 concepts -> 1280*h*w)``.

Targets (no gradient), with guidance g:
* toward a target prompt: ``eps_u + g (eps_target - eps_u)`` (g = 1: just eps_target);
* away from a concept: ``eps_concept + g (eps_base - eps_concept)`` where the base is the
  empty prompt for the embedding direction (reference code) and the neutral prompt for
  the h-space methods (negative prompting, CoDSMa / RespoDiff).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..steering import codsma, respodiff
from ..steering.guidance import cfg_mix
from .rollout import guided_eps
from .unet import PromptConds, UNetCaller

if TYPE_CHECKING:  # the loop imports this module
    from .loop import TrainConfig

DIRECTIONS = ("toward_target", "away_from_concept")
# on_policy: one trajectory per batch of prompts, an update at every step of the trained window along it
# (embedding-direction reference). random_timesteps: every iteration rolls a fresh batch out to random steps.
SCHEDULES = ("on_policy", "random_timesteps")
# RespoDiff rollouts: RAM + SAM on the conditional half (reference) or RAM alone (this pack's earlier versions).
RESPODIFF_ROLLOUTS = ("ram_sam", "ram_only")
# Initial h-space tensors: nn_linear_default = nn.Linear's default (kaiming-uniform, a = sqrt(5)) for the
# RespoDiff reference's Linear(10 -> 1280*h*w), i.e. U(-1/sqrt(10), 1/sqrt(10)) per element (std 0.18);
# normal = N(0, init_std^2) (init_std 0.01).
INITS = ("nn_linear_default", "normal")


class ObjectiveError(ValueError):
    """An unknown objective, or settings an objective does not support."""


@dataclass(frozen=True, kw_only=True)
class MethodDefaults:
    """An objective's settings as its paper / reference code uses them (given by keyword)."""

    learning_rate: float
    rollout_guidance: float
    toward_guidance: float
    away_guidance: float
    t_start: float   # first trained step, as a fraction of the rollout schedule
    t_end: float     # end (exclusive) of the trained steps
    loss_scale: float
    away_base: str   # "uncond" or "neutral"
    schedule: str    # one of SCHEDULES
    scheduler: str   # rollout sigmas (training.rollout.SCHEDULERS)
    sampler: str     # rollout update (training.rollout.SAMPLERS)
    init: str        # one of the objective's inits


@dataclass
class Prompts:
    """Prepared model inputs of the prompts a run needs."""

    neutral: PromptConds
    other: PromptConds          # the target prompt, or the concept to move away from
    uncond: PromptConds         # the empty prompt


@dataclass
class Phase:
    """One optimizer step of an iteration: which vector tensors it updates and its loss."""

    name: str
    params: tuple[str, ...]
    loss: Callable[[], torch.Tensor]


def target_needs(direction: str, guidance: float, away_base: str) -> list[str]:
    """The prompts ('other', 'uncond', 'neutral') the target prediction is made of."""
    if direction == "toward_target":
        return ["other"] if guidance == 1.0 else ["other", "uncond"]
    if direction == "away_from_concept":
        return ["other", "uncond" if away_base == "uncond" else "neutral"]
    raise ObjectiveError(f"direction {direction!r}; expected one of {list(DIRECTIONS)}")


def reference_eps(caller: UNetCaller, z: torch.Tensor, sigma: torch.Tensor, prompts: Prompts,
                  names: list[str]) -> dict[str, torch.Tensor]:
    """eps(z) under each named prompt (un-shifted), without gradients, in one batched UNet call."""
    names = list(dict.fromkeys(names))
    with torch.no_grad():
        eps = caller.eps(z, sigma, [getattr(prompts, n) for n in names])
    return dict(zip(names, eps))


def target_from(eps: dict[str, torch.Tensor], direction: str, guidance: float, away_base: str) -> torch.Tensor:
    """The training target: toward the target prompt with CFG (g = 1: its prediction as it is), or away from
    the concept (negative prompting: the base prompt's prediction pushed away from the concept's)."""
    if direction == "toward_target":
        return eps["other"] if guidance == 1.0 else cfg_mix(eps["other"], eps["uncond"], guidance)
    base = eps["uncond" if away_base == "uncond" else "neutral"]
    return cfg_mix(base, eps["other"], guidance)


class Objective:
    """One training objective. Subclasses set the class attributes and override what differs."""

    name: str = ""
    vector_method: str = ""          # the SteeringVector kind it produces (steering.vector_file)
    description: str = ""            # one line for the node's tooltip
    defaults: MethodDefaults
    needs_bottleneck: bool = True    # h-space: the UNet must have a middle block
    inits: tuple[str, ...] = ("normal",)

    # ----------------------------------------------------------------- tensors
    def init_params(self, generator: torch.Generator, *, text_shape: tuple[int, int] | None,
                    bottleneck_shape: tuple[int, int, int] | None, cfg: "TrainConfig") -> dict[str, torch.Tensor]:
        """Initial vector tensors (float32, CPU)."""
        raise NotImplementedError

    def phase_params(self) -> dict[str, tuple[str, ...]]:
        """Vector tensors each phase's optimizer updates."""
        raise NotImplementedError

    @property
    def phase_names(self) -> tuple[str, ...]:
        """The update phases of one step, in order (the loss history's keys)."""
        return tuple(self.phase_params())

    def phase_learning_rate(self, phase: str, cfg: "TrainConfig") -> float:
        return cfg.learning_rate

    def validate(self, cfg: "TrainConfig") -> list[str]:
        """Problems with settings this objective does not support (empty: fine)."""
        if cfg.init not in self.inits:
            return [f"init {cfg.init!r} is not offered for {self.name}; expected one of {list(self.inits)}"]
        return []

    # ----------------------------------------------------------------- rollouts and losses
    def rollout_shift(self, params: dict[str, torch.Tensor], cfg: "TrainConfig") -> dict:
        """What a rollout adds to the conditional (neutral) prompt: ``offset`` (bottleneck) and / or
        ``text_shift`` (prompt embedding); the rollout detaches them."""
        return {}

    def phases(self, caller: UNetCaller, z: torch.Tensor, sigma: torch.Tensor, prompts: Prompts,
               params: dict[str, torch.Tensor], cfg: "TrainConfig") -> list[Phase]:
        """The update phases at the fixed batch (z, sigma)."""
        raise NotImplementedError

    def on_policy_step(self, caller: UNetCaller, x: torch.Tensor, sigma: torch.Tensor, prompts: Prompts,
                       params: dict[str, torch.Tensor], cfg: "TrainConfig"
                       ) -> tuple[list[Phase], Callable[[], torch.Tensor]]:
        """The phases at the trajectory's latents x, and a function giving the guided eps that advances x
        (the vector as it was before this step's updates; called after the phases ran). Generic version:
        one extra no-grad CFG call with the rollout shift."""
        eps = guided_eps(caller, x, sigma, prompts.neutral, prompts.uncond, cfg.rollout_guidance,
                         **self.rollout_shift(params, cfg))
        eps = eps.detach()
        return self.phases(caller, x, sigma, prompts, params, cfg), lambda: eps


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add an objective to the registry (the node's method list and the loop read it)."""
    if not objective.name:
        raise ObjectiveError("an objective needs a name")
    OBJECTIVES[objective.name] = objective
    return objective


def unregister_objective(name: str) -> None:
    OBJECTIVES.pop(name, None)


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ObjectiveError(f"method {name!r}; expected one of {list(OBJECTIVES)}") from None


def _normal(generator, shape, std):
    return std * torch.randn(*shape, generator=generator)


class EmbeddingDirection(Objective):
    name = "embedding_direction"
    vector_method = "embedding_direction"
    description = "low-rank d = B A added to the prompt embedding (arXiv 2505.15427)"
    # Reference train_ptuner.py: Adam 0.06, CFG 7.5, loss 10 * MSE, LMSDiscreteScheduler with 50 steps (its grid
    # is ComfyUI's "normal"), updates at steps 10..50 counted from 1 (0-based 9..49), on-policy.
    defaults = MethodDefaults(learning_rate=0.06, rollout_guidance=7.5, toward_guidance=7.5, away_guidance=7.5,
                              t_start=0.18, t_end=1.0, loss_scale=10.0, away_base="uncond",
                              schedule="on_policy", scheduler="normal", sampler="lms", init="b_zero")
    needs_bottleneck = False
    inits = ("b_zero",)

    def init_params(self, generator, *, text_shape, bottleneck_shape, cfg):
        """B = 0 and A ~ N(0, 1) (reference ptuner)."""
        tokens, width = text_shape
        return {"direction_b": torch.zeros(tokens, cfg.rank),
                "direction_a": torch.randn(cfg.rank, width, generator=generator)}

    def phase_params(self):
        return {"loss": ("direction_b", "direction_a")}

    def rollout_shift(self, params, cfg):
        """The random-timestep rollout applies no direction (the option kept from earlier versions)."""
        return {}

    def _loss(self, caller, z, sigma, prompts, params, target, cfg, keep=None):
        def loss():
            d = params["direction_b"] @ params["direction_a"]
            eps = caller.eps(z, sigma, [prompts.neutral], text_shift=d)[0]
            if keep is not None:
                keep["cond"] = eps.detach()
            return cfg.loss_scale * F.mse_loss(eps, target)
        return loss

    def phases(self, caller, z, sigma, prompts, params, cfg):
        eps = reference_eps(caller, z, sigma, prompts, target_needs(cfg.direction, cfg.target_guidance,
                                                                     cfg.away_base))
        target = target_from(eps, cfg.direction, cfg.target_guidance, cfg.away_base)
        return [Phase("loss", ("direction_b", "direction_a"), self._loss(caller, z, sigma, prompts, params, target,
                                                                        cfg))]

    def on_policy_step(self, caller, x, sigma, prompts, params, cfg):
        """As the reference: the loss's forward pass (shifted neutral prompt, before the update) is also the
        conditional half of the CFG prediction that advances the latents (detached)."""
        names = target_needs(cfg.direction, cfg.target_guidance, cfg.away_base)
        eps = reference_eps(caller, x, sigma, prompts, names + ([] if cfg.rollout_guidance == 1.0 else ["uncond"]))
        target = target_from(eps, cfg.direction, cfg.target_guidance, cfg.away_base)
        keep: dict[str, torch.Tensor] = {}
        phase = Phase("loss", ("direction_b", "direction_a"),
                      self._loss(caller, x, sigma, prompts, params, target, cfg, keep))

        def advance():
            guidance = cfg.rollout_guidance
            return keep["cond"] if guidance == 1.0 else cfg_mix(keep["cond"], eps["uncond"], guidance)

        return [phase], advance


class HSpaceObjective(Objective):
    """Shared by the bottleneck methods: tensors of the bottleneck's shape."""

    roles: tuple[str, ...] = ()

    def init_params(self, generator, *, text_shape, bottleneck_shape, cfg):
        if cfg.init == "nn_linear_default":
            return {r: respodiff.linear_default_init(generator, bottleneck_shape) for r in self.roles}
        return {r: _normal(generator, bottleneck_shape, cfg.init_std) for r in self.roles}


class CodsmaCVector(HSpaceObjective):
    name = "codsma_cvector"
    vector_method = "hspace_cvector"
    description = "one c-vector added to the UNet bottleneck (CoDSMa)"
    # Paper eq. 5 (target score without guidance); negative prompting for safety.
    defaults = MethodDefaults(learning_rate=0.1, rollout_guidance=3.0, toward_guidance=1.0, away_guidance=7.5,
                              t_start=0.0, t_end=0.98, loss_scale=1.0, away_base="neutral",
                              schedule="random_timesteps", scheduler="ddim_uniform", sampler="euler",
                              init="normal")
    roles = ("c",)

    def phase_params(self):
        return {"loss": ("c",)}

    def rollout_shift(self, params, cfg):
        return {"offset": params["c"]}

    def phases(self, caller, z, sigma, prompts, params, cfg):
        eps = reference_eps(caller, z, sigma, prompts, target_needs(cfg.direction, cfg.target_guidance,
                                                                     cfg.away_base))
        target = target_from(eps, cfg.direction, cfg.target_guidance, cfg.away_base)

        def loss():
            out = caller.eps(z, sigma, [prompts.neutral], offset=params["c"])[0]
            return codsma.score_matching_loss(out, target, cfg.loss_scale)

        return [Phase("loss", ("c",), loss)]


class RespoDiffRamSam(HSpaceObjective):
    name = "respodiff_ram_sam"
    vector_method = "respodiff_ram_sam"
    description = "responsibility (RAM) + semantic (SAM) bottleneck vectors trained alternately (RespoDiff)"
    # Reference: Adam lr 0.1, rollout CFG 3, target guidance 4 (12 for safety), t in [0, 49) of 50 DDIM steps,
    # random (prompt, t) batches, RAM + SAM in the rollout, nn.Linear default init.
    defaults = MethodDefaults(learning_rate=0.1, rollout_guidance=3.0, toward_guidance=4.0, away_guidance=12.0,
                              t_start=0.0, t_end=0.98, loss_scale=1.0, away_base="neutral",
                              schedule="random_timesteps", scheduler="ddim_uniform", sampler="euler",
                              init="nn_linear_default")
    inits = INITS
    roles = ("ram", "sam")

    def phase_params(self):
        return {"ram": ("ram",), "sam": ("sam",)}

    def phase_learning_rate(self, phase, cfg):
        return cfg.learning_rate * (cfg.sam_lr_scale if phase == "sam" else 1.0)

    def validate(self, cfg):
        problems = super().validate(cfg)
        if cfg.respodiff_rollout not in RESPODIFF_ROLLOUTS:
            problems.append(f"respodiff_rollout {cfg.respodiff_rollout!r}; expected one of {list(RESPODIFF_ROLLOUTS)}")
        return problems

    def rollout_shift(self, params, cfg):
        """Reference pipeline: RAM + SAM on the conditional half (``ram_sam``); ``ram_only``: RAM alone."""
        if cfg.respodiff_rollout == "ram_only":
            return {"offset": params["ram"]}
        return {"offset": respodiff.offset(params["ram"].detach(), params["sam"].detach())}

    def phases(self, caller, z, sigma, prompts, params, cfg):
        names = target_needs(cfg.direction, cfg.target_guidance, cfg.away_base) + ["neutral"]
        eps = reference_eps(caller, z, sigma, prompts, names)
        target = target_from(eps, cfg.direction, cfg.target_guidance, cfg.away_base)
        neutral = eps["neutral"]

        def resp():
            out = caller.eps(z, sigma, [prompts.neutral], offset=params["ram"])[0]
            return respodiff.responsibility_loss(out, target, cfg.loss_scale)

        def sem():
            shifted = respodiff.offset(params["ram"].detach(), params["sam"])
            out = caller.eps(z, sigma, [prompts.neutral], offset=shifted)[0]
            return respodiff.semantic_loss(out, neutral, cfg.lambda_sem)

        return [Phase("ram", ("ram",), resp), Phase("sam", ("sam",), sem)]


for _objective in (EmbeddingDirection(), CodsmaCVector(), RespoDiffRamSam()):
    register_objective(_objective)
