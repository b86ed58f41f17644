"""What a classifier trains on: real images, plus synthetic ones or repeated real ones, and how often each
is drawn.

    train = with_synthetic(real_x, real_y, synth_x, synth_y, max_ratio=None)   # real + used synthetic
    control = with_repeated_real(real_x, real_y, deficits, seed)               # the honest control
    p = draw_probabilities(train.labels, "balanced", train.synthetic, synthetic_share=0.5)

Real-anchored mixing: with balanced sampling, a tail class filled from 6 real to 60 images takes
~90 % of its draws from synthetic images, so the classifier sees its real images ten times less
often than without augmentation. ``synthetic_share`` caps the synthetic share of each class's draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.rows import concat_rows
from ..utils.training import class_power_probabilities

# classifier sampler -> class power (p(class c) ~ n_c ** power); "natural" draws every image equally
SAMPLER_POWER = {"natural": 1.0, "sqrt": 0.5, "balanced": 0.0}


@dataclass
class TrainingSet:
    images: np.ndarray      # (N, H, W, 3) uint8: an ndarray, or rows on disk (data.rows)
    labels: np.ndarray      # (N,) class indices
    synthetic: np.ndarray   # (N,) bool: generated (or, for the control, repeated) images
    source_labels: np.ndarray | None = None  # (N,) for soft labels: the class an image was translated from
    target_weight: np.ndarray | None = None  # (N,) weight of ``labels`` in the soft label (1: a hard label)

    @classmethod
    def real(cls, images: np.ndarray, labels: np.ndarray) -> "TrainingSet":
        return cls(images, np.asarray(labels), np.zeros(len(labels), bool))

    def __len__(self) -> int:
        return len(self.labels)

    def soft_labels(self) -> tuple | None:
        """(source_labels, target_weight) when any label is soft, else None."""
        if self.target_weight is None or np.all(self.target_weight == 1.0):
            return None
        return self.source_labels, self.target_weight

    def add(self, images: np.ndarray, labels: np.ndarray, source_labels: np.ndarray | None = None,
            target_weight: np.ndarray | None = None) -> "TrainingSet":
        """These images appended as synthetic ones (with soft labels when ``target_weight`` is given)."""
        if len(labels) == 0:
            return self
        labels = np.asarray(labels)
        mine_src = self.labels if self.source_labels is None else self.source_labels
        mine_w = np.ones(len(self.labels)) if self.target_weight is None else self.target_weight
        new_src = labels if source_labels is None else np.asarray(source_labels)
        new_w = np.ones(len(labels)) if target_weight is None else np.asarray(target_weight, float)
        # real rows on disk stay there: the set reads both parts batch by batch
        return TrainingSet(concat_rows(self.images, images), np.concatenate([self.labels, labels]),
                           np.concatenate([self.synthetic, np.ones(len(labels), bool)]),
                           np.concatenate([mine_src, new_src]), np.concatenate([mine_w, new_w]))


def translation_weight(strength: np.ndarray, gamma: float) -> np.ndarray:
    """Diff-Mix's soft label for an image translated from its context's class at SDEdit ``strength`` s:
    the target class gets s ** gamma, the source class the rest (strength 1: a new lesion, a hard label)."""
    return np.clip(np.asarray(strength, float), 0, 1) ** gamma


def cap_per_class(labels: np.ndarray, real_counts: np.ndarray, max_ratio: float | None) -> np.ndarray:
    """Boolean mask keeping, in order, at most ``max_ratio`` x the real count of each class (None: all)."""
    labels = np.asarray(labels)
    keep = np.ones(len(labels), bool)
    if max_ratio is None:
        return keep
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep[idx[int(max_ratio * real_counts[c]):]] = False
    return keep


def with_synthetic(real_x: np.ndarray, real_y: np.ndarray, synth_x: np.ndarray | None, synth_y: np.ndarray,
                   max_ratio: float | None = None, source_labels: np.ndarray | None = None,
                   target_weight: np.ndarray | None = None) -> TrainingSet:
    """Real images plus the synthetic ones (in their order), at most ``max_ratio`` x real per class;
    ``source_labels``/``target_weight`` give the synthetic ones soft labels (see :func:`translation_weight`)."""
    base = TrainingSet.real(real_x, real_y)
    if synth_x is None or len(synth_y) == 0:
        return base
    synth_y = np.asarray(synth_y)
    keep = cap_per_class(synth_y, np.bincount(real_y, minlength=int(max(real_y.max(), synth_y.max())) + 1), max_ratio)
    return base.add(synth_x[keep], synth_y[keep], None if source_labels is None else np.asarray(source_labels)[keep],
                    None if target_weight is None else np.asarray(target_weight)[keep])


def synthetic_labels(used, classes: list, cfg) -> dict:
    """Keyword arguments of :func:`with_synthetic` for soft labels of translated images, from the used rows of a
    generation plan/manifest (``label``, ``source_class``, ``strength``) when ``cfg.soft_labels`` (an
    ExperimentalConfig) asks for them; empty otherwise."""
    if not cfg.soft_labels or not len(used):
        return {}
    source = np.array([classes.index(c) for c in used["source_class"]])
    return {"source_labels": source, "target_weight": translation_weight(used["strength"].to_numpy(float),
                                                                         cfg.soft_label_gamma)}


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class, at least 1: a class of synthetic images only still gets drawn and a finite prior."""
    return np.maximum(np.bincount(np.asarray(labels, int), minlength=num_classes), 1).astype(np.float64)


def with_repeated_real(real_x: np.ndarray, real_y: np.ndarray, deficits: dict[int, int], seed: int) -> TrainingSet:
    """The real-oversampling control: each class's deficit filled by repeating its own real images."""
    rng = np.random.default_rng(seed)
    extra = np.concatenate([rng.choice(np.flatnonzero(real_y == c), d) for c, d in deficits.items()]
                           or [np.zeros(0, int)]).astype(int)
    return TrainingSet.real(real_x, real_y).add(real_x[extra], real_y[extra])


def draw_probabilities(labels: np.ndarray, sampler: str, synthetic: np.ndarray | None = None,
                       synthetic_share: float | None = None, synthetic_rebalances: bool = True) -> np.ndarray | None:
    """Per-image draw probabilities for a classifier ``sampler`` (natural | sqrt | balanced); None means a
    plain shuffle. ``synthetic_share`` caps the share of each class's draws that go to synthetic images.
    ``synthetic_rebalances=False`` weighs each class by its real images alone: synthetic ones then vary a
    class's draws without making it more frequent (for losses that rebalance by themselves)."""
    if sampler not in SAMPLER_POWER:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLER_POWER)}")
    labels = np.asarray(labels)
    has_synthetic = synthetic is not None and bool(np.any(synthetic))
    capped = synthetic_share is not None and has_synthetic
    real_mass = not synthetic_rebalances and has_synthetic
    if sampler == "natural" and not capped and not real_mass:
        return None
    # without rebalancing, class c is drawn ~ (its real count) ** power, spread over all its rows
    mass = class_counts(labels[~np.asarray(synthetic, bool)], int(labels.max()) + 1) if real_mass else None
    p = class_power_probabilities(labels, SAMPLER_POWER[sampler], mass)
    if not capped:
        return p
    synthetic = np.asarray(synthetic, bool)
    out = p.copy()
    for c in np.unique(labels):
        cls, syn = labels == c, (labels == c) & synthetic
        n_syn, n_all = syn.sum(), cls.sum()
        if n_syn == 0 or n_syn == n_all:
            continue
        share = min(synthetic_share, n_syn / n_all)  # a cap: never more synthetic than there is
        mass = p[cls].sum()
        out[syn] = mass * share / n_syn
        out[cls & ~synthetic] = mass * (1 - share) / (n_all - n_syn)
    return out / out.sum()
