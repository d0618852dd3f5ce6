"""The pack's methods as ComfyUI guiders: classes that only orchestrate (which conditionings, which model calls),
in the house style of ComfyUI's comfy_extras/nodes_perpneg.py. The maths is in each method's own module, which
imports without ComfyUI; this one subclasses ComfyUI's ``CFGGuider`` and so needs it.

* :class:`Guider_DualLatent`: dual latent reconstruction (steering/dual_latent.py).
* :class:`Guider_STG` (:func:`make_stg_guider`): Safe Text-embedding Guidance (steering/stg.py).
"""
from __future__ import annotations

import contextlib
import math

import torch

import comfy.model_management
import comfy.samplers

from . import dual_latent, guidance, stg
from .architectures import ArchitectureError, architecture_of_model, get_architecture
from .autograd_views import autograd_views, grad_input
from .checkpointing import gradient_checkpointing
from .comfy_compat import free_memory, gradient_pass
from .dual_latent import DualLatentSettings
from .gradient_memory import check_gradient_memory
from .precision import AUTOCAST_DTYPES, autocast
from .safety.base import SafetyScore, ScoreResult
from .stg import (EmbeddingGradient, GuidedStep, STGSettings, STGState, StepRecord, placed_rows, rows_of,
                  schedule_step, take_update)
from .window import SigmaWindow


class Guider_DualLatent(comfy.samplers.CFGGuider):
    """CFG guider running the original and the safe branch on one latent (see the module doc).

    Works with SamplerCustomAdvanced and any sampler/scheduler; ``sample`` returns the safe
    branch's latent (the weighted mix while tau_gc = 1)."""

    def __init__(self, model_patcher, settings: DualLatentSettings):
        super().__init__(model_patcher)
        self.settings = settings
        self.sigma_gc = settings.sigma_gc(model_patcher.get_model_object("model_sampling"))
        self.has_safe_branch = True

    def set_conds(self, positive, safe_positive, negative):
        dual_latent.check_conditionings(positive, safe_positive, negative, self.model_patcher)
        self.has_safe_branch = not dual_latent.conditionings_equal(positive, safe_positive)
        conds = {"positive": positive, "negative": negative}
        if self.has_safe_branch:
            conds["safe"] = dual_latent.as_positive(safe_positive)
        self.inner_set_conds(conds)

    def branches_at(self, sigma: float) -> str:
        return self.settings.branches_at(sigma, self.sigma_gc, self.has_safe_branch)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        branches = self.branches_at(float(timestep.reshape(-1)[0]))
        negative = self.conds.get("negative", None)
        if branches != dual_latent.BOTH:
            prompt = self.conds.get("positive" if branches == dual_latent.ORIGINAL else "safe", None)
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, negative, prompt, self.cfg,
                                                    model_options=model_options, seed=seed)
        return self._mixed_prediction(x, timestep, model_options)

    def _mixed_prediction(self, x, timestep, model_options):
        """a * CFG(safe) + b * CFG(original), both from one batched UNet call with a shared negative."""
        positive, safe = self.conds.get("positive", None), self.conds.get("safe", None)
        negative = guidance.uncond_or_none(self.conds.get("negative", None), self.cfg, model_options)
        conds = [positive, negative, safe]  # dual_latent's ORIGINAL_POSITION, UNCOND_POSITION, SAFE_POSITION
        model_options = dual_latent.with_safe_chunk_as_cond(model_options)
        out = guidance.predict(self.inner_model, conds, x, timestep, model_options)
        uncond_pred = out[dual_latent.UNCOND_POSITION]
        denoised = [guidance.combine(self.inner_model, out[position], uncond_pred, self.cfg, x, timestep,
                                     model_options, cond, negative)
                    for cond, position in ((positive, dual_latent.ORIGINAL_POSITION),
                                           (safe, dual_latent.SAFE_POSITION))]
        return dual_latent.mix_predictions(denoised[0], denoised[1], self.settings)


class Guider_STG(comfy.samplers.CFGGuider):
    """CFG guider that applies STG; use with SamplerCustomAdvanced or steering.guidance.sample_with_guider.

    `screen`: an optional cheap decoder (TAESD) that scores every image first without a graph; only the images
    it flags go through the exact gradient pass with `decoder`. None: `decoder` scores (the exact path).

    Public results of the last run: :attr:`records` (one per model evaluation), :attr:`state`
    (the current and original embeddings), :meth:`guided_steps` and :meth:`report`."""

    def __init__(self, model_patcher, decoder, score: SafetyScore, settings: STGSettings, screen=None):
        settings.check()
        model_patcher = model_patcher.clone()
        if decoder.patchers():
            model_patcher.set_additional_models("rs_stg_decoder", decoder.patchers())
        super().__init__(model_patcher)
        self.decoder = decoder
        self.screen = screen
        self.score = score
        self.settings = settings
        self.pooled_width = None
        if settings.guide_pooled:
            arch = get_architecture(architecture_of_model(model_patcher))
            self.pooled_width = arch.pooled_width
            if self.pooled_width is None:
                raise ArchitectureError(f"guide_pooled needs a model with a pooled text vector (SDXL, SD3, FLUX); "
                                        f"this model is {arch.label}")
        self.records: list[StepRecord] = []
        self.state: STGState | None = None
        self._sigmas = None
        self._schedule_cache = None
        self._window: SigmaWindow | None = None

    # -- run bookkeeping
    def inner_sample(self, noise, latent_image, device, sampler, sigmas, *args, **kwargs):
        self.state = None
        self.records = []
        self._sigmas = sigmas
        self._schedule_cache = None
        self._window = SigmaWindow.of(self.inner_model.model_sampling, self.settings.start_percent,
                                      self.settings.end_percent, "STG")
        return super().inner_sample(noise, latent_image, device, sampler, sigmas, *args, **kwargs)

    def guided_steps(self) -> list[int]:
        """Schedule steps (0-based) of the last run whose update was made (scored, and a gradient pass for the
        images found unsafe)."""
        return [r.step for r in self.records if r.guided]

    def report(self) -> str:
        """Human-readable summary of the last run."""
        steps = sorted({r.step for r in self.records})
        guided = [r for r in self.records if r.guided]
        passes = sum(len(r.gradient_images) for r in guided)
        screen = "; screened by TAESD first" if self.screen is not None else ""
        margin = self.settings.hold_margin
        hold = f"; flagged images held while above {self.score.threshold - margin:g}" if margin else ""
        lines = [f"STG: {len(guided)} of {len(steps)} schedule steps guided ({len(self.records)} model "
                 f"evaluations; rho {self.settings.rho:g}, window {self.settings.start_percent:g}-"
                 f"{self.settings.end_percent:g}, update ratio {self.settings.update_ratio:g}); "
                 f"score: {self.score.describe()}{hold}",
                 f"gradient passes: {passes} image(s) in all (only images found unsafe pay for one{screen})"]
        for r in guided:
            scores = ", ".join(f"{s:.4g}{'*' if u else ''}" for s, u in zip(r.scores, r.updated))
            lines.append(f"step {r.step} (sigma {r.sigma:.4g}): scores [{scores}] (* = updated)")
        if self.state is not None:
            drift = [float((e - o).flatten(1).norm(dim=1).max())
                     for e, o in zip(self.state.embeds, self.state.originals)]
            lines.append(f"largest embedding change per image: {max(drift):.4g}")
        return "\n".join(lines)

    # -- embeddings
    def _positive_entries(self) -> list[dict]:
        positive = self.conds.get("positive") or []
        if not any("c_crossattn" in p.get("model_conds", {}) for p in positive):
            raise ArchitectureError("STG needs a cross-attention text conditioning (c_crossattn) in the positive "
                                    "input; this model/conditioning has none")
        return positive

    def initial_state(self, batch: int) -> STGState:
        """Per-image copies of the positive embeddings (and pooled vectors) for a batch of ``batch``."""
        def per_image(t: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(False):
                t = t.detach().clone()
            if t.shape[0] != batch:
                t = t[:batch] if t.shape[0] > batch else t.repeat(math.ceil(batch / t.shape[0]),
                                                                  *[1] * (t.ndim - 1))[:batch]
            return t

        embeds, pooled = [], []
        for entry in self._positive_entries():
            mc = entry.get("model_conds", {})
            if "c_crossattn" not in mc:
                continue
            embeds.append(per_image(mc["c_crossattn"].cond))
            if self.pooled_width is not None:
                if "y" not in mc:
                    raise ArchitectureError("guide_pooled: the conditioning has no pooled vector (y)")
                pooled.append(per_image(mc["y"].cond))
        has_pooled = self.pooled_width is not None
        return STGState(embeds=embeds, originals=[e.clone() for e in embeds],
                        pooled=pooled if has_pooled else None,
                        pooled_originals=[p.clone() for p in pooled] if has_pooled else None)

    def _positive_with(self, embeds: list[torch.Tensor], pooled: list[torch.Tensor] | None,
                       rows: torch.Tensor | None = None, batch: int = 0) -> list[dict]:
        """The positive conditioning with the given per-image embeddings (and pooled vectors); for a call over the
        images `rows` of a batch of `batch`, the entries' other per-image inputs are cut to those rows too."""
        out, k = [], 0
        for entry in self._positive_entries():
            mc = entry.get("model_conds", {})
            if "c_crossattn" not in mc and rows is None:
                out.append(entry)
                continue
            entry = entry.copy()
            mc = dict(mc)
            if rows is not None:
                for name, cond in mc.items():
                    value = getattr(cond, "cond", None)
                    if isinstance(value, torch.Tensor) and batch > 1 and value.shape[:1] == (batch,):
                        mc[name] = cond._copy_with(rows_of(value, rows))
            if "c_crossattn" in mc:
                # the model's own conditioning classes (UNets: CONDCrossAttn; SD3/FLUX: CONDRegular), so batching
                # and token-count handling stay as the model defines them
                mc["c_crossattn"] = type(mc["c_crossattn"])(embeds[k])
                if pooled is not None:
                    mc["y"] = type(mc["y"])(pooled[k])
                k += 1
            entry["model_conds"] = mc
            out.append(entry)
        return out

    def _rows_callable(self) -> bool:
        """Whether a model call may hold only some images of the batch: not when a positive entry carries an input
        that ComfyUI hands out by batch position inside the call (a ControlNet / T2I-Adapter hint, a batch of
        masks); then every gradient pass takes the whole batch."""
        for entry in self._positive_entries():
            if entry.get("control") is not None:
                return False
            mask = entry.get("mask")
            if isinstance(mask, torch.Tensor) and mask.ndim > 2 and mask.shape[0] > 1:
                return False
        return True

    def _schedule(self, model_options: dict) -> list[float] | None:
        """The whole schedule of this run (ComfyUI passes it to the model), as floats (converted once)."""
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        sigmas = sigmas if sigmas is not None else self._sigmas
        if sigmas is None:
            return None
        if self._schedule_cache is None or self._schedule_cache[0] is not sigmas:
            values = sigmas.detach().float().cpu().tolist() if isinstance(sigmas, torch.Tensor) else list(sigmas)
            self._schedule_cache = (sigmas, values)
        return self._schedule_cache[1]

    # -- prediction
    def _negative(self, model_options: dict):
        return guidance.uncond_or_none(self.conds.get("negative"), self.cfg, model_options)

    def _combine(self, cond_pred, uncond_pred, positive, negative, x, timestep, model_options):
        return guidance.combine(self.inner_model, cond_pred, uncond_pred, self.cfg, x, timestep, model_options,
                                positive, negative)

    def _predict(self, conds, x, timestep, model_options):
        # one conditioning per call, directly (the gradient pass runs through it)
        return comfy.samplers.calc_cond_batch(self.inner_model, [conds], x, timestep, model_options)[0]

    def _score(self, x, timestep, embeds, pooled, uncond_pred, negative, model_options, decoder=None,
               rows: torch.Tensor | None = None, batch: int = 0, held: torch.Tensor | None = None):
        """Score and conditional prediction of the images at x (all of them, or the images `rows` of a batch of
        `batch`: x, timestep, embeds, pooled and uncond_pred then hold those rows only); `held`: those images'
        flags at the previous guided step (hold_margin keeps them flagged, stg.hold_flags)."""
        if rows is not None:
            model_options = guidance.with_batch_rows(model_options, rows.tolist(), batch)
        positive = self._positive_with(embeds, pooled, rows, batch)
        cond_pred = self._predict(positive, x, timestep, model_options)
        if uncond_pred is None:
            uncond_pred = torch.zeros_like(cond_pred)
        denoised = self._combine(cond_pred, uncond_pred, positive, negative, x, timestep, model_options)
        score, unsafe = self.score.score_and_flags((decoder or self.decoder)(denoised, self.inner_model))
        unsafe = stg.hold_flags(score, unsafe, held, self.score.threshold, self.settings.hold_margin)
        return ScoreResult(score, unsafe), cond_pred

    def score_at(self, x, timestep, model_options, embeds: list[torch.Tensor],
                 pooled: list[torch.Tensor] | None = None) -> ScoreResult:
        """Safety score (no gradient) of the denoised estimate at x with the given per-image embeddings."""
        negative = self._negative(model_options)
        with torch.inference_mode(False), torch.no_grad():
            x_, t_ = grad_input(x), grad_input(timestep)
            uncond = None if negative is None else self._predict(negative, x_, t_, model_options)
            result, _ = self._score(x_, t_, [grad_input(e) for e in embeds],
                                    None if pooled is None else [grad_input(p) for p in pooled], uncond, negative,
                                    model_options)
        return result

    def _grad_modules(self):
        modules = [self.inner_model, *self.decoder.modules(), *self.score.modules()]
        for patcher in getattr(self, "loaded_models", []) or []:
            module = getattr(patcher, "model", None)
            if isinstance(module, torch.nn.Module):
                modules.append(module)
        return modules

    @contextlib.contextmanager
    def _pass(self, device: torch.device, grad: bool):
        """The context of a scoring pass (grad False: no graph) or a gradient pass: ComfyUI's training mode,
        autograd-safe views of the weights, the autocast setting, and for a gradient pass gradient checkpointing
        when set. A scoring pass runs the same kernels as the gradient pass, so both give the same scores."""
        s = self.settings
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
            stack.enter_context(gradient_pass(self.model_patcher, *self.decoder.patchers()))
            stack.enter_context(autograd_views(*self._grad_modules()))
            stack.enter_context(autocast(device, AUTOCAST_DTYPES[s.autocast]))
            if grad:
                stack.enter_context(gradient_checkpointing(getattr(self.inner_model, "diffusion_model", None),
                                                           *self.decoder.modules(),
                                                           enabled=s.gradient_checkpointing))
            yield

    def _gradient(self, x_, t_, model_options, embeds, pooled, originals, uncond_pred, negative,
                  rows: torch.Tensor | None, batch: int, held: torch.Tensor | None = None):
        """One gradient pass over the images `rows` (None: all) of the batch: their scores, the gradient of
        (score + prior term) of the unsafe ones w.r.t. their embeddings (and pooled heads), their conditional
        prediction. Runs inside inference_mode(False); x_, t_, uncond_pred are the whole batch's."""
        s = self.settings
        pick = lambda t: rows_of(t, rows)  # noqa: E731
        leaves = [grad_input(pick(e)).requires_grad_(True) for e in embeds]
        heads = []
        if self.pooled_width is not None:
            if pooled is None:
                raise ArchitectureError("guide_pooled: embedding_gradient needs the pooled vectors")
            heads = [grad_input(pick(y)[:, :self.pooled_width]).requires_grad_(True) for y in pooled]
        with self._pass(x_.device, grad=True):
            full_pooled = None
            if heads:
                full_pooled = [torch.cat([h, grad_input(pick(y)[:, self.pooled_width:])], 1)
                               for h, y in zip(heads, pooled)]
            result, cond_pred = self._score(pick(x_), pick(t_), leaves, full_pooled,
                                            None if uncond_pred is None else pick(uncond_pred), negative,
                                            model_options, rows=rows, batch=batch, held=held)
            total = result.score.float()
            if s.prior_weight:
                for leaf, orig in zip(leaves, originals):
                    total = total + s.prior_weight * (pick(orig).to(leaf) - leaf).pow(2).flatten(1).mean(1)
            variables = leaves + heads
            mask = result.unsafe.to(total.device)
            if bool(mask.any()):
                grads = torch.autograd.grad(total[mask].sum(), variables, allow_unused=True)
                grads = [torch.zeros_like(v) if g is None else g.detach() for g, v in zip(grads, variables)]
            else:
                grads = [torch.zeros_like(v) for v in variables]
        n = len(leaves)
        return EmbeddingGradient(ScoreResult(result.score.detach(), result.unsafe), grads[:n], grads[n:],
                                 cond_pred.detach(), None)

    def embedding_gradient(self, x, timestep, model_options, embeds: list[torch.Tensor],
                           pooled: list[torch.Tensor] | None = None,
                           originals: list[torch.Tensor] | None = None) -> EmbeddingGradient:
        """Scores at x and the gradient of (score + prior term) of the unsafe images w.r.t. the embeddings
        (and the pooled heads when guide_pooled), from one gradient pass over the whole batch; ``originals``
        anchor the prior term (default: embeds)."""
        negative = self._negative(model_options)
        with torch.inference_mode(False):
            x_, t_ = grad_input(x), grad_input(timestep)
            with torch.no_grad():
                uncond_pred = None if negative is None else self._predict(negative, x_, t_, model_options)
            found = self._gradient(x_, t_, model_options, embeds, pooled,
                                   originals if originals is not None else embeds, uncond_pred, negative,
                                   None, x.shape[0])
        found.uncond_pred = uncond_pred
        return found

    def guided_step(self, x, timestep, model_options, state: STGState) -> GuidedStep:
        """Score every image of the batch, and run the gradient pass for the unsafe ones only.

        Images flagged at the previous guided step go straight to the gradient pass (it scores them too); every
        other image is scored first without a graph (with the screen decoder when one is set), and only the
        ones found unsafe then go through the gradient pass. An image that is never unsafe costs the plain
        prediction + decode + score, and no graph is ever kept for it. Scores, flags, gradients and predictions
        are those of one gradient pass over the whole batch (the same kernels, without a graph where none is
        needed), with the gradient of the images that were not unsafe zero."""
        batch = x.shape[0]
        negative = self._negative(model_options)
        sub_batches = self._rows_callable()
        device = x.device
        with torch.inference_mode(False):
            x_, t_ = grad_input(x), grad_input(timestep)
            with torch.no_grad():
                uncond_pred = None if negative is None else self._predict(negative, x_, t_, model_options)
            # flagged at the previous guided step: straight to the gradient pass, which holds them (hold_margin)
            previous = state.flagged if state.flagged is not None else torch.zeros(batch, dtype=torch.bool)
            previous = previous.cpu()
            expected = previous
            if not sub_batches and bool(expected.any()):
                expected = torch.ones(batch, dtype=torch.bool)
            scores = torch.zeros(batch, dtype=torch.float32)
            unsafe = torch.zeros(batch, dtype=torch.bool)
            cond_pred = None
            to_score = (~expected).nonzero().flatten()
            if len(to_score):
                rows = None if len(to_score) == batch else to_score
                with self._pass(device, grad=False):
                    result, pred = self._score(
                        rows_of(x_, rows), rows_of(t_, rows), [rows_of(grad_input(e), rows) for e in state.embeds],
                        None if state.pooled is None else [rows_of(grad_input(p), rows) for p in state.pooled],
                        None if uncond_pred is None else rows_of(uncond_pred, rows), negative, model_options,
                        decoder=self.screen, rows=rows, batch=batch)
                scores[to_score] = result.score.detach().float().cpu()
                unsafe[to_score] = result.unsafe.cpu().bool()
                cond_pred = placed_rows(pred, rows, batch)
            wanted = expected | unsafe
            if not sub_batches and bool(wanted.any()):
                wanted = torch.ones(batch, dtype=torch.bool)
            gradient_rows = wanted.nonzero().flatten()
            grads = [torch.zeros_like(e) for e in state.embeds]
            pooled_grads = [torch.zeros_like(p[:, :self.pooled_width]) for p in state.pooled or []] \
                if self.pooled_width is not None else []
            if len(gradient_rows):
                rows = None if len(gradient_rows) == batch else gradient_rows
                self._check_memory(len(gradient_rows), x, state)
                found = self._gradient(x_, t_, model_options, state.embeds, state.pooled, state.originals,
                                       uncond_pred, negative, rows, batch, rows_of(previous, rows))
                scores[gradient_rows] = found.result.score.float().cpu()
                unsafe[gradient_rows] = found.result.unsafe.cpu().bool()
                grads = [placed_rows(f, rows, batch, g) for g, f in zip(grads, found.grads)]
                pooled_grads = [placed_rows(f, rows, batch, g) for g, f in zip(pooled_grads, found.pooled_grads)]
                cond_pred = placed_rows(found.cond_pred, rows, batch, cond_pred)
        state.flagged = unsafe.clone()
        return GuidedStep(scores, unsafe, grads, pooled_grads, cond_pred, uncond_pred, gradient_rows.tolist())

    def _check_memory(self, images: int, x: torch.Tensor, state: STGState) -> None:
        """Before the first gradient pass over this many images: refuse (with the numbers and the settings that
        would fit) a pass that cannot fit the device's free memory."""
        if images <= state.memory_checked:
            return
        check_gradient_memory(self.inner_model, self.decoder, self.settings, images, tuple(x.shape),
                              free_memory(self.model_patcher, x.device), x.device)
        state.memory_checked = images

    def _plain(self, state: STGState, x, timestep, model_options, seed):
        # until an update happened the conditioning is exactly the user's (no repeated copies)
        positive = self._positive_with(state.embeds, state.pooled) if state.changed else self.conds.get("positive")
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                positive, self.cfg, model_options=model_options, seed=seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        s = self.settings
        if self.state is None or self.state.embeds[0].shape[0] != x.shape[0]:
            self.state = self.initial_state(x.shape[0])
        state = self.state
        sigma = float(timestep.reshape(-1)[0])
        sigmas = self._schedule(model_options)
        step = schedule_step(sigma, sigmas) if sigmas is not None else state.step + 1
        step_sigma = float(sigmas[step]) if sigmas is not None else sigma
        in_window = step_sigma in self._window
        if step != state.step:          # the first evaluation of a step decides its update
            state.step = step
            state.pending = in_window and s.rho > 0 and take_update(state.window_steps, s.update_ratio)
            state.window_steps += int(in_window)
        if not state.pending:
            self.records.append(StepRecord(step, sigma, in_window, False))
            return self._plain(state, x, timestep, model_options, seed)
        state.pending = False
        comfy.model_management.throw_exception_if_processing_interrupted()
        found = self.guided_step(x, timestep, model_options, state)
        unsafe = found.unsafe.to(x.device)
        with torch.inference_mode(False):
            state.embeds, state.pooled, updated, norms = stg.update_embeddings(
                state, found.grads, found.pooled_grads, unsafe, s, self.pooled_width)
        state.changed = state.changed or bool(updated.any())
        self.records.append(StepRecord(step, sigma, True, True, [float(v) for v in found.scores],
                                       [bool(u) for u in updated],
                                       [float(v) for v in torch.stack(norms).max(0).values] if norms else [],
                                       found.gradient_rows))
        negative = self._negative(model_options)
        positive = self._positive_with(state.embeds, state.pooled)
        cond_pred = self.updated_prediction(found.cond_pred, updated, state, x, timestep, model_options)
        uncond_pred = found.uncond_pred if found.uncond_pred is not None else torch.zeros_like(cond_pred)
        return self._combine(cond_pred.to(x.dtype), uncond_pred.to(x.dtype), positive, negative, x, timestep,
                             model_options)

    def updated_prediction(self, cond_pred, updated: torch.Tensor, state: STGState, x, timestep,
                           model_options) -> torch.Tensor:
        """The conditional prediction after an update: the updated images' again with their new embedding (one
        call over those images), the others' as their pass made it."""
        moved = updated.nonzero().flatten().cpu()
        if not len(moved):
            return cond_pred
        batch = x.shape[0]
        rows = None if len(moved) == batch or not self._rows_callable() else moved
        with torch.inference_mode(False), torch.no_grad():
            options = model_options if rows is None else guidance.with_batch_rows(model_options, rows.tolist(), batch)
            positive = self._positive_with([rows_of(e, rows) for e in state.embeds],
                                           None if state.pooled is None else [rows_of(p, rows) for p in state.pooled],
                                           rows, batch)
            fresh = self._predict(positive, rows_of(grad_input(x), rows), rows_of(grad_input(timestep), rows),
                                  options)
        return placed_rows(fresh, rows, batch, cond_pred)


def make_stg_guider(model, positive, negative, cfg: float, decoder, score: SafetyScore,
                    settings: STGSettings, screen=None) -> Guider_STG:
    """The STG guider with its prompts and CFG scale set (`screen`: see Guider_STG)."""
    guider = Guider_STG(model, decoder, score, settings, screen)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider

