"""Class fidelity of synthetic images: a judge independent of the classifier being trained (does another class
claim the image?), and how often the feature classifier reads an image as its own class."""
from __future__ import annotations

import numpy as np
import pandas as pd


class FidelityJudge:
    """Does a synthetic image show its class, in the eyes of a model other than the one being trained?

    ALIA-style two-sided confidence filter (Dunlap et al. 2023) on frozen features: a class-balanced
    logistic regression ``fit`` on real training features; ``decide`` drops an image that another class
    claims with probability >= ``reject_confidence`` (it shows the wrong lesion), and, with
    ``max_confidence``, one its own class claims above that (so easy it adds nothing new).
    """

    def __init__(self, reject_confidence: float = 0.5, max_confidence: float | None = None, C: float = 0.5):
        self.reject_confidence, self.max_confidence, self.C = reject_confidence, max_confidence, C

    def fit(self, feats: np.ndarray, labels: np.ndarray) -> "FidelityJudge":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, class_weight="balanced",
                                                                         max_iter=2000))
        self.model_.fit(feats, labels)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(feats)

    def decide(self, feats: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
        """``judge_proba`` (its own class's probability), ``judge_class``, ``judge_ok``, ``judge_reason``."""
        labels = np.asarray(labels)
        proba = self.predict_proba(feats)
        col = {int(c): i for i, c in enumerate(self.classes_)}
        own = np.array([proba[i, col[int(c)]] if int(c) in col else 0.0 for i, c in enumerate(labels)])
        other = proba.copy()
        for i, c in enumerate(labels):
            if int(c) in col:
                other[i, col[int(c)]] = -1.0
        wrong = other.max(axis=1) >= self.reject_confidence
        easy = own > self.max_confidence if self.max_confidence is not None else np.zeros(len(labels), bool)
        return pd.DataFrame({"judge_proba": own, "judge_class": self.classes_[proba.argmax(axis=1)],
                             "judge_ok": ~wrong & ~easy,
                             "judge_reason": np.where(wrong, "judged_other_class", np.where(easy, "too_easy", "ok"))})


def class_fidelity(model, synthetic, labels, val, classes: list) -> tuple[list, dict]:
    """Each synthetic image's class as the feature classifier reads it, and per class how often it reads a
    synthetic image as its own class beside how often it does so for the real held-out (validation) images.
    One view, as the OOD features are (without the 8 of ``classifier.tta``); ``val`` has ``images`` and ``labels``."""
    pred = model.logits(synthetic).argmax(1)
    val_pred = model.logits(val.images).argmax(1)
    def own(pred_of, truth, c):
        return float(np.mean(pred_of[truth == c] == c)) if np.any(truth == c) else None

    fidelity = {classes[c]: {"synthetic": own(pred, labels, c), "real_val": own(val_pred, val.labels, c)}
                for c in np.unique(labels)}
    return [classes[i] for i in pred], fidelity
