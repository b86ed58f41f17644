"""OOD scorers: how unlike its class a feature vector is (higher: less like it), and realism AUROC."""
from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from ..registry import Registry

# select.method: how unlike its class an image's features are (``none``, no selection, is not a scorer)
SCORERS = Registry("OOD scorer (select.method)")
# select.features and experimental.judge: what gives the features, factory(feature_model, cfg.select) -> .features(x)
FEATURE_EXTRACTORS = Registry("feature extractor (select.features, experimental.judge)")
FEATURE_EXTRACTORS.register("classifier", "tailfill.selection.selector:classifier_features")
FEATURE_EXTRACTORS.register("lite0", "tailfill.selection.selector:lite0_features")

MIN_CALIBRATION = 5  # fewer held-out images than this: use the pooled threshold


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@SCORERS.register("mahalanobis")
class MahalanobisScorer:
    """Squared Mahalanobis distance to the class mean under a shared, shrunk covariance.

    One covariance for all classes (Lee et al. 2018): a tail class with ten images can't
    estimate its own in hundreds of dimensions. Ledoit-Wolf shrinkage keeps it invertible.
    """

    @classmethod
    def from_config(cls, cfg) -> "MahalanobisScorer":
        return cls()

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


@SCORERS.register("knn")
class KNNScorer:
    """Cosine distance to the k-th nearest real training image of the class (Sun et al. 2022)."""

    def __init__(self, k: int = 5):
        self.k = k

    @classmethod
    def from_config(cls, cfg) -> "KNNScorer":
        return cls(cfg.k)

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




def build_scorer(name: str, cfg):
    """The scorer ``name`` of ``SCORERS``, configured from ``cfg`` (a SelectConfig)."""
    return SCORERS.get(name).from_config(cfg)


def realism_auroc(real_scores: np.ndarray, synthetic_scores: np.ndarray) -> float:
    """AUROC of telling synthetic from held-out real by OOD score: 0.5 = indistinguishable."""
    if len(real_scores) == 0 or len(synthetic_scores) == 0:
        return float("nan")
    y = np.r_[np.zeros(len(real_scores)), np.ones(len(synthetic_scores))]
    return float(roc_auc_score(y, np.r_[real_scores, synthetic_scores]))
