"""Splits that never put one lesion on both sides, stratified by class."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def _holdout(labels, groups, fraction, seed, candidates):
    """Pick about ``fraction`` of ``candidates`` as a stratified set of whole groups."""
    n_splits = max(2, int(round(1.0 / fraction)))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    idx = np.flatnonzero(candidates)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
        _, held = next(sgkf.split(idx, labels[idx], groups[idx]))
    out = np.zeros(len(labels), dtype=bool)
    out[idx[held]] = True
    return out


def _take_groups(members: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """About ``n`` of the ``members`` (a boolean mask), whole groups (lesions) at a time, in random order."""
    out = np.zeros(len(members), dtype=bool)
    taken = 0
    for g in rng.permutation(np.unique(groups[members])):
        if taken >= n:
            break
        idx = members & (groups == g)
        out |= idx
        taken += int(idx.sum())
    return out


def _holdout_per_class(labels, groups, per_class: int, seed, candidates):
    """About ``per_class`` images of every class from ``candidates``, whole groups at a time."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        out |= _take_groups(candidates & (labels == c), groups, per_class, rng)
    return out


def fold_test_split(labels, groups, folds: int, fold: int, seed: int = 0) -> np.ndarray:
    """Boolean: the images of ``fold`` of a stratified, lesion-grouped ``folds``-fold partition."""
    import warnings

    labels, groups = np.asarray(labels), np.asarray(groups).astype(str)
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, test = list(sgkf.split(np.zeros(len(labels)), labels, groups))[fold]
    out = np.zeros(len(labels), bool)
    out[test] = True
    return out


def make_splits(labels, groups, val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0,
                val_per_class: int | None = None, test_per_class: int | None = None,
                folds: int | None = None, fold: int | None = None) -> np.ndarray:
    """Return an array of ``"train"``/``"val"``/``"test"``: stratified by label, grouped by ``groups``.

    All images of one group (lesion) land in the same split, so a lesion photographed twice can't
    be learnt from one photo and tested on the other. ``*_per_class`` replace the fractions with a
    fixed count per class: balanced held-out sets, so the tail classes are measured on as many images
    as the head. With ``folds``, the test split is fold ``fold`` of a ``folds``-fold partition.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups).astype(str)
    split = np.full(len(labels), "train", dtype=object)
    everything = np.ones(len(labels), bool)
    if folds:  # cross-validation: the test split is one fold of a fixed partition (the same in every fold's run)
        test = fold_test_split(labels, groups, folds, fold or 0, seed)
        test_fraction = 1.0 / folds
    elif test_per_class:
        test = _holdout_per_class(labels, groups, test_per_class, seed, everything)
    else:
        test = _holdout(labels, groups, test_fraction, seed, everything)
    split[test] = "test"
    val = _holdout_per_class(labels, groups, val_per_class, seed + 1, ~test) if val_per_class \
        else _holdout(labels, groups, val_fraction / (1 - test_fraction), seed + 1, ~test)
    split[val] = "val"
    return split.astype(str)


def geometric_weights(imbalance_ratio: float, num_classes: int) -> np.ndarray:
    """Relative class sizes of a geometric long tail, head first: class i of C gets ``ratio ** (-i / (C - 1))``."""
    return np.array([imbalance_ratio ** (-i / max(1, num_classes - 1)) for i in range(num_classes)])


def geometric_counts(n_max: int, imbalance_ratio: float, num_classes: int, minimum: int = 1) -> list[int]:
    """Class sizes of a geometric long tail whose head has ``n_max`` images."""
    return [max(minimum, int(round(n_max * w))) for w in geometric_weights(imbalance_ratio, num_classes)]


def long_tail_subsample(labels, split, imbalance_ratio: float, seed: int = 0, order=None, groups=None) -> np.ndarray:
    """Thin the training split to a geometric long tail; returns a keep mask over all images.

    Classes are ranked by training count (or by ``order``); class i of C keeps about
    ``n_max * imbalance_ratio ** (-i / (C - 1))`` images, taking whole ``groups`` (lesions) at a time.
    Val/test are untouched, so evaluation stays balanced enough to measure the tail.
    """
    labels = np.asarray(labels)
    split = np.asarray(split)
    groups = np.asarray(groups).astype(str) if groups is not None else np.arange(len(labels)).astype(str)
    rng = np.random.default_rng(seed)
    train = split == "train"
    classes = np.unique(labels)
    counts = {c: int(np.sum(train & (labels == c))) for c in classes}
    ranked = list(order) if order is not None else sorted(classes, key=lambda c: -counts[c])
    keep = ~train
    for c, target in zip(ranked, geometric_counts(counts[ranked[0]], imbalance_ratio, len(ranked))):
        keep |= _take_groups(train & (labels == c), groups, target, rng)
    return keep
