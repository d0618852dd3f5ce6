"""STG - Safe Text-embedding Guidance (NeurIPS 2025, arXiv 2510.24012).

Training-free: inside the sampling loop, on the model evaluations of a window of the
schedule, the prompt embedding ``c`` of every image whose safety score is above the
score's threshold (tau) is moved against the gradient of the score:

1. conditional prediction with ``c`` as a leaf that requires grad (unconditional one
   without grad), combined with CFG into the denoised (Tweedie) estimate ``x0`` - the
   sampler's own denoised output, so it is right for every ComfyUI sampler/scheduler;
2. differentiable decode of ``x0`` (the checkpoint's VAE, or TAESD) into images 0..1;
3. score ``s(image)`` (+ ``prior_weight * mean((c0 - c)^2)``); ``g = ds/dc``;
4. ``c <- c - rho * g / ||g||`` per image (Frobenius norm over tokens x width), only
   for images flagged unsafe; the step is recomputed with the new ``c``;
5. the new ``c`` persists to later steps (``rebase``: every update starts again from
   the original embedding instead of the last updated one).

An update ratio gamma < 1 updates on an evenly spaced fraction of the window's model
evaluations. SDXL: the cross-attention context is always guided; the pooled vector
(the first 1280 entries of the ADM vector ``y``) optionally as well.

Gradients inside ComfyUI: the loaded UNet/VAE weights are inference tensors. During
the gradient pass they are swapped for normal views of the same storage
(steering.autograd_views): no weight is copied, so the extra memory is only the
activations of one backward pass.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

import comfy.conds
import comfy.model_management
import comfy.samplers

from .architectures import ARCHITECTURES, ArchitectureError, architecture_of_model
from .autograd_views import autograd_views, grad_input
from .safety.base import SafetyScore, ScoreResult

AUTOCAST_MODES = ("none", "fp16", "bf16")
DECODERS = ("vae", "taesd")
# README of the reference code: update steps 5..45 of 50.
DEFAULT_START, DEFAULT_END = 0.1, 0.9


@dataclass
class STGSettings:
    rho: float = 0.5
    start_percent: float = DEFAULT_START
    end_percent: float = DEFAULT_END
    update_ratio: float = 1.0
    prior_weight: float = 0.0
    rebase: bool = False
    guide_pooled: bool = False
    autocast: str = "none"

    def check(self) -> None:
        if not (0.0 <= self.start_percent <= self.end_percent <= 1.0):
            raise ValueError(f"the STG window must satisfy 0 <= start ({self.start_percent}) <= end "
                             f"({self.end_percent}) <= 1")
        if not 0.0 <= self.update_ratio <= 1.0:
            raise ValueError(f"update_ratio must lie in [0, 1]; got {self.update_ratio}")
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast {self.autocast!r}; expected one of {AUTOCAST_MODES}")
        if self.rho < 0:
            raise ValueError(f"rho must be >= 0; got {self.rho}")


@dataclass
class StepRecord:
    """One model evaluation of a sampling run, as STG saw it."""
    sigma: float
    in_window: bool
    guided: bool                                        # a gradient pass was made
    scores: list[float] = field(default_factory=list)   # before the update
    updated: list[bool] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------- differentiable decoders

class VAEDecoder:
    """Decode with the checkpoint's VAE first-stage model directly (VAE.decode is not autograd-friendly)."""

    def __init__(self, vae):
        self.vae = vae

    def modules(self):
        return [self.vae.first_stage_model]

    def patchers(self):
        return [self.vae.patcher]

    def __call__(self, x0: torch.Tensor, base_model) -> torch.Tensor:
        latent = base_model.process_latent_out(x0)
        device = self.vae.device
        out = self.vae.first_stage_model.decode(latent.to(device=device, dtype=self.vae.vae_dtype))
        return ((out.to(x0.device).float() + 1.0) / 2.0).clamp(0.0, 1.0)


class TAESDDecoder:
    """TAESD's decoder (from ComfyUI's vae_approx folder) applied to the model-space latent."""

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder

    def modules(self):
        return [self.decoder]

    def patchers(self):
        return []

    def __call__(self, x0: torch.Tensor, base_model) -> torch.Tensor:
        param = next(self.decoder.parameters())
        if param.device != x0.device:
            with torch.inference_mode(False):
                self.decoder.to(x0.device)
        # TAESD decodes (raw - shift) * scale, which is the model-space latent x0 for SD1.x/SDXL.
        return self.decoder(x0.to(param.dtype)).float().clamp(0.0, 1.0)


TAESD_FILES = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}
_taesd_cache: dict[str, torch.nn.Module] = {}


def load_taesd_decoder(arch: str) -> TAESDDecoder:
    """TAESD decoder for the architecture from the vae_approx folder (clear error if absent)."""
    import folder_paths
    import comfy.taesd.taesd
    import comfy.utils

    stem = TAESD_FILES.get(arch)
    if stem is None:
        raise ArchitectureError(f"no TAESD decoder for {arch}; expected one of {sorted(TAESD_FILES)}")
    names = [n for n in folder_paths.get_filename_list("vae_approx") if n.startswith(stem + ".")]
    if not names:
        raise FileNotFoundError(
            f"TAESD decoder {stem}.safetensors (or .pth) not found in the vae_approx folders "
            f"{folder_paths.get_folder_paths('vae_approx')}; put it there or use decoder = vae")
    path = folder_paths.get_full_path_or_raise("vae_approx", names[0])
    if path not in _taesd_cache:
        with torch.inference_mode(False):
            decoder = comfy.taesd.taesd.Decoder()
            decoder.load_state_dict(comfy.utils.load_torch_file(path, safe_load=True))
            decoder.eval().requires_grad_(False)
        _taesd_cache[path] = decoder
    return TAESDDecoder(_taesd_cache[path])


# ---------------------------------------------------------------------------- the guider

def _autocast(device: torch.device, mode: str):
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16)


class STGGuider(comfy.samplers.CFGGuider):
    """CFG guider that applies STG; use with SamplerCustomAdvanced or :func:`sample_stg`."""

    def __init__(self, model_patcher, decoder, score: SafetyScore, settings: STGSettings):
        settings.check()
        model_patcher = model_patcher.clone()
        if decoder.patchers():
            model_patcher.set_additional_models("rs_stg_decoder", decoder.patchers())
        super().__init__(model_patcher)
        self.decoder = decoder
        self.score = score
        self.settings = settings
        self.pooled_width = None
        if settings.guide_pooled:
            arch = architecture_of_model(model_patcher)
            self.pooled_width = ARCHITECTURES[arch].pooled_width
            if self.pooled_width is None:
                raise ArchitectureError(f"guide_pooled needs a model with a pooled text vector (SDXL); "
                                        f"this model is {ARCHITECTURES[arch].label}")
        self.records: list[StepRecord] = []
        self._reset()

    def _reset(self) -> None:
        self._embeds: list[torch.Tensor] | None = None     # current per-image embeddings, per positive entry
        self._originals: list[torch.Tensor] | None = None
        self._window_calls = 0
        self._changed = False

    # -- run bookkeeping
    def inner_sample(self, noise, latent_image, device, sampler, sigmas, *args, **kwargs):
        self._reset()
        self.records = []
        sampling = self.inner_model.model_sampling
        self._sigma_hi = float(sampling.percent_to_sigma(self.settings.start_percent))
        self._sigma_lo = float(sampling.percent_to_sigma(self.settings.end_percent))
        return super().inner_sample(noise, latent_image, device, sampler, sigmas, *args, **kwargs)

    def report(self) -> str:
        """Human-readable summary of the last run."""
        guided = [r for r in self.records if r.guided]
        lines = [f"STG: {len(guided)} of {len(self.records)} model evaluations guided "
                 f"(rho {self.settings.rho:g}, window {self.settings.start_percent:g}-"
                 f"{self.settings.end_percent:g}, update ratio {self.settings.update_ratio:g}); "
                 f"score: {self.score.describe()}"]
        for r in guided:
            scores = ", ".join(f"{s:.4g}{'*' if u else ''}" for s, u in zip(r.scores, r.updated))
            lines.append(f"sigma {r.sigma:.4g}: scores [{scores}] (* = updated)")
        if self._embeds is not None:
            drift = [float((e - o).flatten(1).norm(dim=1).max()) for e, o in zip(self._embeds, self._originals)]
            lines.append(f"largest embedding change per image: {max(drift):.4g}")
        return "\n".join(lines)

    # -- embeddings
    def _positive_entries(self) -> list[dict]:
        positive = self.conds.get("positive") or []
        entries = [p for p in positive if "c_crossattn" in p.get("model_conds", {})]
        if not entries:
            raise ArchitectureError("STG needs a cross-attention text conditioning (c_crossattn) in the positive "
                                    "input; this model/conditioning has none")
        return positive

    def _init_embeddings(self, batch: int) -> None:
        embeds = []
        for entry in self._positive_entries():
            mc = entry.get("model_conds", {})
            if "c_crossattn" not in mc:
                continue
            cond = mc["c_crossattn"].cond
            parts = [cond]
            if self.pooled_width is not None:
                if "y" not in mc:
                    raise ArchitectureError("guide_pooled: the conditioning has no pooled vector (y)")
                parts.append(mc["y"].cond)
            per_image = []
            for part in parts:
                with torch.inference_mode(False):
                    t = part.detach().clone()
                if t.shape[0] != batch:
                    t = t[:batch] if t.shape[0] > batch else t.repeat(math.ceil(batch / t.shape[0]), *[1] * (
                        t.ndim - 1))[:batch]
                per_image.append(t)
            embeds.append(per_image)
        self._embeds = [e[0] for e in embeds]
        self._pooled = [e[1] for e in embeds] if self.pooled_width is not None else None
        self._originals = [e.clone() for e in self._embeds]
        self._pooled_originals = [p.clone() for p in self._pooled] if self._pooled is not None else None

    def _positive_with(self, embeds: list[torch.Tensor], pooled: list[torch.Tensor] | None) -> list[dict]:
        out, k = [], 0
        for entry in self._positive_entries():
            mc = entry.get("model_conds", {})
            if "c_crossattn" not in mc:
                out.append(entry)
                continue
            entry = entry.copy()
            mc = dict(mc)
            mc["c_crossattn"] = comfy.conds.CONDCrossAttn(embeds[k])
            if pooled is not None:
                mc["y"] = comfy.conds.CONDRegular(pooled[k])
            entry["model_conds"] = mc
            out.append(entry)
            k += 1
        return out

    def _in_window(self, sigma: float) -> bool:
        return self._sigma_lo <= sigma <= self._sigma_hi

    def _take_update(self) -> bool:
        n, ratio = self._window_calls, self.settings.update_ratio
        self._window_calls += 1
        return math.floor((n + 1) * ratio + 1e-9) > math.floor(n * ratio + 1e-9)

    # -- prediction
    def _uncond(self, cond_scale: float, model_options: dict):
        if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
            return None
        return self.conds.get("negative")

    def _combine(self, cond_pred, uncond_pred, positive, negative, x, timestep, model_options):
        out = [cond_pred, uncond_pred]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            args = {"conds": [positive, negative], "conds_out": out, "cond_scale": self.cfg, "timestep": timestep,
                    "input": x, "sigma": timestep, "model": self.inner_model, "model_options": model_options}
            out = fn(args)
        return comfy.samplers.cfg_function(self.inner_model, out[0], out[1], self.cfg, x, timestep,
                                           model_options=model_options, cond=positive, uncond=negative)

    def _predict_conds(self, positive, x, timestep, model_options):
        return comfy.samplers.calc_cond_batch(self.inner_model, [positive], x, timestep, model_options)[0]

    def guided_score(self, x, timestep, embeds, pooled, uncond_pred, negative, model_options):
        """Score of the decoded denoised estimate for the given embeddings (differentiable); also the
        conditional prediction and the denoised estimate."""
        positive = self._positive_with(embeds, pooled)
        cond_pred = self._predict_conds(positive, x, timestep, model_options)
        if uncond_pred is None:
            uncond_pred = torch.zeros_like(cond_pred)
        denoised = self._combine(cond_pred, uncond_pred, positive, negative, x, timestep, model_options)
        images = self.decoder(denoised, self.inner_model)
        score, unsafe = self.score.score_and_flags(images)
        return ScoreResult(score, unsafe), cond_pred, denoised

    def _grad_modules(self):
        modules = [self.inner_model, *self.decoder.modules(), *self.score.modules()]
        for patcher in getattr(self, "loaded_models", []) or []:
            module = getattr(patcher, "model", None)
            if isinstance(module, torch.nn.Module):
                modules.append(module)
        return modules

    def embedding_gradient(self, x, timestep, model_options, embeds=None, pooled=None):
        """(score result, gradients per embedding (and pooled), cond prediction, uncond prediction) at x."""
        s = self.settings
        negative = self._uncond(self.cfg, model_options)
        with torch.inference_mode(False):
            x_, t_ = grad_input(x), grad_input(timestep)
            with torch.no_grad():
                uncond_pred = None if negative is None else self._predict_conds(negative, x_, t_, model_options)
            base = [grad_input(e) for e in (embeds if embeds is not None else self._embeds)]
            leaves = [e.requires_grad_(True) for e in base]
            pooled_leaves = None
            if self.pooled_width is not None:
                src = pooled if pooled is not None else self._pooled
                pooled_leaves = []
                for y in src:
                    head = grad_input(y[:, :self.pooled_width]).requires_grad_(True)
                    pooled_leaves.append(head)
            with torch.enable_grad(), autograd_views(*self._grad_modules()), _autocast(x.device, s.autocast):
                full_pooled = None
                if pooled_leaves is not None:
                    src = pooled if pooled is not None else self._pooled
                    full_pooled = [torch.cat([h, grad_input(y[:, self.pooled_width:])], 1)
                                   for h, y in zip(pooled_leaves, src)]
                result, cond_pred, _ = self.guided_score(x_, t_, leaves, full_pooled, uncond_pred, negative,
                                                         model_options)
                total = result.score.float()
                if s.prior_weight:
                    for leaf, orig in zip(leaves, self._originals):
                        total = total + s.prior_weight * (orig.to(leaf) - leaf).pow(2).flatten(1).mean(1)
                variables = leaves + (pooled_leaves or [])
                mask = result.unsafe.to(total.device)
                if bool(mask.any()):
                    grads = torch.autograd.grad(total[mask].sum(), variables, allow_unused=True)
                    grads = [torch.zeros_like(v) if g is None else g.detach() for g, v in zip(grads, variables)]
                else:
                    grads = [torch.zeros_like(v) for v in variables]
        return result, grads, cond_pred.detach(), uncond_pred

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        s = self.settings
        if self._embeds is None or self._embeds[0].shape[0] != x.shape[0]:
            self._init_embeddings(x.shape[0])
        sigma = float(timestep.reshape(-1)[0])
        in_window = self._in_window(sigma)
        if not in_window or s.rho == 0 or not self._take_update():
            self.records.append(StepRecord(sigma, in_window, False))
            # until an update happened the conditioning is exactly the user's (no repeated copies)
            positive = self._positive_with(self._embeds, self._pooled) if self._changed else self.conds.get("positive")
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                    positive, self.cfg, model_options=model_options, seed=seed)
        comfy.model_management.throw_exception_if_processing_interrupted()
        result, grads, cond_pred, uncond_pred = self.embedding_gradient(x, timestep, model_options)
        n = len(self._embeds)
        unsafe = result.unsafe.to(x.device)
        record = StepRecord(sigma, True, True, [float(v) for v in result.score.detach()],
                            [bool(u) for u in unsafe], [])
        with torch.inference_mode(False):
            updated = torch.zeros_like(unsafe)
            norms_all = []
            targets = [(self._embeds, self._originals, grads[:n])]
            if self._pooled is not None:
                targets.append((self._pooled, self._pooled_originals, grads[n:]))
            for current, originals, gs in targets:
                for k, g in enumerate(gs):
                    norms = g.float().flatten(1).norm(dim=1)
                    norms_all.append(norms)
                    step_mask = unsafe & (norms > 0)
                    updated |= step_mask
                    unit = g.float() / norms.clamp_min(1e-30).view(-1, *[1] * (g.ndim - 1))
                    base = originals[k] if s.rebase else current[k]
                    if self._pooled is not None and current is self._pooled:
                        unit = torch.nn.functional.pad(unit, (0, base.shape[1] - unit.shape[1]))
                    new = (base.float() - s.rho * unit).to(base.dtype)
                    keep = step_mask.view(-1, *[1] * (g.ndim - 1))
                    current[k] = torch.where(keep, new, current[k])
            self._changed = self._changed or bool(updated.any())
            record.updated = [bool(u) for u in updated]
            record.grad_norms = [float(v) for v in torch.stack(norms_all).max(0).values] if norms_all else []
        self.records.append(record)
        negative = self._uncond(self.cfg, model_options)
        positive = self._positive_with(self._embeds, self._pooled)
        if bool(updated.any()):
            with torch.inference_mode(False), torch.no_grad():
                cond_pred = self._predict_conds(positive, grad_input(x), grad_input(timestep), model_options)
        if uncond_pred is None:
            uncond_pred = torch.zeros_like(cond_pred)
        return self._combine(cond_pred.to(x.dtype), uncond_pred.to(x.dtype), positive, negative, x, timestep,
                             model_options)


def make_guider(model, positive, negative, cfg: float, decoder, score: SafetyScore,
                settings: STGSettings) -> STGGuider:
    guider = STGGuider(model, decoder, score, settings)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def sample_stg(guider: STGGuider, latent: dict, seed: int, steps: int, sampler_name: str, scheduler: str,
               denoise: float = 1.0, callback=None, disable_pbar: bool = True) -> torch.Tensor:
    """What KSampler does (same noise, sigmas and sampler), with the STG guider."""
    import comfy.sample

    model = guider.model_patcher
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    ksampler = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                       scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    samples = guider.sample(noise, latent_image, comfy.samplers.sampler_object(sampler_name), ksampler.sigmas,
                            denoise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=disable_pbar,
                            seed=seed)
    return samples.to(comfy.model_management.intermediate_device())
