"""The label maths of the fairness metrics, in plain Python (no torch), so that tools which only count
labels (the benchmark-scale evaluation's report, steering_eval) use the same definitions as the nodes.

deviation ratio (Fair Diffusion / SDisc / RespoDiff): for K attribute classes with observed
frequencies p_k, ``max_k |p_k - 1/K| / (1 - 1/K)``; an image whose classifier scores tie counts
once for every tied class, an unreadable image (None) for none. steering.evaluation_metrics
re-exports every name here (the pack's nodes and tests import them from there).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence


class MetricInputError(ValueError):
    """Inputs a metric cannot measure (an empty batch, unpaired images, unknown labels...)."""


def image_classes(label) -> tuple:
    """The classes one image counts for: none (None), one, or every tied class."""
    if label is None:
        return ()
    if isinstance(label, (tuple, list, set, frozenset)):
        return tuple(label)
    return (label,)


def class_counts(labels: Sequence, classes: Sequence) -> dict:
    """n_k per class: the images whose label is class k, an image labelled with several tied
    classes (a tuple) counting for each; None labels (attribute not found) count for none."""
    if len(classes) < 2:
        raise MetricInputError(f"a fairness measure needs at least 2 attribute classes; got {list(classes)}")
    if len(set(classes)) != len(classes):
        raise MetricInputError(f"attribute classes must be distinct; got {list(classes)}")
    counts = Counter()
    for label in labels:
        found = image_classes(label)
        if len(set(found)) != len(found):
            raise MetricInputError(f"an image's tied classes must be distinct; got {list(found)}")
        counts.update(found)
    unknown = sorted(str(c) for c in counts if c not in classes)
    if unknown:
        raise MetricInputError(f"labels {unknown} are not among the attribute classes {list(classes)}")
    return {c: counts.get(c, 0) for c in classes}


def attribute_frequencies(labels: Sequence, classes: Sequence) -> dict:
    """p_k = n_k / sum_j n_j for each class (see class_counts for ties and unreadable images)."""
    counts = class_counts(labels, classes)
    total = sum(counts.values())
    if total == 0:
        raise MetricInputError("no labelled images: the deviation ratio of an empty batch is undefined")
    return {c: n / total for c, n in counts.items()}


def deviation_ratio(labels: Sequence, classes: Sequence) -> float:
    """max_k |p_k - 1/K| / (1 - 1/K) over the K classes."""
    freqs = attribute_frequencies(labels, classes)
    k = len(classes)
    return max(abs(p - 1 / k) for p in freqs.values()) / (1 - 1 / k)


def deviation_ratio_per_group(labels: Sequence, groups: Sequence, classes: Sequence) -> tuple[float, dict]:
    """The deviation ratio of each group (e.g. profession) of images and their unweighted mean:
    ``(mean, {group: ratio})``, groups in order of first appearance. A group without any
    labelled image has no ratio and is left out of the mean (as the reference's mean over
    professions skips it); it is reported as None."""
    if len(groups) != len(labels):
        raise MetricInputError(f"one group label per image is needed: {len(groups)} group labels for {len(labels)} "
                               "images")
    members: dict = {}
    for label, group in zip(labels, groups):
        members.setdefault(group, []).append(label)
    ratios = {}
    for group, group_labels in members.items():
        if sum(class_counts(group_labels, classes).values()) == 0:
            ratios[group] = None
        else:
            ratios[group] = deviation_ratio(group_labels, classes)
    defined = [r for r in ratios.values() if r is not None]
    if not defined:
        raise MetricInputError("no group has a labelled image: the deviation ratio is undefined")
    return sum(defined) / len(defined), ratios
