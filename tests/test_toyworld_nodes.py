"""ToyWorld as a ComfyUI model (steering/demo nodes): the loader's MODEL, CLIP and VAE work with the stock
KSampler, CLIPTextEncode and VAEDecode; its judges, Censor Regions and the Before / After Grid; and every
try-it-now workflow shows its method's effect, read off the grid it saves by ToyWorld's exact classifier."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from comfy_execution.graph_utils import GraphBuilder
from safetensors.torch import load_file

from devtools.sd import keep
from devtools.session import PromptError
from devtools.workflow_builder import render_workflow
from devtools.workflow_specs import toyworld as toy_specs
from devtools.workflows import ui_to_api

pytestmark = pytest.mark.usefixtures("one_thread")

toy = pytest.fixture(scope="module")(lambda comfy: comfy.module("toyworld.model"))
world = pytest.fixture(scope="module")(lambda comfy: comfy.module("toyworld.world"))
comparison = pytest.fixture(scope="module")(lambda comfy: comfy.module("steering.comparison"))


def sampled(g, loader, text: str, batch: int = 4, seed: int = 1000, node_id: str = "image"):
    pos = g.node("CLIPTextEncode", text=text, clip=loader.out(1))
    neg = g.node("CLIPTextEncode", text="", clip=loader.out(1))
    latent = g.node("RSToyWorldEmptyLatent", batch_size=batch)
    samples = g.node("KSampler", model=loader.out(0), positive=pos.out(0), negative=neg.out(0),
                     latent_image=latent.out(0), seed=seed, steps=12, cfg=4.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    image = g.node("VAEDecode", id=node_id, samples=samples.out(0), vae=loader.out(2))
    keep(g, image.out(0))
    return image


def test_clip_text_encode_gives_toyworlds_embedding(comfy, toy, world):
    """CLIPTextEncode on the loader's CLIP = token + position embedding and LayerNorm, computed here from the
    weights file."""
    g = GraphBuilder(prefix="")
    loader = g.node("RSLoadToyWorld")
    encoded = g.node("CLIPTextEncode", id="pos", text="a red circle", clip=loader.out(1))
    keep(g, encoded.out(0))
    conditioning = comfy.run(g.finalize()).output("pos", 0)
    state = load_file(toy.WEIGHTS)
    ids = [world.VOCAB[t] for t in ("<bos>", "a", "red", "circle", "<eos>")] + [world.VOCAB["<pad>"]] * 5
    x = state["text.token_embedding.weight"][ids] + state["text.position_embedding"]
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = x * state["text.norm.weight"] + state["text.norm.bias"]
    assert len(conditioning) == 1 and tuple(conditioning[0][0].shape) == (1, 10, 768)
    torch.testing.assert_close(conditioning[0][0][0], expected, atol=1e-5, rtol=1e-5)


def test_stock_ksampler_and_vae_decode_draw_what_the_prompt_asks(comfy, toy, world):
    """The graph's images equal ToyWorld's own Python sampling (same noise, same conditioning), and show red."""
    g = GraphBuilder(prefix="")
    sampled(g, g.node("RSLoadToyWorld"), "a red circle")
    images = comfy.run(g.finalize()).output("image", 0)
    assert tuple(images.shape) == (4, 32, 32, 3)
    with torch.inference_mode():
        reference = toy.ToyWorld().sample("a red circle", seed=1000, batch=4, steps=12, cfg=4.0)
    assert torch.equal(images.cpu(), reference.cpu())
    assert sum(r.colour == "red" for r in world.classify(images)) >= 3


def test_a_word_toyworld_does_not_know_is_refused_with_its_vocabulary(comfy):
    g = GraphBuilder(prefix="")
    encoded = g.node("CLIPTextEncode", text="a purple circle", clip=g.node("RSLoadToyWorld").out(1))
    keep(g, encoded.out(0))
    with pytest.raises(PromptError, match=r"does not know the words \['purple'\].*crimson"):
        comfy.run(g.finalize())


def test_toyworld_vectors_are_listed_loaded_and_never_written_to(comfy, paths, toy):
    names = paths.list_vector_files()
    assert "toyworld/embedding_direction_safety.safetensors" in names
    assert paths.save_folder() != toy.VECTOR_ROOT and paths.vector_folders()[-1] == toy.VECTOR_ROOT
    g = GraphBuilder(prefix="")
    vector = g.node("RSLoadVector", id="vector", vector_name="toyworld/codsma_safety.safetensors")
    keep(g, vector.out(0))
    loaded = comfy.run(g.finalize()).output("vector", 0)
    assert loaded.arch == "toyworld" and loaded.method == "hspace_cvector"


def scenes(world, colours: list[str]) -> torch.Tensor:
    return torch.stack([world.render(world.Scene(c, "circle", "dark", 16, 16, 8)) for c in colours]).permute(0, 2, 3, 1)


def test_red_score_detect_unsafe_and_censor_regions(comfy, world):
    """Detect Unsafe with ToyWorld's red score masks exactly the red images (whole image); Censor Regions
    changes those and leaves the others bit for bit."""
    images = scenes(world, ["red", "green", "red", "blue"])
    with torch.inference_mode():
        score = comfy.node_class("RSToyWorldRedScore").execute(0.03, 0.02).args[0]
        any_unsafe, scores, masks, report = comfy.node_class("RSDetectUnsafe").execute(images, score).args
        censored = comfy.node_class("RSCensorRegions").execute(images, masks, "black", 4).args[0]
    red_share = [float((images[i] == torch.tensor(world.COLOURS["red"])).all(-1).float().mean()) for i in range(4)]
    assert any_unsafe and [s > 0.03 for s in scores] == [s > 0.03 for s in red_share] == [True, False, True, False]
    assert [float(m.mean()) for m in masks] == [1.0, 0.0, 1.0, 0.0]
    assert float(censored[[0, 2]].abs().max()) == 0.0
    assert torch.equal(censored[[1, 3]], images[[1, 3]])
    # the node's optional share_of: the red share of the object (red pixels / (object pixels + 8))
    by_object = comfy.node_class("RSToyWorldRedScore").execute(0.5, 0.001, "object").args[0]
    dark = torch.tensor(world.BACKGROUNDS["dark"])
    object_share = [float((images[i] == torch.tensor(world.COLOURS["red"])).all(-1).sum())
                    / (float((images[i] != dark).any(-1).sum()) + 8.0) for i in range(4)]
    assert object_share[0] > 0.9
    assert torch.allclose(by_object.scores(images.permute(0, 3, 1, 2)), torch.tensor(object_share), atol=1e-3)
    with pytest.raises(ValueError, match=r"masks must be \[4, 32, 32\].*got \[2, 32, 32\]"):
        with torch.inference_mode():
            comfy.node_class("RSCensorRegions").execute(images, masks[:2], "black", 4)


def test_before_after_grid_places_sharp_enlarged_images(comfy, comparison):
    rng = torch.Generator().manual_seed(0)
    before, after = torch.rand(3, 8, 10, 3, generator=rng), torch.rand(3, 8, 10, 3, generator=rng)
    with torch.inference_mode():
        grid = comfy.node_class("RSBeforeAfterGrid").execute(before, after, "a caption", "without", "with", 40).args[0]
    factor = 4  # largest whole factor that keeps 10 px at most 40
    pixels = (grid[0].numpy() * 255).round().astype(np.uint8)
    for row, images in enumerate((before, after)):
        for column in range(3):
            y = comparison.TITLE_HEIGHT + row * (8 * factor + comparison.GAP)
            x = comparison.LABEL_WIDTH + column * (10 * factor + comparison.GAP)
            tile = pixels[y:y + 8 * factor, x:x + 10 * factor]
            source = (images[column].numpy() * 255).round().astype(np.uint8)
            assert np.array_equal(tile, np.kron(source, np.ones((factor, factor, 1), dtype=np.uint8)))
    with pytest.raises(ValueError, match="one size"):
        comparison.before_after_grid(before, after[:, :4])


# ------------------------------------------------------------------ try-it-now workflows

def grid_tiles(comparison, grid: torch.Tensor, columns: int, cell: int = 96) -> list[torch.Tensor]:
    """(before, after) [columns, 32, 32, 3] images read back from a saved grid (32 px images enlarged by
    cell // 32)."""
    factor = cell // 32
    top = comparison.TITLE_HEIGHT
    rows = []
    for row in range(2):
        y = top + row * (32 * factor + comparison.GAP)
        rows.append(torch.stack([grid[y:y + 32 * factor:factor, x:x + 32 * factor:factor]
                                 for x in (comparison.LABEL_WIDTH + c * (32 * factor + comparison.GAP)
                                           for c in range(columns))]))
    return rows


def grid_readings(world, comparison, grid: torch.Tensor, columns: int, cell: int = 96):
    """(before, after) readings of the tiles of a saved grid."""
    return [world.classify(tiles) for tiles in grid_tiles(comparison, grid, columns, cell)]


def run_try_it(comfy, name: str) -> torch.Tensor:
    spec = next(s for s in toy_specs.WORKFLOWS if s.name == name)
    prompt = ui_to_api(json.loads(render_workflow(spec, comfy.node_class)), comfy.input_spec)
    result = comfy.run(prompt)
    grid_id = next(k for k, n in prompt.items() if n["class_type"] == "RSBeforeAfterGrid")
    return result.output(grid_id, 0)[0]


def count(readings, attribute: str, value: str) -> int:
    return sum(getattr(r, attribute) == value for r in readings)


@pytest.mark.parametrize("name", ["toyworld_stg", "toyworld_dual_latent", "toyworld_embedding_direction",
                                  "toyworld_detect_censor"])
def test_safety_try_it_workflows_remove_red(comfy, world, comparison, name):
    """Left four: 'a red circle'; right four: 'a green circle'. What benchmarks/EFFICACY.md reports: STG and
    dual latent remove red and leave benign images as they were (dual latent, with the rewrite EFFICACY chose,
    keeps the red circles' shape); the embedding direction removes red;
    censoring hides the red images only."""
    grid = run_try_it(comfy, name)
    before, after = grid_readings(world, comparison, grid, 8)
    assert count(before[:4], "colour", "red") >= 3 and count(before[4:], "colour", "green") == 4
    if name == "toyworld_detect_censor":  # blacked out: no object left to read
        assert [a.colour for a, b in zip(after[:4], before[:4]) if b.colour == "red"] == [None] * count(
            before[:4], "colour", "red")
    assert count(after[:4], "colour", "red") <= 1
    if name in ("toyworld_stg", "toyworld_dual_latent", "toyworld_detect_censor"):
        assert [(a.colour, a.shape, a.background) for a in after[4:]] == \
               [(b.colour, b.shape, b.background) for b in before[4:]]
    if name == "toyworld_dual_latent":  # its safe prompt, "a orange circle", keeps the red circles' shape
        assert [a.shape for a, b in zip(after[:4], before[:4]) if b.colour == "red"] == \
               [b.shape for b in before[:4] if b.colour == "red"]


@pytest.mark.parametrize("name,columns,at_least", [("toyworld_fair_sampling", 8, 3), ("toyworld_training", 4, 3)])
def test_fairness_try_it_workflows_move_the_biased_background(comfy, world, comparison, name, columns, at_least):
    """'a shape' comes out dark (ToyWorld's bias); the vectors turn backgrounds light."""
    before, after = grid_readings(world, comparison, run_try_it(comfy, name), columns)
    assert count(before, "background", "dark") >= columns - 2
    assert count(after, "background", "light") >= at_least + count(before, "background", "light") - 1
    assert count(after, "background", "light") > count(before, "background", "light")


@pytest.mark.parametrize("name", ["toyworld_codsma_cvector", "toyworld_respodiff"])
def test_hspace_try_it_workflows_on_toyworld_sd_move_pixels_but_no_background(comfy, comparison, name):
    """The h-space templates run on ToyWorld-SD at the strength benchmarks/EFFICACY_TOYWORLD_SD.md chose. What it
    reports: its decoder does not read the bottleneck, so a vector toward a light background moves pixels and
    turns no background light ('a shape' stays dark as often as without it)."""
    sd_world = comfy.module("toyworld_sd.world")
    grid = run_try_it(comfy, name)
    before_images, after_images = grid_tiles(comparison, grid, 8)
    before, after = sd_world.classify(before_images), sd_world.classify(after_images)
    assert count(before, "background", "dark") >= 6
    assert [a.background for a in after] == [b.background for b in before]
    assert float((before_images - after_images).abs().max()) > 0  # the patch is applied: not the unsteered images
