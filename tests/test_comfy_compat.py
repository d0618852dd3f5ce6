"""The version layer (steering/comfy_compat.py) on the ComfyUI the tests run: global state is put
back after success, error and interrupt; both bottleneck routes act on the same h."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def compat(comfy):
    return comfy.module("steering.comfy_compat")


@pytest.fixture
def forced_in_training(compat, monkeypatch):
    """Gradient passes set in_training even on a ComfyUI without it (restored by monkeypatch)."""
    monkeypatch.setattr(compat, "IN_TRAINING_OVERRIDE", True)
    return compat


def in_training_state():
    import comfy.model_management as mm

    return getattr(mm, "in_training", "absent")


class BaseExceptionInterrupt(BaseException):
    """What upstream 0.38's InterruptProcessingException is: a BaseException, not an Exception."""


@pytest.mark.parametrize("ending", ["success", "error", "interrupt", "interrupt_0.38"])
def test_gradient_pass_restores_in_training(forced_in_training, ending):
    import comfy.model_management as mm

    compat = forced_in_training
    before = in_training_state()
    seen = []
    raised = {"success": None, "error": ValueError, "interrupt": mm.InterruptProcessingException,
              "interrupt_0.38": BaseExceptionInterrupt}[ending]
    try:
        with compat.gradient_pass():
            seen.append(mm.in_training)
            if raised:
                raise raised("stop")
    except BaseException as e:
        assert raised is not None and isinstance(e, raised)
    assert seen == [True]
    assert in_training_state() == before


def test_gradient_pass_keeps_an_existing_value(forced_in_training, monkeypatch):
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "in_training", "earlier value", raising=False)
    with forced_in_training.gradient_pass():
        assert mm.in_training is True
    assert mm.in_training == "earlier value"


def test_gradient_pass_leaves_state_alone_when_off(compat, monkeypatch):
    monkeypatch.setattr(compat, "IN_TRAINING_OVERRIDE", False)
    before = in_training_state()
    with compat.gradient_pass():
        assert in_training_state() == before
    assert in_training_state() == before


class DynamicPatcher:
    """A stand-in for upstream's ModelPatcherDynamic: only what the layer asks of it."""

    def is_dynamic(self):
        return True


def test_unsaveable_tensor_under_dynamic_vram_names_the_flag(compat):
    with pytest.raises(compat.CompatError, match="--disable-dynamic-vram"):
        with compat.gradient_pass(DynamicPatcher()):
            raise RuntimeError("Inference tensors cannot be saved for backward. To work around ...")
    with pytest.raises(RuntimeError, match="Inference tensors") as info:  # not dynamic: the error as it was
        with compat.gradient_pass(object()):
            raise RuntimeError("Inference tensors cannot be saved for backward.")
    assert not isinstance(info.value, compat.CompatError)


class AddOffset:
    """A bottleneck shift with an independent expected value: h + offset."""

    def __init__(self, offset):
        self.offset = offset

    def shift(self, h, transformer_options):
        return h + self.offset


def test_both_bottleneck_routes_see_the_same_h(compat):
    g = torch.Generator().manual_seed(0)
    h, hsp = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    bottleneck = AddOffset(torch.randn(8, 1, 1, generator=g))
    options = {"block": ("output", 0)}
    via_hook = compat.MiddleBlockPatch(bottleneck)({"h": h, "x": None, "transformer_options": options})["h"]
    via_output, hsp_out = compat.FirstOutputBlockPatch(bottleneck)(h, hsp, options)
    assert torch.equal(via_hook, h + bottleneck.offset) and torch.equal(via_output, h + bottleneck.offset)
    assert hsp_out is hsp
    later_h, later_hsp = compat.FirstOutputBlockPatch(bottleneck)(h, hsp, {"block": ("output", 1)})
    assert later_h is h and later_hsp is hsp  # acts once, at the first output block only


def test_the_route_follows_the_hook(compat, tiny):
    model = tiny[0]
    kind, _ = compat.bottleneck_patch(model, AddOffset(0.0))
    assert kind == ("middle_block_after_patch" if compat.has_middle_block_hook(model) else "output_block_patch")
    assert compat.bottleneck_patch(model, AddOffset(0.0), prefer_hook=False)[0] == "output_block_patch"


def test_middle_hook_and_output_block_fallback_give_identical_images(comfy, tiny):
    """Apply H-Space Vector through both routes. Where this ComfyUI has no middle-block hook (0.3.75) the
    hook route IS the fallback, so the comparison then shows only that the fallback is what ships."""
    hs, compat = comfy.module("steering.hspace"), comfy.module("steering.comfy_compat")
    model = tiny[0]
    offsets = 4.0 * torch.randn(1, 1280, 4, 4, generator=torch.Generator().manual_seed(3))
    images = {}
    for prefer_hook in (True, False):
        patched = hs.patch_model_with_offsets(model, offsets, 1.0, 0.0, 1.0, prefer_hook=prefer_hook)
        images[prefer_hook] = sample_with(patched, tiny)
    plain = sample_with(model, tiny)
    assert not torch.equal(images[False], plain), "the vector changed nothing: the comparison would be empty"
    assert torch.equal(images[True], images[False])
    if not compat.has_middle_block_hook(model):
        print("this ComfyUI has no set_model_middle_block_after_patch: both runs used the output-block fallback")


def sample_with(model, tiny) -> torch.Tensor:
    """Sample the tiny checkpoint's model object in-process (euler, 3 steps, 64 px) and decode."""
    import comfy.sample as sample
    import nodes

    _, clip, vae = tiny
    positive = nodes.CLIPTextEncode().encode(clip, "a photo of a person")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = torch.zeros(1, 4, 8, 8)
    with torch.inference_mode():
        noise = sample.prepare_noise(latent, 7)
        out = sample.sample(model, noise, 3, 5.0, "euler", "normal", positive, negative, latent, seed=7,
                            disable_pbar=True)
        return vae.decode(out).clone()
