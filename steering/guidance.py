"""Classifier-free guidance for guiders that make their own model calls, and KSampler with a guider.

A guider of this pack (STG, dual latent) replaces ComfyUI's ``CFGGuider.predict_noise`` but must
give what ComfyUI would give wherever it does not steer: the same model calls, the same hooks,
the same arithmetic. ComfyUI 0.3.75's ``comfy.samplers.sampling_function`` does, in order:

1. the CFG-1 shortcut: at ``cond_scale == 1`` (unless the model options set
   ``disable_cfg1_optimization``) the unconditional prediction is skipped (:func:`uncond_or_none`);
2. one batched model call for the conditionings, or the ``sampler_calc_cond_batch_function``
   hook where one is set (:func:`predict`);
3. every ``sampler_pre_cfg_function`` hook on the (cond, uncond) pair, then ``cfg_function``
   (a ``sampler_cfg_function`` hook or ``uncond + (cond - uncond) * scale``, then the
   ``sampler_post_cfg_function`` hooks) (:func:`combine`).

The functions here are those steps, unchanged, so a guider built from them is bit for bit
ComfyUI's CFG wherever it passes ComfyUI's inputs. :func:`sample_with_guider` is what the KSampler
node does (noise, sigmas, sampler object) with any guider, for the pack's KSampler-style nodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import comfy.samplers

# The labels ComfyUI gives the chunks of a batched model call (transformer_options["cond_or_uncond"]):
# patches that act on one branch only test them.
COND, UNCOND = 0, 1

# transformer_options key of a model call that holds only some images of the sampler's batch (STG's gradient
# pass over its flagged images): a BatchRows. Patches that give each image of a batch its own input (fair
# sampling) pick the rows' inputs with it.
BATCH_ROWS = "rs_batch_rows"


@dataclass(frozen=True)
class BatchRows:
    """Which images of the sampler's batch of `batch` images a model call holds, in order (every chunk of the
    call holds the same images)."""
    rows: tuple[int, ...]
    batch: int


def with_batch_rows(model_options: dict, rows, batch: int) -> dict:
    """A copy of `model_options` whose model calls hold the images `rows` of a batch of `batch` (see BATCH_ROWS);
    the input and its transformer_options are not changed."""
    options = dict(model_options)
    options["transformer_options"] = {**options.get("transformer_options", {}),
                                      BATCH_ROWS: BatchRows(tuple(int(r) for r in rows), int(batch))}
    return options


def batch_rows(transformer_options: dict, images: int) -> BatchRows | None:
    """The BatchRows of a model call whose chunks hold `images` images, or None when the call holds the
    sampler's whole batch."""
    found = transformer_options.get(BATCH_ROWS)
    return found if isinstance(found, BatchRows) and len(found.rows) == images else None


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance's combination ``uncond + scale * (cond - uncond)`` (the training targets and
    rollouts; at sampling time ComfyUI's own ``cfg_function`` with its hooks: :func:`combine`)."""
    return uncond + scale * (cond - uncond)


def uncond_or_none(negative, cond_scale: float, model_options: dict):
    """The unconditional conditioning, or None where ComfyUI skips it (the CFG-1 shortcut)."""
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        return None
    return negative


def predict(model, conds: list, x: torch.Tensor, timestep: torch.Tensor, model_options: dict) -> list:
    """The denoised prediction of each conditioning in `conds` (None entries give None) from one
    batched model call, through the ``sampler_calc_cond_batch_function`` hook where one is set."""
    if "sampler_calc_cond_batch_function" in model_options:
        args = {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        return model_options["sampler_calc_cond_batch_function"](args)
    import comfy.samplers

    return comfy.samplers.calc_cond_batch(model, conds, x, timestep, model_options)


def combine(model, cond_pred: torch.Tensor, uncond_pred: torch.Tensor, cond_scale: float, x: torch.Tensor,
            timestep: torch.Tensor, model_options: dict, cond, uncond) -> torch.Tensor:
    """The CFG result of one (cond, uncond) prediction pair: the pre-CFG hooks, then ComfyUI's
    ``cfg_function``. `cond` / `uncond` are the conditionings the predictions came from (uncond
    None after the CFG-1 shortcut), as the hooks receive them."""
    out = [cond_pred, uncond_pred]
    for fn in model_options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": [cond, uncond], "conds_out": out, "cond_scale": cond_scale, "timestep": timestep,
                  "input": x, "sigma": timestep, "model": model, "model_options": model_options})
    import comfy.samplers

    return comfy.samplers.cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options,
                                       cond=cond, uncond=uncond)


def sample_with_guider(guider: comfy.samplers.CFGGuider, latent: dict, seed: int, steps: int, sampler_name: str,
                       scheduler: str, denoise: float = 1.0, callback=None,
                       disable_pbar: bool = True) -> torch.Tensor:
    """What the KSampler node does (same noise, sigmas and sampler object, the latent's noise mask
    and batch index) with `guider` in place of its CFG guider. Returns the samples on ComfyUI's
    intermediate device."""
    import comfy.model_management
    import comfy.sample
    import comfy.samplers

    model = guider.model_patcher
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    ksampler = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                       scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    samples = guider.sample(noise, latent_image, comfy.samplers.sampler_object(sampler_name), ksampler.sigmas,
                            denoise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=disable_pbar,
                            seed=seed)
    return samples.to(comfy.model_management.intermediate_device())
