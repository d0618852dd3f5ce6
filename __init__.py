"""Responsible Steering: safe and fair text-to-image generation at sampling time.

ComfyUI loads this package from custom_nodes/ and calls ``comfy_entrypoint`` (V3 node API).
"""
from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./js"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
