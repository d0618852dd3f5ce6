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
    """A ComfyUI with upstream 0.38's training state (``in_training`` in comfy/model_management.py), whatever
    the installed one has (restored by monkeypatch)."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        monkeypatch.setattr(mm, "in_training", False, raising=False)
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
    import comfy.model_management as mm

    monkeypatch.delattr(mm, "in_training", raising=False)  # 0.3.75: no training state
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


def test_the_route_follows_the_hook(compat, tiny, monkeypatch):
    """0.3.75 has no middle-block hook: the output-block fallback; with upstream's hook (a stand-in of it, below)
    the hook; prefer_hook=False always the fallback."""
    model = tiny[0]
    assert compat.bottleneck_patch(model, AddOffset(0.0))[0] == "output_block_patch"
    with monkeypatch.context() as mp:
        upstream_middle_block_hook(mp)
        assert compat.bottleneck_patch(model, AddOffset(0.0))[0] == "middle_block_after_patch"
        assert compat.bottleneck_patch(model, AddOffset(0.0), prefer_hook=False)[0] == "output_block_patch"


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


# ---------------------------------------------------------------- upstream 0.38's surface, as stand-ins
# Where 0.3.75 lacks what upstream has, a stand-in built from upstream's own code (quoted in each docstring)
# makes the layer take its upstream route here, so these tests fail if that route is wrong.

def upstream_middle_block_hook(monkeypatch):
    """comfy/model_patcher.py (0.38): ``set_model_middle_block_after_patch(patch)`` registers a
    "middle_block_after_patch"; comfy/ldm/modules/diffusionmodules/openaimodel.py (0.38) calls each such patch
    right after the middle block with ``{"h", "x", "emb", "context", "y", "timesteps", "transformer_options"}``
    and takes its "h". 0.3.75 has neither: the stand-in adds the method and runs the patches after the middle
    block's forward_timestep_embed."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.model_patcher

    def set_model_middle_block_after_patch(self, patch):
        self.set_model_patch(patch, "middle_block_after_patch")

    original = openaimodel.forward_timestep_embed

    def forward_timestep_embed(ts, x, emb, context=None, transformer_options={}, *args, **kwargs):
        h = original(ts, x, emb, context, transformer_options, *args, **kwargs)
        if transformer_options.get("block") == ("middle", 0):
            for patch in transformer_options.get("patches", {}).get("middle_block_after_patch", []):
                h = patch({"h": h, "x": None, "emb": emb, "context": context, "y": None, "timesteps": None,
                           "transformer_options": transformer_options})["h"]
        return h

    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "set_model_middle_block_after_patch",
                        set_model_middle_block_after_patch, raising=False)
    monkeypatch.setattr(openaimodel, "forward_timestep_embed", forward_timestep_embed)


def test_the_upstream_middle_block_hook_and_the_fallback_give_identical_images(comfy, tiny, monkeypatch):
    hs, compat = comfy.module("steering.hspace"), comfy.module("steering.comfy_compat")
    model = tiny[0]
    offsets = 4.0 * torch.randn(1, 1280, 4, 4, generator=torch.Generator().manual_seed(3))
    fallback = sample_with(hs.patch_model_with_offsets(model, offsets, 1.0, 0.0, 1.0, prefer_hook=False), tiny)
    with monkeypatch.context() as mp:
        upstream_middle_block_hook(mp)
        assert compat.has_middle_block_hook(model)
        patched = hs.patch_model_with_offsets(model, offsets, 1.0, 0.0, 1.0, prefer_hook=True)
        assert "middle_block_after_patch" in patched.model_options["transformer_options"]["patches"]
        via_hook = sample_with(patched, tiny)
    assert not compat.has_middle_block_hook(model)          # the stand-in is gone
    assert not torch.equal(fallback, sample_with(model, tiny)), "the vector changed nothing"
    assert torch.equal(via_hook, fallback)


def test_the_training_state_is_set_where_comfyui_has_one(compat, monkeypatch):
    """comfy/model_management.py (0.38): ``in_training = False`` at module level, set by its trainer around
    training. With the attribute the gradient pass sets it and puts it back; without (0.3.75) it is left alone."""
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "in_training", False, raising=False)
    assert compat.in_training_supported()
    with compat.gradient_pass():
        assert mm.in_training is True
    assert mm.in_training is False
    monkeypatch.delattr(mm, "in_training")
    assert not compat.in_training_supported()
    with compat.gradient_pass():
        assert not hasattr(mm, "in_training")


def test_preview_events_come_from_protocol_where_it_exists(compat, monkeypatch):
    """protocol.py (0.38): ``class BinaryEventTypes: PREVIEW_IMAGE = 1; UNENCODED_PREVIEW_IMAGE = 2; TEXT = 3;
    PREVIEW_IMAGE_WITH_METADATA = 4`` (0.3.75 keeps them in server.py)."""
    import types

    protocol = types.ModuleType("protocol")
    protocol.BinaryEventTypes = type("BinaryEventTypes", (), {"PREVIEW_IMAGE": 11, "UNENCODED_PREVIEW_IMAGE": 12,
                                                              "TEXT": 13, "PREVIEW_IMAGE_WITH_METADATA": 14})
    monkeypatch.setitem(__import__("sys").modules, "protocol", protocol)
    assert compat.preview_event_types() == {11: "PREVIEW_IMAGE", 12: "UNENCODED_PREVIEW_IMAGE",
                                            14: "PREVIEW_IMAGE_WITH_METADATA"}
    assert compat.text_event_type() == 13
    monkeypatch.delitem(__import__("sys").modules, "protocol")
    import server

    assert compat.preview_event_types()[server.BinaryEventTypes.PREVIEW_IMAGE] == "PREVIEW_IMAGE"


def test_intermediate_output_nodes_release_results_where_comfyui_has_them(compat, monkeypatch):
    """execution.py (0.38): ``_is_intermediate_output`` reads ``HAS_INTERMEDIATE_OUTPUT`` off a node class: such a
    node is not an output node but its results are shown; the policy treats it as releasing them."""
    import nodes

    class ShowsWhileRunning:
        HAS_INTERMEDIATE_OUTPUT = True
        RETURN_TYPES = ("IMAGE",)

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",), "raw": ("IMAGE", {"rawLink": True})}}

    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "RSTestShowsWhileRunning", ShowsWhileRunning)
    facts = compat.node_facts("RSTestShowsWhileRunning")
    assert (facts.output_node, facts.intermediate_output, facts.outputs) == (False, True, ("IMAGE",))
    assert facts.inputs == {"images": ("IMAGE", "required", False), "raw": ("IMAGE", "required", True)}
    assert compat.node_facts("no such node") is None


def test_history_filter_follows_task_done_as_upstream_calls_it(compat):
    """execution.py (0.38): ``PromptQueue.task_done(self, item_id, history_result, status, process_item=None)``;
    the running item is (number, prompt_id, prompt, extra_data, outputs_to_execute, ...)."""
    import types

    calls = []

    class UpstreamQueue:
        def __init__(self):
            self.currently_running = {7: (0, "p1", {}, {}, [])}

        def task_done(self, item_id, history_result, status, process_item=None):
            calls.append((item_id, history_result, status, process_item))

    server = types.SimpleNamespace(prompt_queue=UpstreamQueue())
    seen = []
    compat.filter_history(server, lambda prompt_id, result, messages: seen.append((prompt_id, result, messages)))
    status = types.SimpleNamespace(messages=[("execution_start", {})])
    server.prompt_queue.task_done(7, {"outputs": {}}, status, process_item=str)
    assert seen == [("p1", {"outputs": {}}, [("execution_start", {})])]
    assert calls == [(7, {"outputs": {}}, status, str)]
