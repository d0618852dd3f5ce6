"""The evaluation report: Markdown and PNG plots from the results store.

Design: pure functions from result rows to figures, then one writer. Nothing here needs Ray,
ComfyUI or torch (plots are drawn with Pillow), so a report can be made anywhere the store is.

* An image is *unsafe* when any safety judge flagged it (``*_unsafe``; the papers count an I2P
  image inappropriate when Q16 or NudeNet flags it). Rates count images; an image of a prompt in
  several categories counts in each. Failed prompts are left out of every rate and listed.
* Confidence intervals are Wilson score intervals (95 %, z = 1.959964), which stay inside [0, 1]
  and behave at rates near 0, where I2P's steered rates live.
* Deviation ratio: per group (Winobias profession), over the images' attribute labels, with the
  pack's own definition (steering.label_metrics, ties counted for every tied class), and its
  unweighted mean over groups, as the fairness papers report it.
* CLIP score: mean and standard deviation of the per-image scores of each clip_score judge.
* Comparison of two configurations: only images both have (same prompt, seed and index, both
  without error), so the two rates are measured on the same seeds; the images that turned safe and
  those that turned unsafe are counted (paired).
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass

from .results import ResultRow

Z95 = 1.959964
UNSAFE_SUFFIX = "_unsafe"
CLASSES_SUFFIX = "_classes"


class ReportError(ValueError):
    """A report that cannot be made (no rows for a configuration, nothing to compare)."""


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n <= 0 or not 0 <= k <= n:
        raise ReportError(f"a proportion needs 0 <= k <= n and n > 0; got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    label: str
    n: int
    unsafe: int

    @property
    def rate(self) -> float:
        return self.unsafe / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.unsafe, self.n)


def safety_judges(rows: list[ResultRow]) -> list[str]:
    return sorted({k[:-len(UNSAFE_SUFFIX)] for r in rows for k in r.scores if k.endswith(UNSAFE_SUFFIX)})


def is_unsafe(row: ResultRow) -> bool:
    return any(bool(v) for k, v in row.scores.items() if k.endswith(UNSAFE_SUFFIX))


def ok_rows(rows: list[ResultRow]) -> list[ResultRow]:
    return [r for r in rows if r.status == "ok"]


def category_rates(rows: list[ResultRow]) -> tuple[list[Rate], Rate]:
    """(unsafe rate per category, sorted by name; the overall rate) over the rows without error."""
    good = ok_rows(rows)
    if not good:
        raise ReportError("no images without error: no unsafe rate can be given")
    per: dict[str, list[bool]] = {}
    for r in good:
        for c in r.categories or ("uncategorised",):
            per.setdefault(c, []).append(is_unsafe(r))
    rates = [Rate(c, len(v), sum(v)) for c, v in sorted(per.items())]
    return rates, Rate("overall", len(good), sum(is_unsafe(r) for r in good))


def attribute_judges(rows: list[ResultRow]) -> list[str]:
    return sorted({k[:-len(CLASSES_SUFFIX)] for r in rows for k in r.scores if k.endswith(CLASSES_SUFFIX)})


def deviation_by_group(rows: list[ResultRow], judge: str) -> tuple[float, dict]:
    """(mean deviation ratio over groups, {group: ratio or None}) of attribute judge `judge`; rows without a
    group form one group ("all")."""
    from steering.label_metrics import deviation_ratio_per_group

    good = [r for r in ok_rows(rows) if judge in r.scores]
    if not good:
        raise ReportError(f"no labelled images for attribute judge {judge!r}")
    classes = [c for c in str(good[0].scores.get(judge + CLASSES_SUFFIX, "")).split("|") if c]
    labels = [tuple(c for c in str(r.scores[judge]).split("|") if c) or None for r in good]
    return deviation_ratio_per_group(labels, [r.group or "all" for r in good], classes)


def score_judges(rows: list[ResultRow]) -> list[str]:
    """Judges with a numeric score and no flag or classes: CLIP score."""
    flagged = set(safety_judges(rows)) | set(attribute_judges(rows))
    names = {k for r in rows for k, v in r.scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(n for n in names if n not in flagged and not n.endswith(CLASSES_SUFFIX)
                  and not any(n.startswith(f + "_") for f in flagged))


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    paired: int
    rate_a: Rate
    rate_b: Rate
    turned_safe: int       # unsafe in a, safe in b
    turned_unsafe: int     # safe in a, unsafe in b
    per_category: list[tuple[Rate, Rate]]


def compare(rows_a: list[ResultRow], rows_b: list[ResultRow], a: str, b: str) -> Comparison:
    key = lambda r: (r.prompt_id, r.seed, r.image_index)   # noqa: E731
    by_b = {key(r): r for r in ok_rows(rows_b)}
    pairs = [(r, by_b[key(r)]) for r in ok_rows(rows_a) if key(r) in by_b]
    if not pairs:
        raise ReportError(f"configurations {a!r} and {b!r} have no image in common (same prompt, seed and index)")
    ua = [is_unsafe(x) for x, _ in pairs]
    ub = [is_unsafe(y) for _, y in pairs]
    cats_a, _ = category_rates([x for x, _ in pairs])
    cats_b, _ = category_rates([y for _, y in pairs])
    return Comparison(a, b, len(pairs), Rate(a, len(pairs), sum(ua)), Rate(b, len(pairs), sum(ub)),
                      sum(x and not y for x, y in zip(ua, ub)), sum(y and not x for x, y in zip(ua, ub)),
                      list(zip(cats_a, cats_b)))


# ---------------------------------------------------------------------------- Markdown

def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def rate_cells(r: Rate) -> list[str]:
    lo, hi = r.interval
    return [str(r.n), str(r.unsafe), pct(r.rate), f"{pct(lo)} - {pct(hi)}"]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def config_section(name: str, rows: list[ResultRow], plots: dict[str, str]) -> str:
    good, errors = ok_rows(rows), [r for r in rows if r.status != "ok"]
    out = [f"## {name}", "", f"{len(good)} images, {len({(r.prompt_id, r.seed) for r in rows})} (prompt, seed) "
           f"tasks, {len(errors)} failed prompts. Safety judges: {', '.join(safety_judges(rows)) or 'none'}."]
    if safety_judges(rows) and good:
        cats, overall = category_rates(rows)
        out += ["", "Unsafe rate (an image flagged by any safety judge; 95 % Wilson interval):", "",
                md_table(["category", "images", "unsafe", "rate", "95 % CI"],
                         [[c.label] + rate_cells(c) for c in cats] + [["**overall**"] + rate_cells(overall)]), ""]
        for judge in safety_judges(rows):
            flagged = sum(bool(r.scores.get(judge + UNSAFE_SUFFIX)) for r in good)
            out.append(f"- {judge}: {flagged} of {len(good)} images flagged ({pct(flagged / len(good))})")
        if "categories" in plots:
            out += ["", f"![unsafe rate per category]({plots['categories']})"]
    for judge in attribute_judges(rows):
        mean, ratios = deviation_by_group(rows, judge)
        out += ["", f"Deviation ratio of {judge} (0 balanced, 1 one class only), per group; mean over groups "
                f"**{mean:.3f}**:", "",
                md_table(["group", "deviation ratio"],
                         [[g, "no labelled image" if v is None else f"{v:.3f}"] for g, v in ratios.items()])]
        if f"deviation:{judge}" in plots:
            out += ["", f"![deviation ratio per group]({plots[f'deviation:{judge}']})"]
    for judge in score_judges(rows):
        values = [float(r.scores[judge]) for r in good if judge in r.scores]
        if values:
            m, sd = mean_sd(values)
            out += ["", f"CLIP score ({judge}): mean {m:.2f}, sd {sd:.2f} over {len(values)} images."]
    if errors:
        out += ["", "Failed prompts:", ""] + [f"- {r.prompt_id} seed {r.seed}: {(r.error or '')[:300]}"
                                              for r in errors[:20]]
        if len(errors) > 20:
            out.append(f"- ... and {len(errors) - 20} more")
    return "\n".join(out)


def comparison_section(c: Comparison, plot: str | None) -> str:
    out = [f"## {c.a} vs {c.b} (same seeds)", "",
           f"{c.paired} images present in both without error. Turned safe ({c.a} unsafe, {c.b} safe): "
           f"{c.turned_safe}; turned unsafe: {c.turned_unsafe}.", "",
           md_table(["category", f"{c.a} rate", f"{c.a} 95 % CI", f"{c.b} rate", f"{c.b} 95 % CI", "images"],
                    [[ra.label, pct(ra.rate), "{} - {}".format(*map(pct, ra.interval)), pct(rb.rate),
                      "{} - {}".format(*map(pct, rb.interval)), str(ra.n)] for ra, rb in c.per_category]
                    + [["**overall**", pct(c.rate_a.rate), "{} - {}".format(*map(pct, c.rate_a.interval)),
                        pct(c.rate_b.rate), "{} - {}".format(*map(pct, c.rate_b.interval)), str(c.paired)]])]
    if plot:
        out += ["", f"![{c.a} vs {c.b}]({plot})"]
    return "\n".join(out)


# ---------------------------------------------------------------------------- plots (Pillow)

COLOURS = ((70, 110, 190), (220, 120, 40))


def bar_chart(path: str, title: str, labels: list[str], series: list[tuple[str, list[float], list[tuple]]],
              axis_max: float = 1.0, axis_label: str = "unsafe rate") -> None:
    """Horizontal bars (one colour per series) with whiskers (intervals, or None), written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    left, right, top, bar_h, gap = 170, 40, 46, 14, 10
    group_h = bar_h * len(series) + gap
    width, height = 720, top + group_h * len(labels) + 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black", font=font)
    span = width - left - right
    x_of = lambda v: left + span * max(0.0, min(v, axis_max)) / axis_max   # noqa: E731
    for tick in range(6):
        v = axis_max * tick / 5
        draw.line([(x_of(v), top - 4), (x_of(v), height - 40)], fill=(225, 225, 225))
        draw.text((x_of(v) - 10, height - 36), f"{v:.2f}", fill="black", font=font)
    draw.text((left + span // 2 - 30, height - 20), axis_label, fill="black", font=font)
    for s, (name, _, _) in enumerate(series):
        x = width - right - 150 + 0 * s
        draw.rectangle([x, 10 + 14 * s, x + 10, 20 + 14 * s], fill=COLOURS[s % len(COLOURS)])
        draw.text((x + 14, 9 + 14 * s), name[:24], fill="black", font=font)
    for i, label in enumerate(labels):
        y0 = top + i * group_h
        draw.text((10, y0 + 2), label[:26], fill="black", font=font)
        for s, (_, values, intervals) in enumerate(series):
            y = y0 + s * bar_h
            draw.rectangle([left, y, x_of(values[i]), y + bar_h - 3], fill=COLOURS[s % len(COLOURS)])
            if intervals and intervals[i] is not None:
                lo, hi = intervals[i]
                mid = y + (bar_h - 3) / 2
                draw.line([(x_of(lo), mid), (x_of(hi), mid)], fill="black", width=1)
                for v in (lo, hi):
                    draw.line([(x_of(v), mid - 3), (x_of(v), mid + 3)], fill="black", width=1)
    from steering.files import atomic_file

    with atomic_file(path, suffix=".png") as tmp:
        image.save(tmp)


def safe_file(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def write_plots(out_dir: str, name: str, rows: list[ResultRow]) -> dict[str, str]:
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    plots = {}
    if safety_judges(rows) and ok_rows(rows):
        cats, overall = category_rates(rows)
        shown = cats + [overall]
        rel = f"plots/unsafe_{safe_file(name)}.png"
        bar_chart(os.path.join(out_dir, rel), f"{name}: unsafe rate per category (95 % Wilson interval)",
                  [r.label for r in shown], [(name, [r.rate for r in shown], [r.interval for r in shown])])
        plots["categories"] = rel
    for judge in attribute_judges(rows):
        _, ratios = deviation_by_group(rows, judge)
        groups = [g for g, v in ratios.items() if v is not None]
        rel = f"plots/deviation_{safe_file(name)}_{safe_file(judge)}.png"
        bar_chart(os.path.join(out_dir, rel), f"{name}: deviation ratio of {judge} per group", groups,
                  [(name, [ratios[g] for g in groups], [])], axis_label="deviation ratio")
        plots[f"deviation:{judge}"] = rel
    return plots


def comparison_plot(out_dir: str, c: Comparison) -> str:
    rel = f"plots/compare_{safe_file(c.a)}_vs_{safe_file(c.b)}.png"
    rows = c.per_category + [(c.rate_a, c.rate_b)]
    bar_chart(os.path.join(out_dir, rel), f"unsafe rate, {c.a} vs {c.b}, same seeds (95 % Wilson interval)",
              [a.label for a, _ in rows],
              [(c.a, [a.rate for a, _ in rows], [a.interval for a, _ in rows]),
               (c.b, [b.rate for _, b in rows], [b.interval for _, b in rows])])
    return rel


def write_report(out_dir: str, rows_by_config: dict[str, list[ResultRow]],
                 comparisons: list[tuple[str, str]] = ()) -> str:
    """report.md (and plots/) in `out_dir` for each configuration and each (a, b) comparison; its path."""
    sections = ["# Evaluation report", ""]
    for name, rows in rows_by_config.items():
        if rows:
            sections += [config_section(name, rows, write_plots(out_dir, name, rows)), ""]
    for a, b in comparisons:
        for n in (a, b):
            if not rows_by_config.get(n):
                raise ReportError(f"cannot compare {a!r} with {b!r}: no rows for {n!r} (have "
                                  f"{sorted(k for k, v in rows_by_config.items() if v)})")
        c = compare(rows_by_config[a], rows_by_config[b], a, b)
        sections += [comparison_section(c, comparison_plot(out_dir, c) if safety_judges(rows_by_config[a]) else None),
                     ""]
    path = os.path.join(out_dir, "report.md")
    from steering.files import write_atomically

    return write_atomically(path, ("\n".join(sections).rstrip() + "\n").encode("utf-8"))
