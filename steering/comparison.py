"""A labelled before/after grid: the same seeds without and with a method, readable at a glance.

Design: row 0 is "before", row 1 "after", one column per image of the batch (image i of both rows
comes from the same seed). Small images (ToyWorld draws 32 x 32) are enlarged by an integer factor
with nearest-neighbour sampling, so every pixel stays a sharp block and no colour is invented; the
title and the row labels are drawn in bands above and to the left of the images with PIL's
built-in font. Pure function over ComfyUI IMAGE tensors [B, H, W, 3] in 0..1; no ComfyUI import.
"""
from __future__ import annotations

import torch

BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
GAP = 4
TITLE_HEIGHT = 28
LABEL_WIDTH = 64


class ComparisonError(ValueError):
    """The two image batches cannot be shown side by side."""


def enlargement(size: int, cell: int) -> int:
    """The integer factor that brings an image side `size` closest to `cell` from below (at least 1)."""
    return max(1, cell // max(1, size))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed size
        return ImageFont.load_default()


def before_after_grid(before: torch.Tensor, after: torch.Tensor, title: str = "",
                      labels: tuple[str, str] = ("before", "after"), cell: int = 128) -> torch.Tensor:
    """IMAGE [1, H', W', 3]: `title` on top, then the `before` row and the `after` row, labelled."""
    if before.dim() != 4 or after.dim() != 4 or before.shape[-1] < 3 or after.shape[-1] < 3:
        raise ComparisonError(f"before and after must be IMAGE batches [B, H, W, 3]; got "
                              f"{list(before.shape)} and {list(after.shape)}")
    if before.shape[1:3] != after.shape[1:3]:
        raise ComparisonError(f"before and after images must have one size; got {tuple(before.shape[1:3])} "
                              f"and {tuple(after.shape[1:3])}")
    from PIL import Image, ImageDraw

    height, width = int(before.shape[1]), int(before.shape[2])
    factor = enlargement(max(height, width), cell)
    h, w = height * factor, width * factor
    columns = max(before.shape[0], after.shape[0])
    top = TITLE_HEIGHT if title else GAP
    title_font, label_font = _font(15), _font(13)
    title_width = int(title_font.getlength(title)) + 2 * GAP
    canvas = Image.new("RGB", (max(LABEL_WIDTH + columns * (w + GAP), title_width), top + 2 * (h + GAP)),
                       BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((GAP, 6), title, fill=TEXT, font=title_font)
    for row, images in enumerate((before, after)):
        y = top + row * (h + GAP)
        draw.text((GAP, y + h // 2 - 7), labels[row], fill=TEXT, font=label_font)
        pixels = (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        for column in range(images.shape[0]):
            tile = pixels[column].repeat_interleave(factor, 0).repeat_interleave(factor, 1)
            canvas.paste(Image.fromarray(tile.numpy()), (LABEL_WIDTH + column * (w + GAP), y))
    out = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8)
    return (out.view(canvas.height, canvas.width, 3).float() / 255.0)[None]
