"""The pack's methods as ComfyUI guiders: classes that only orchestrate (which conditionings, which model calls),
in the house style of ComfyUI's comfy_extras/nodes_perpneg.py. The maths is in each method's own module, which
imports without ComfyUI; this one subclasses ComfyUI's ``CFGGuider`` and so needs it.

* :class:`Guider_DualLatent`: dual latent reconstruction (steering/dual_latent.py).
"""
from __future__ import annotations

import comfy.samplers

from . import dual_latent, guidance
from .dual_latent import DualLatentSettings


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

