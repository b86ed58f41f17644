"""Splits that never put one lesion on both sides, stratified by class."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

log = logging.getLogger(__name__)


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


def make_splits(labels, groups, val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Return an array of ``"train"``/``"val"``/``"test"``: stratified by label, grouped by ``groups``.

    All images of one group (lesion) land in the same split, so a lesion photographed twice can't
    be learnt from one photo and tested on the other.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups).astype(str)
    split = np.full(len(labels), "train", dtype=object)
    test = _holdout(labels, groups, test_fraction, seed, np.ones(len(labels), bool))
    split[test] = "test"
    val = _holdout(labels, groups, val_fraction / (1 - test_fraction), seed + 1, ~test)
    split[val] = "val"
    for c in np.unique(labels):
        for name in ("train", "val", "test"):
            if not np.any((labels == c) & (split == name)):
                log.warning("class %s has no image in the %s split", c, name)
    return split.astype(str)


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
    n_max = counts[ranked[0]]
    keep = ~train
    for i, c in enumerate(ranked):
        target = max(1, int(round(n_max * imbalance_ratio ** (-i / max(1, len(ranked) - 1)))))
        members = train & (labels == c)
        taken = 0
        for g in rng.permutation(np.unique(groups[members])):
            if taken >= target:
                break
            idx = members & (groups == g)
            keep |= idx
            taken += int(idx.sum())
    return keep
