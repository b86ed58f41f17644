"""OOD post-selection: keep synthetic images that look like real images of their class.

Reads like scikit-learn: ``fit`` on real training features, ``calibrate`` on held-out real
features, then ``score`` / ``select`` synthetic ones.

    selector = OODSelector(MahalanobisScorer(), real_quantile=0.95)
    selector.fit(train_feats, train_labels).calibrate(val_feats, val_labels)
    table = selector.select(synth_feats, synth_labels, source_index=src)

Higher scores mean *less* like the class. A synthetic image is kept when its score is within
the threshold (the ``real_quantile`` of held-out real scores of its class, so about that share of
real images would pass), it is among the best ``keep_fraction`` of its class, and it is not a
near-copy of a training image: its centred cosine similarity to the nearest training image (its own
source context excluded) must not exceed ``near_duplicate_similarity`` -- by default ("auto") the 99th
percentile of the same similarity for held-out real images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

MIN_CALIBRATION = 5  # fewer held-out images than this: use the pooled threshold


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class MahalanobisScorer:
    """Squared Mahalanobis distance to the class mean under a shared, shrunk covariance.

    One covariance for all classes (Lee et al. 2018): a tail class with ten images can't
    estimate its own in hundreds of dimensions. Ledoit-Wolf shrinkage keeps it invertible.
    """

    def fit(self, feats: np.ndarray, labels: np.ndarray) -> "MahalanobisScorer":
        self.classes_ = np.unique(labels)
        self.means_ = {c: feats[labels == c].mean(axis=0) for c in self.classes_}
        centred = np.concatenate([feats[labels == c] - self.means_[c] for c in self.classes_])
        self.precision_ = LedoitWolf().fit(centred).precision_
        return self

    def score(self, feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = np.empty(len(feats))
        for c in np.unique(labels):
            d = feats[labels == c] - self.means_[c]
            out[labels == c] = np.einsum("ij,jk,ik->i", d, self.precision_, d)
        return out


class KNNScorer:
    """Cosine distance to the k-th nearest real training image of the class (Sun et al. 2022)."""

    def __init__(self, k: int = 5):
        self.k = k

    def fit(self, feats: np.ndarray, labels: np.ndarray) -> "KNNScorer":
        feats = _l2n(feats)
        self.classes_ = np.unique(labels)
        self.bank_ = {c: feats[labels == c] for c in self.classes_}
        return self

    def score(self, feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
        feats = _l2n(feats)
        out = np.empty(len(feats))
        for c in np.unique(labels):
            sims = feats[labels == c] @ self.bank_[c].T
            k = min(self.k, sims.shape[1])
            out[labels == c] = 1.0 - np.sort(sims, axis=1)[:, -k]
        return out


def make_scorer(method: str, k: int = 5):
    if method == "mahalanobis":
        return MahalanobisScorer()
    if method == "knn":
        return KNNScorer(k)
    raise ValueError(f"unknown OOD scorer {method!r}; choose mahalanobis or knn")


class OODSelector:
    """Fit on real training features, calibrate on held-out real ones, select synthetic ones."""

    def __init__(self, scorer, real_quantile: float = 0.95, keep_fraction: float = 1.0,
                 near_duplicate_similarity: float | str = "auto"):
        self.scorer = scorer
        self.real_quantile = real_quantile
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
        pooled = float(np.quantile(scores, self.real_quantile))
        self.thresholds_ = {}
        for c in self.scorer.classes_:
            s = self.calibration_scores_.get(int(c), np.array([]))
            self.thresholds_[int(c)] = float(np.quantile(s, self.real_quantile)) if len(s) >= MIN_CALIBRATION \
                else pooled
        return self

    def score(self, feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.scorer.score(feats, labels)

    def nearest_train_similarity(self, feats: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity to the closest training image, skipping ``exclude[i]`` (the source context)."""
        sims = _l2n(feats - self.centre_) @ self.train_bank_.T
        if exclude is not None:
            rows = np.flatnonzero(np.asarray(exclude) >= 0)
            sims[rows, np.asarray(exclude)[rows]] = -np.inf
        return sims.max(axis=1) if sims.shape[1] else np.full(len(feats), -np.inf)

    def select(self, feats: np.ndarray, labels: np.ndarray, source_index: np.ndarray | None = None) -> pd.DataFrame:
        """Score and decide; returns one row per image: score, threshold, similarity, kept, reason."""
        labels = np.asarray(labels)
        scores = self.score(feats, labels)
        thresholds = np.array([self.thresholds_[int(c)] for c in labels])
        similarity = self.nearest_train_similarity(feats, source_index)
        reason = np.where(similarity > self.duplicate_threshold_, "near_duplicate",
                          np.where(scores > thresholds, "out_of_distribution", ""))
        for c in np.unique(labels):  # keep_fraction: the best-scoring share of each class
            idx = np.flatnonzero(labels == c)
            n_keep = int(np.ceil(self.keep_fraction * len(idx)))
            worst = idx[np.argsort(scores[idx])][n_keep:]
            reason[worst] = np.where(reason[worst] == "", "below_keep_fraction", reason[worst])
        return pd.DataFrame({"score": scores, "threshold": thresholds, "train_similarity": similarity,
                             "kept": reason == "", "reason": np.where(reason == "", "kept", reason)})


def realism_auroc(real_scores: np.ndarray, synthetic_scores: np.ndarray) -> float:
    """AUROC of telling synthetic from held-out real by OOD score: 0.5 = indistinguishable."""
    if len(real_scores) == 0 or len(synthetic_scores) == 0:
        return float("nan")
    y = np.r_[np.zeros(len(real_scores)), np.ones(len(synthetic_scores))]
    return float(roc_auc_score(y, np.r_[real_scores, synthetic_scores]))
