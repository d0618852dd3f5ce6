"""Model architectures the pack knows, and how to recognise them.

Kept free of ComfyUI imports at module level so the vector-file code and the
reference-import command (scripts/import_reference.py) work with torch alone.
"""
from __future__ import annotations

from dataclasses import dataclass


class ArchitectureError(ValueError):
    """A model, conditioning or vector does not have the architecture expected."""


@dataclass(frozen=True)
class Architecture:
    name: str
    label: str
    text_width: int | None         # width of the cross-attention conditioning
    text_tokens: int | None        # tokens per CLIP chunk (77); None: a T5-style sequence of any length
    pooled_width: int | None       # width of pooled_output, if the model uses it
    bottleneck_channels: int | None  # UNet middle-block channels; None: no UNet h-space
    native_resolution: int | None = None  # image side the model was trained at (pixels)
    taesd_decoder: str | None = None      # models/vae_approx file name (no extension) of its TAESD decoder


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("sd1", "Stable Diffusion 1.x", 768, 77, None, 1280, 512, "taesd_decoder"),
        Architecture("sd2", "Stable Diffusion 2.x", 1024, 77, None, 1280, 768, "taesd_decoder"),
        Architecture("sdxl", "Stable Diffusion XL", 2048, 77, 1280, 1280, 1024, "taesdxl_decoder"),
        # SD3: [CLIP-L ++ CLIP-G padded to 4096 (77 tokens) | T5 tokens]; FLUX: T5 tokens (256 or more)
        Architecture("sd3", "Stable Diffusion 3", 4096, None, 2048, None, 1024, "taesd3_decoder"),
        Architecture("flux", "FLUX.1", 4096, None, 768, None, 1024, "taef1_decoder"),
    )
}


BUILTIN_ARCHITECTURES = frozenset(ARCHITECTURES)

# Model-config classes (comfy.supported_models) of each architecture, most specific first:
# distilled SDXL variants subclass SDXL.
MODEL_CONFIG_CLASSES: dict[str, tuple[str, ...]] = {
    "sdxl": ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B", "SDXL_instructpix2pix"),
    "sd2": ("SD20", "SD21UnclipL", "SD21UnclipH", "SD_X4Upscaler"),
    "sd1": ("SD15", "SD15_instructpix2pix"),
    "sd3": ("SD3",),
    "flux": ("Flux", "FluxSchnell", "FluxInpaint"),
}
_REGISTERED_CONFIGS: dict[str, tuple[type, ...]] = {}


def register_architecture(arch: Architecture, config_classes: tuple[type, ...]) -> None:
    """Teach the pack one more architecture: vector files may then name it, and models whose
    model_config is an instance of `config_classes` are recognised as it. Used for models built
    outside comfy.supported_models (the ToyWorld benchmark model). Re-registering the same name
    replaces the entry; the built-in architectures cannot be replaced."""
    if arch.name in BUILTIN_ARCHITECTURES:
        raise ArchitectureError(f"architecture {arch.name!r} is built in and cannot be re-registered")
    ARCHITECTURES[arch.name] = arch
    _REGISTERED_CONFIGS[arch.name] = tuple(config_classes)


def unregister_architecture(name: str) -> None:
    """Forget an architecture taught with register_architecture (no-op if it is not registered);
    the built-in ones cannot be removed."""
    if name in BUILTIN_ARCHITECTURES:
        raise ArchitectureError(f"architecture {name!r} is built in and cannot be removed")
    ARCHITECTURES.pop(name, None)
    _REGISTERED_CONFIGS.pop(name, None)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(
            f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}") from None


def architecture_of_conditioning(cond, pooled=None) -> str:
    """Name the architecture a conditioning tensor [B, N, D] (and its pooled output) came from."""
    width, tokens = int(cond.shape[-1]), int(cond.shape[-2])
    pooled_width = None if pooled is None else int(pooled.shape[-1])
    for name in _REGISTERED_CONFIGS:  # exact matches only: built-in widths keep their meaning
        arch = ARCHITECTURES[name]
        if (arch.text_width == width and arch.text_tokens == tokens
                and (arch.pooled_width is None) == (pooled_width is None)):
            return name
    if width == 4096:
        if pooled_width == 2048:
            return "sd3"
        if pooled_width == 768:
            return "flux"
        raise ArchitectureError(
            f"conditioning of width 4096 with pooled output of width {pooled_width}: "
            "expected SD3 (pooled 2048) or FLUX (pooled 768)")
    for arch in ARCHITECTURES.values():
        if arch.text_width == width and arch.name not in _REGISTERED_CONFIGS:
            return arch.name
    known = ", ".join(f"{a.name}: {a.text_width}" for a in ARCHITECTURES.values())
    raise ArchitectureError(f"conditioning width {width} matches no known architecture ({known})")


def architecture_of_model(model) -> str:
    """Name the architecture of a ComfyUI ModelPatcher (or BaseModel)."""
    from .comfy_compat import model_config_classes

    base = getattr(model, "model", model)
    config = getattr(base, "model_config", None)
    for name, classes in _REGISTERED_CONFIGS.items():
        if classes and isinstance(config, classes):
            return name
    for name, class_names in MODEL_CONFIG_CLASSES.items():
        classes = model_config_classes(class_names)
        if classes and isinstance(config, classes):
            return name
    raise ArchitectureError(
        f"model architecture {type(config).__name__} is not supported; "
        f"expected one of {[a.label for a in ARCHITECTURES.values()]}")


def model_context_width(model) -> int | None:
    """The text-conditioning width the model's diffusion network takes (None when its config does not say):
    a UNet's ``context_dim``, FLUX's ``context_in_dim``, SD3's context embedder input."""
    base = getattr(model, "model", model)
    config = getattr(getattr(base, "model_config", None), "unet_config", None) or {}
    embedder = (config.get("context_embedder_config") or {}).get("params", {})
    width = config.get("context_dim") or config.get("context_in_dim") or embedder.get("in_features")
    return int(width) if width else None


def unet_bottleneck_channels(model, method: str = "h-space vectors") -> int:
    """Channels of the UNet middle-block output (h-space) of a ComfyUI model."""
    base = getattr(model, "model", model)
    config = getattr(getattr(base, "model_config", None), "unet_config", None) or {}
    if "model_channels" not in config or "channel_mult" not in config:
        try:
            model_name = get_architecture(architecture_of_model(model)).label
        except ArchitectureError:
            model_name = type(getattr(base, "model_config", base)).__name__
        raise ArchitectureError(
            f"{method} act on a UNet bottleneck (h-space), which {model_name} does not have (it is not a UNet); "
            "use them with SD1.x, SD2.x or SDXL, or use a text-side method (embedding direction, STG, dual latent)")
    return int(config["model_channels"]) * int(config["channel_mult"][-1])
