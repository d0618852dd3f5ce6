"""Test-only custom nodes an attacker would wish a server had (tests/test_policy_attacks.py installs them into
the test servers' custom_nodes, never into a user's ComfyUI): node expansions that decode and save, an
expansion that names a node's raw output by id, a node that is not an output node but shows pictures and
streams previews, and an output node that prints whatever it is given."""
from __future__ import annotations

import os

import numpy as np


def _decode(vae, samples) -> "object":
    return vae.decode(samples["samples"])


class ExpandDecodeAndSave:
    """Expands into VAE Decode (given the latent and the VAE as values) + Save Image; returns the decoded image."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "hostile"

    def run(self, samples, vae):
        from comfy_execution.graph_utils import GraphBuilder

        g = GraphBuilder()
        decoded = g.node("VAEDecode", samples=samples, vae=vae)
        g.node("SaveImage", images=decoded.out(0), filename_prefix="expanded")
        return {"result": (decoded.out(0),), "expand": g.finalize()}


class ExpandSaveValue:
    """Decodes in Python and expands into Save Image given the image tensor as a value."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "hostile"

    def run(self, samples, vae):
        from comfy_execution.graph_utils import GraphBuilder

        g = GraphBuilder()
        g.node("SaveImage", images=_decode(vae, samples), filename_prefix="expanded-value")
        return {"result": (), "expand": g.finalize()}


class ExpandAround:
    """Expands into Save Image linked to ``[node_id, 0]``: a node's raw output named by its id."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"node_id": ("STRING", {"default": ""}), "trigger": ("IMAGE",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "hostile"

    def run(self, node_id, trigger):
        from comfy_execution.graph_utils import GraphBuilder

        g = GraphBuilder()
        g.node("SaveImage", images=[node_id, 0], filename_prefix="around")
        return {"result": (), "expand": g.finalize()}


class ShowWhileRunning:
    """Not an output node: decodes the latent, writes it to temp, shows it in its results and streams it as
    previews (encoded, unencoded and a custom binary event); passes the latent on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "hostile"

    def run(self, samples, vae):
        import io
        import struct

        import folder_paths
        from PIL import Image
        from server import BinaryEventTypes, PromptServer

        image = Image.fromarray(np.clip(255.0 * _decode(vae, samples)[0].cpu().numpy(), 0, 255).astype(np.uint8))
        name = f"shown-{os.getpid()}-{id(samples)}.png"
        image.save(os.path.join(folder_paths.get_temp_directory(), name))
        server = PromptServer.instance
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        server.send_sync(BinaryEventTypes.PREVIEW_IMAGE, struct.pack(">I", 2) + encoded.getvalue(), server.client_id)
        server.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, ("PNG", image, None), server.client_id)
        server.send_sync(99, encoded.getvalue(), server.client_id)
        return {"ui": {"images": [{"filename": name, "subfolder": "", "type": "temp"}]}, "result": (samples,)}


class PrintAnything:
    """An output node that shows whatever it is given as text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "hostile"

    def run(self, value):
        import torch

        value = value["samples"] if isinstance(value, dict) and "samples" in value else value
        text = repr(value.tolist()) if isinstance(value, torch.Tensor) else repr(value)
        return {"ui": {"text": [text]}}


NODE_CLASS_MAPPINGS = {"HostileExpandDecodeAndSave": ExpandDecodeAndSave, "HostileExpandSaveValue": ExpandSaveValue,
                       "HostileExpandAround": ExpandAround, "HostileShowWhileRunning": ShowWhileRunning,
                       "HostilePrintAnything": PrintAnything}
