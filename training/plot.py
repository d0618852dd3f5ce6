"""Loss history -> an RGB image (PIL only, no plotting library)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(224, 168, 79), (192, 123, 224), (95, 191, 224), (224, 95, 95)]


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss(series: dict[str, list[float]], width: int = 768, height: int = 384, log_scale: bool = True,
              title: str = "") -> np.ndarray:
    """uint8 [height, width, 3]: each series as a faint raw line plus a bold moving average."""
    image = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 56, width - 12, 24, height - 24
    draw.rectangle([left, top, right, bottom], outline=(90, 90, 100))
    values = [v for s in series.values() for v in s if math.isfinite(v) and (v > 0 or not log_scale)]
    if title:
        draw.text((left, 6), title, fill=(220, 220, 220))
    if not values:
        draw.text((left + 8, top + 8), "no loss values", fill=(220, 220, 220))
        return np.array(image)

    def f(v):
        return math.log10(v) if log_scale else v

    lo, hi = f(min(values)), f(max(values))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(s) for s in series.values())

    def point(i, v):
        x = left + (right - left) * (i / max(n - 1, 1))
        y = bottom - (bottom - top) * ((f(v) - lo) / (hi - lo))
        return (x, y)

    for label_value in (lo, hi):
        shown = 10 ** label_value if log_scale else label_value
        y = bottom - (bottom - top) * ((label_value - lo) / (hi - lo))
        draw.text((4, y - 6), f"{shown:.3g}", fill=(180, 180, 180))
    draw.text((right - 60, bottom + 6), f"{n} it", fill=(180, 180, 180))
    for k, (name, s) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        clean = [(i, v) for i, v in enumerate(s) if math.isfinite(v) and (v > 0 or not log_scale)]
        if len(clean) == 1:
            x, y = point(*clean[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        elif clean:
            faint = tuple(int(c * 0.45) for c in colour)
            draw.line([point(i, v) for i, v in clean], fill=faint, width=1)
            smooth = moving_average([v for _, v in clean], max(1, len(clean) // 20))
            draw.line([point(i, v) for (i, _), v in zip(clean, smooth)], fill=colour, width=2)
        draw.text((left + 8 + 80 * k, top + 6), name, fill=colour)
    return np.array(image)
