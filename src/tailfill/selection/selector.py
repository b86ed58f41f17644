"""OOD post-selection: keep synthetic images that look like real images of their class.

Reads like scikit-learn: ``fit`` on real training features, ``calibrate`` on held-out real
features, then ``score`` / ``decide`` on synthetic ones.

    selector = OODSelector(MahalanobisScorer(), real_quantile=0.95)
    selector.fit(train_feats, train_labels).calibrate(val_feats, val_labels)
    table = selector.decide(synth_feats, synth_labels, source_index=src)

Higher scores mean *less* like the class. The filters, each a column of the decision table:

- ``within_threshold``: the score is within the class's threshold, the ``real_quantile`` of held-out
  real scores of the class (so about that share of real images would pass);
- ``too_typical`` (only with ``min_real_quantile``): the score is *below* that quantile of the held-out
  real scores: closer to the class mean than almost every real image. Hazy, low-contrast lesions land
  there (realism AUROC below 0.5): a classifier learns the class's average from them, not a lesion;
- ``within_keep_fraction``: the image is among the best-scoring ``keep_fraction`` of its class;
- ``near_copy``: its centred cosine similarity to the nearest training image (its own source context
  excluded) exceeds ``near_duplicate_similarity`` -- by default ("auto") the 99th percentile of the
  same similarity for held-out real images.

With ``experimental.judge``, a :class:`FidelityJudge` (a model independent of the classifier being trained,
by default frozen ImageNet EfficientNet-Lite0 features) adds ``judge_ok``: an image another class
claims confidently is not eligible either. ``select.features: lite0`` scores OOD on those frozen
features too. An image passing every filter is ``eligible``; :func:`choose_for_deficits` then marks which eligible
images are ``used`` in training (the best-scoring ones, up to each class's deficit).
:func:`select_synthetic` is the whole step as the pipeline and the benchmark run it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .judge import FidelityJudge
from .scorers import FEATURE_EXTRACTORS, MIN_CALIBRATION, _l2n, build_scorer, realism_auroc


class OODSelector:
    """Fit on real training features, calibrate on held-out real ones, select synthetic ones."""

    def __init__(self, scorer, real_quantile: float = 0.95, keep_fraction: float = 1.0,
                 near_duplicate_similarity: float | str = "auto", min_real_quantile: float | None = None):
        self.scorer = scorer
        self.real_quantile = real_quantile
        self.min_real_quantile = min_real_quantile
        self.keep_fraction = keep_fraction
        self.near_duplicate_similarity = near_duplicate_similarity

    def fit(self, feats: np.ndarray, labels: np.ndarray) -> "OODSelector":
        self.scorer.fit(feats, labels)
        # centred before cosine: post-ReLU features all point one way and look alike uncentred
        self.centre_ = feats.mean(axis=0)
        self.train_bank_ = _l2n(feats - self.centre_)
        return self

    def calibrate(self, feats: np.ndarray, labels: np.ndarray) -> "OODSelector":
        """Per-class thresholds from held-out *real* images (never the test split)."""
        scores = self.scorer.score(feats, labels)
        if self.near_duplicate_similarity == "auto":
            # a synthetic image closer to a training image than 99 % of held-out real images are is a copy
            self.duplicate_threshold_ = float(np.quantile(self.nearest_train_similarity(feats), 0.99))
        else:
            self.duplicate_threshold_ = float(self.near_duplicate_similarity)
        self.calibration_scores_ = {int(c): scores[labels == c] for c in np.unique(labels)}
        self.thresholds_ = self._quantiles(scores, self.real_quantile)
        # the lower bound: -inf (none) unless min_real_quantile asks for one
        self.lower_thresholds_ = self._quantiles(scores, self.min_real_quantile) if self.min_real_quantile is not None \
            else {int(c): -np.inf for c in self.scorer.classes_}
        return self

    def _quantiles(self, scores: np.ndarray, q: float) -> dict[int, float]:
        """The ``q`` quantile of each class's held-out real scores (the pooled one for a class with too few)."""
        pooled = float(np.quantile(scores, q))
        out = {}
        for c in self.scorer.classes_:
            s = self.calibration_scores_.get(int(c), np.array([]))
            out[int(c)] = float(np.quantile(s, q)) if len(s) >= MIN_CALIBRATION else pooled
        return out

    def score(self, feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.scorer.score(feats, labels)

    def nearest_train_similarity(self, feats: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity to the closest training image, skipping ``exclude[i]`` (the source context)."""
        sims = _l2n(feats - self.centre_) @ self.train_bank_.T
        if exclude is not None:
            rows = np.flatnonzero(np.asarray(exclude) >= 0)
            sims[rows, np.asarray(exclude)[rows]] = -np.inf
        return sims.max(axis=1) if sims.shape[1] else np.full(len(feats), -np.inf)

    def decide(self, feats: np.ndarray, labels: np.ndarray, source_index: np.ndarray | None = None) -> pd.DataFrame:
        """Score and apply the filters; one row per image (see the module docstring)."""
        labels = np.asarray(labels)
        scores = self.score(feats, labels)
        thresholds = np.array([self.thresholds_[int(c)] for c in labels])
        similarity = self.nearest_train_similarity(feats, source_index)
        near_copy = similarity > self.duplicate_threshold_
        within_threshold = scores <= thresholds
        too_typical = scores < np.array([self.lower_thresholds_[int(c)] for c in labels])
        within_fraction = np.zeros(len(labels), bool)
        for c in np.unique(labels):  # keep_fraction: the best-scoring share of each class (of the not too typical)
            idx = np.flatnonzero((labels == c) & ~too_typical)
            within_fraction[idx[np.argsort(scores[idx], kind="stable")][:int(np.ceil(self.keep_fraction * len(idx)))]] = True
        reason = np.select([near_copy, ~within_threshold, too_typical, ~within_fraction],
                           ["near_copy", "out_of_distribution", "too_typical", "below_keep_fraction"], "eligible")
        return pd.DataFrame({"score": scores, "threshold": thresholds, "train_similarity": similarity,
                             "within_threshold": within_threshold, "too_typical": too_typical,
                             "within_keep_fraction": within_fraction, "near_copy": near_copy,
                             "eligible": reason == "eligible", "reason": reason})


def choose_for_deficits(decisions: pd.DataFrame, labels: np.ndarray, deficits: dict[int, int],
                        fill_fraction: float = 1.0) -> np.ndarray:
    """Which synthetic images training uses: per class, the best-scoring *eligible* images, at most
    ``fill_fraction`` x its deficit (never repeated: a class with fewer eligible images gets fewer)."""
    labels = np.asarray(labels)
    eligible, scores = decisions["eligible"].to_numpy(bool), decisions["score"].to_numpy(float)
    used = np.zeros(len(labels), bool)
    for c, deficit in deficits.items():
        idx = np.flatnonzero((labels == c) & eligible)
        used[idx[np.argsort(scores[idx], kind="stable")][:int(round(fill_fraction * deficit))]] = True
    return used


def classifier_features(feature_model, cfg):
    """``select.features: classifier``: the baseline classifier's own features."""
    return feature_model


def lite0_features(feature_model, cfg):
    """``select.features: lite0``: frozen ImageNet EfficientNet-Lite0 features at ``cfg.feature_size`` px, cached."""
    from ..classifier.pretrained import PretrainedFeatures

    return _CachedFeatures(PretrainedFeatures("lite0", cfg.feature_size))


def select_synthetic(feature_model, train: tuple, val: tuple, synthetic: np.ndarray, synthetic_labels: np.ndarray,
                     source_index: np.ndarray, deficits: dict[int, int], cfg, classes: list, experimental):
    """The post-selection step: ``(decisions, calibration)``.

    ``feature_model`` maps uint8 images to features (``.features``); ``train`` and ``val`` are real
    ``(images, labels)``; ``cfg`` is a SelectConfig, ``experimental`` an ExperimentalConfig (its keep_fraction,
    min_real_quantile, fill_fraction and judge options). ``decisions`` has one row per synthetic image:
    the filter columns of :meth:`OODSelector.decide` (and :meth:`FidelityJudge.decide` with a judge) plus
    ``used``. ``calibration`` holds the per-class
    thresholds, held-out real scores and realism AUROC by class name (empty for ``method: none``).
    """
    x = experimental
    labels = np.asarray(synthetic_labels)
    (tr_x, tr_y), (va_x, va_y) = train, val
    made, classifier_model = {}, feature_model

    def extractor(name: str):  # one per name: lite0 features serve the OOD scores and the judge alike
        if name not in made:
            made[name] = FEATURE_EXTRACTORS.get(name)(classifier_model, cfg)
        return made[name]

    feature_model = extractor(cfg.features)
    if cfg.method == "none":
        n = len(labels)
        table = pd.DataFrame({"score": np.zeros(n), "threshold": np.inf, "train_similarity": np.nan,
                              "within_threshold": True, "too_typical": False, "within_keep_fraction": True, "near_copy": False,
                              "eligible": True, "reason": "eligible"})
        calibration = {}
    else:
        selector = OODSelector(build_scorer(cfg.method, cfg), cfg.real_quantile, x.keep_fraction,
                               cfg.near_duplicate_similarity, x.min_real_quantile)
        va_f = feature_model.features(va_x)
        selector.fit(feature_model.features(tr_x), tr_y).calibrate(va_f, va_y)
        table = selector.decide(feature_model.features(synthetic), labels, source_index=source_index)
        val_scores = selector.score(va_f, va_y)
        calibration = {
            "thresholds": {classes[c]: t for c, t in selector.thresholds_.items()},
            "val_scores": {classes[c]: s.tolist() for c, s in selector.calibration_scores_.items()},
            "realism_auroc": {classes[c]: realism_auroc(val_scores[va_y == c], table["score"].to_numpy()[labels == c])
                              for c in np.unique(labels)}}
        if x.min_real_quantile is not None:
            calibration["lower_thresholds"] = {classes[c]: t for c, t in selector.lower_thresholds_.items()}
    if x.judge is not None:  # drop what an independent model says is another class (or too easy)
        judge_model = extractor(x.judge)
        judge = FidelityJudge(x.judge_reject_confidence, x.judge_max_confidence)
        judge.fit(judge_model.features(tr_x), tr_y)
        verdict = judge.decide(judge_model.features(synthetic), labels)
        for col in verdict.columns:
            table[col] = verdict[col].to_numpy()
        rejected = table["eligible"].to_numpy() & ~table["judge_ok"].to_numpy()
        table.loc[rejected, "reason"] = table.loc[rejected, "judge_reason"]
        table["eligible"] = table["eligible"].to_numpy() & table["judge_ok"].to_numpy()
        from ..evaluation.metrics import balanced_accuracy

        val_pred = judge.classes_[judge.predict_proba(judge_model.features(va_x)).argmax(axis=1)]
        calibration["judge_val_balanced_accuracy"] = balanced_accuracy(np.asarray(va_y), val_pred, len(classes))
    table["used"] = choose_for_deficits(table, labels, deficits, x.fill_fraction)
    return table, calibration


class _CachedFeatures:
    """An extractor's ``.features``, computed once per image array (the same sets are asked for twice)."""

    def __init__(self, extractor):
        self.extractor, self.cache = extractor, {}

    def features(self, images):
        if id(images) not in self.cache:  # the array is kept with its features, so its id stays its own
            self.cache[id(images)] = (images, self.extractor.features(images))
        return self.cache[id(images)][1]
