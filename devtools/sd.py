"""Helpers to run the tiny SD1 checkpoint through real ComfyUI graphs and to look
inside sampling (per-step predictions of the conditional and unconditional branch).

Graphs are ComfyUI's own builder, `comfy_execution.graph_utils.GraphBuilder(prefix="")`
(plain node ids): ``ref = g.node("KSampler", id="k", model=ckpt.out(0), ...)``, then
``comfy.run(g.finalize())``.
"""
from __future__ import annotations

import torch

from devtools.session import ComfySession


def sd_graph(comfy: ComfySession, positive: str = "a photo of a person", negative: str = ""):
    """A graph with the checkpoint loader and both prompts; returns (graph, ckpt, pos, neg) nodes."""
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", id="ckpt", ckpt_name=comfy.checkpoint_name)
    pos = g.node("CLIPTextEncode", id="pos", text=positive, clip=ckpt.out(1))
    neg = g.node("CLIPTextEncode", id="neg", text=negative, clip=ckpt.out(1))
    return g, ckpt, pos, neg


def add_txt2img(g, model, vae, positive, negative, seed: int = 7, steps: int = 4, size: int = 64,
                batch: int = 1, cfg: float = 5.0, sampler: str = "euler", scheduler: str = "normal"):
    """KSampler + decode + preview; returns the VAEDecode node (its output 0 is the IMAGE batch)."""
    latent = g.node("EmptyLatentImage", width=size, height=size, batch_size=batch)
    sampled = g.node("KSampler", model=model, positive=positive, negative=negative, latent_image=latent.out(0),
                     seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler, denoise=1.0)
    image = g.node("VAEDecode", samples=sampled.out(0), vae=vae)
    g.node("PreviewImage", images=image.out(0))
    return image


def keep(g, link: list) -> None:
    """Make a node's output (a link, ``node.out(slot)``) reachable from an output node so the executor
    runs and caches it."""
    g.node("PreviewAny", source=link)


def render(comfy: ComfySession, g, image_node) -> torch.Tensor:
    return comfy.run(g.finalize()).output(image_node.id).clone()


def load_tiny_objects(comfy: ComfySession):
    """(model, clip, vae) exactly as CheckpointLoaderSimple produces them inside the executor."""
    g, ckpt, pos, neg = sd_graph(comfy)
    keep(g, ckpt.out(0))
    result = comfy.run(g.finalize())
    return result.output("ckpt", 0), result.output("ckpt", 1), result.output("ckpt", 2)


def encode(comfy: ComfySession, text: str):
    g, ckpt, pos, neg = sd_graph(comfy, positive=text)
    keep(g, pos.out(0))
    return comfy.run(g.finalize()).output("pos", 0)


def probe_predictions(model, positive, negative, x: torch.Tensor, sigmas: list[float], cfg: float = 5.0):
    """Denoised predictions (cond, uncond) of the model at fixed `x` for each sigma, computed by
    ComfyUI's own conditioning processing and cond/uncond batching (calc_cond_batch)."""
    import comfy.samplers

    records = []

    class ProbeGuider(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options={}, seed=None):
            cond, uncond = comfy.samplers.calc_cond_batch(
                self.inner_model, [self.conds.get("positive"), self.conds.get("negative")], x, timestep,
                model_options)
            records.append((float(timestep.reshape(-1)[0]), cond.clone(), uncond.clone()))
            return uncond + self.cfg * (cond - uncond)

    def visit_sigmas(model_k, noisy, sigma_list, extra_args=None, callback=None, disable=None):
        for s in sigma_list[:-1]:
            model_k(x.to(noisy), s * noisy.new_ones([noisy.shape[0]]), **extra_args)
        return noisy

    guider = ProbeGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    with torch.inference_mode():
        guider.sample(torch.zeros_like(x), torch.zeros_like(x), comfy.samplers.KSAMPLER(visit_sigmas),
                      torch.tensor(list(sigmas) + [0.0]), seed=0)
    return records


def trajectory(model, positive, negative, seed: int = 7, steps: int = 6, size: int = 64, cfg: float = 5.0,
               sampler: str = "euler", scheduler: str = "normal"):
    """Per-step denoised (x0) predictions and the final latent, through comfy.sample.sample."""
    import comfy.sample
    import comfy.samplers

    steps_x0 = []
    latent = torch.zeros(1, 4, size // 8, size // 8)
    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(latent, seed)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
        final = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                    callback=lambda step, x0, x, total: steps_x0.append(x0.clone()),
                                    disable_pbar=True, seed=seed)
    return [float(s) for s in sigmas], steps_x0, final


def embedding_derivatives(guider, x: torch.Tensor, timestep: torch.Tensor, model_options: dict, step: float,
                          seed: int = 3) -> dict:
    """An STG guider's d score / d embedding at x along one direction, from its gradient pass ("analytic"),
    and the central finite difference of its score along the same direction ("numeric", step `step`), with
    the gradient's norm and shape. The direction is half the gradient's (a float32 score needs a derivative
    well above its rounding), half a seeded random one."""
    embeds = guider.initial_state(x.shape[0]).embeds
    grads = guider.embedding_gradient(x, timestep, model_options, embeds).grads
    noise_dir = torch.randn(embeds[0].shape, generator=torch.Generator().manual_seed(seed))
    direction = grads[0] / grads[0].norm() + noise_dir / noise_dir.norm()
    direction = direction / direction.norm()
    values = [guider.score_at(x, timestep, model_options, [embeds[0] + sign * step * direction]).score.sum()
              for sign in (1, -1)]
    return {"analytic": float((grads[0] * direction).sum()), "numeric": float((values[0] - values[1]) / (2 * step)),
            "grad_norm": float(grads[0].norm()), "shape": tuple(grads[0].shape)}


# ---------------------------------------------------------------------------- vectors and fair sampling
# (shared by the embedding-direction and h-space tests)

def direction_vector(vf, seed: int, arch: str = "sd1", scale: float = 1.0, name: str | None = None):
    g = torch.Generator().manual_seed(seed)
    width = {"sd1": 768, "sdxl": 2048}[arch]
    b = scale * torch.randn(77, 1, generator=g)
    a = torch.randn(1, width, generator=g)
    return vf.SteeringVector("embedding_direction", arch, {"direction_b": b, "direction_a": a},
                             {"name": name or f"d{seed}"})


FAIR_BATCH, FAIR_STEPS = 4, 2


def fair_reports(comfy, files: list[str], seeds, mode: str = "uniform", batch: int = FAIR_BATCH) -> list[str]:
    """The assignment text of the fair embedding node over the vector files `files`, for each seed (the node
    alone; nothing is sampled)."""
    g, ckpt, pos, neg = sd_graph(comfy)
    vectors = [g.node("RSLoadVector", vector_name=f) for f in files]
    vset = g.node("RSVectorSet", **{f"vector_{k + 1}": v.out(0) for k, v in enumerate(vectors)})
    fair = [g.node("RSApplyEmbeddingDirectionFair", id=f"fair{seed}", conditioning=pos.out(0), vectors=vset.out(0),
                   batch_size=batch, seed=seed, assignment=mode, strength=1.0, start_percent=0.0, end_percent=1.0,
                   chunk_mode="every_chunk") for seed in seeds]
    for node in fair:
        keep(g, node.out(1))
    result = comfy.run(g.finalize())
    return [result.output(f"fair{seed}", 1) for seed in seeds]


def report_of(names: list[str], chosen: list[int]) -> str:
    """The node's assignment text for image i getting the vector named names[chosen[i]]."""
    return "\n".join(f"image {i}: {names[k]}" for i, k in enumerate(chosen))


def seed_using_all(reports: list[str], names: list[str]) -> int:
    """The first seed (index into `reports`) whose assignment uses every vector."""
    used = [{line.split(": ", 1)[1] for line in report.splitlines()} for report in reports]
    seed = next((s for s, u in enumerate(used) if u == set(names)), None)
    assert seed is not None, f"no seed of {len(reports)} used all of {names}: {reports}"
    return seed


def vector_of_each_image(fair: torch.Tensor, single: list[torch.Tensor]) -> list[int]:
    """For each image of a fair batch, the index of the one single-vector batch whose image at the same index
    it reproduces (the same noise; only the vector differs); fails unless exactly one does."""
    chosen = []
    for i in range(fair.shape[0]):
        close = [k for k, images in enumerate(single) if torch.allclose(fair[i], images[i], atol=1e-4)]
        assert len(close) == 1, f"image {i} reproduces the single-vector runs {close}; expected exactly one"
        for k, images in enumerate(single):
            if k != close[0]:
                assert (fair[i] - images[i]).abs().mean() > 1e-3, f"image {i}: vectors {close[0]} and {k} agree"
        chosen.append(close[0])
    return chosen
