"""Evaluation: the ISIC metric (balanced multiclass accuracy), per-class scores, intervals, submissions."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import confusion_matrix, roc_auc_score


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    recalls = [np.mean(y_pred[y_true == c] == c) for c in range(num_classes) if np.any(y_true == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list) -> dict:
    """Balanced accuracy (mean per-class recall, ISIC 2019's official metric) and per-class scores."""
    y_true = np.asarray(y_true)
    pred = proba.argmax(axis=1)
    k = len(classes)
    cm = confusion_matrix(y_true, pred, labels=list(range(k)))
    per_class = {}
    for c, name in enumerate(classes):
        tp, support, predicted = cm[c, c], cm[c].sum(), cm[:, c].sum()
        recall = tp / support if support else float("nan")
        precision = tp / predicted if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if support and (precision + recall) else 0.0
        binary = y_true == c
        auc = roc_auc_score(binary, proba[:, c]) if 0 < binary.sum() < len(binary) else float("nan")
        per_class[name] = {"recall": float(recall), "precision": float(precision), "f1": float(f1),
                           "auc": float(auc), "support": int(support)}
    recalls = [v["recall"] for v in per_class.values() if v["support"]]
    return {"balanced_accuracy": float(np.mean(recalls)), "accuracy": float(np.mean(pred == y_true)),
            "macro_f1": float(np.mean([v["f1"] for v in per_class.values() if v["support"]])),
            "per_class": per_class, "confusion_matrix": cm.tolist()}


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t confidence interval over seeds: (mean, low, high); one seed gives (v, nan, nan)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan"), float("nan")
    half = stats.t.ppf((1 + confidence) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


INTERVAL = "95 % bootstrap interval over test images (stratified by class) and seeds"


def bootstrap_ci(y_true: np.ndarray, probas, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                 metric: str = "balanced_accuracy") -> tuple[float, float]:
    """Bootstrap interval of ``metric`` (balanced_accuracy, macro_f1 or recall_<class index>) over test
    images, resampled within each class, and over seeds: ``probas`` is one (N, K) array or a list of them,
    one per seed. Each replicate draws the images and the seeds with replacement and averages the metric
    over the drawn seeds; the interval is the percentile interval, inside the metric's range [0, 1]."""
    y_true = np.asarray(y_true)
    probas = [np.asarray(p) for p in (probas if isinstance(probas, (list, tuple)) else [probas])]
    preds = [p.argmax(axis=1) for p in probas]
    rng = np.random.default_rng(seed)
    k = max(int(y_true.max()) + 1, max(p.shape[1] for p in probas))
    by_class = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = _resample_within_class(by_class, rng)
        drawn = rng.integers(len(preds), size=len(preds))
        values[b] = np.mean([_metric(y_true[idx], preds[s][idx], k, metric) for s in drawn])
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))


def seed_ensemble(probas) -> np.ndarray:
    """One model's probabilities from several seeds' (a list of (N, K) arrays): their mean, the rule of
    ``tailfill predict --ensemble``."""
    return np.mean([np.asarray(p, dtype=float) for p in probas], axis=0)


def bootstrap_difference(y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, n_boot: int = 2000,
                         seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Balanced accuracy of ``proba_a`` minus that of ``proba_b`` on the same test images, with a paired
    bootstrap (the same images, resampled within each class, for both): (difference, low, high, share of
    replicates above zero)."""
    y_true = np.asarray(y_true)
    a, b = np.asarray(proba_a).argmax(1), np.asarray(proba_b).argmax(1)
    k = max(int(y_true.max()) + 1, np.asarray(proba_a).shape[1])
    by_class = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = _resample_within_class(by_class, rng)
        diffs[i] = _metric(y_true[idx], a[idx], k, "balanced_accuracy") - _metric(y_true[idx], b[idx], k,
                                                                                  "balanced_accuracy")
    lo, hi = np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2])
    point = _metric(y_true, a, k, "balanced_accuracy") - _metric(y_true, b, k, "balanced_accuracy")
    return float(point), float(lo), float(hi), float(np.mean(diffs > 0))


def _resample_within_class(by_class: list, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap draw of test image indices: each class's images drawn with replacement, as many as it has."""
    return np.concatenate([rng.choice(ix, len(ix)) for ix in by_class])


def _metric(y: np.ndarray, pred: np.ndarray, k: int, metric: str) -> float:
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    support, tp = cm.sum(axis=1), np.diag(cm)
    recall = np.divide(tp, support, out=np.full(k, np.nan), where=support > 0)
    if metric == "balanced_accuracy":
        return float(np.nanmean(recall))
    if metric.startswith("recall_"):
        return float(recall[int(metric[7:])])
    if metric == "macro_f1":
        predicted = cm.sum(axis=0)
        precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
        return float(np.mean(f1[support > 0]))
    raise ValueError(f"unknown metric {metric!r}")


def truth_frame(image_ids, labels: np.ndarray, classes: list) -> pd.DataFrame:
    """Ground truth in the ISIC format (``image`` + one 0/1 column per class), to score predictions with the
    official ``isic-challenge-scoring`` package."""
    frame = pd.DataFrame({"image": list(image_ids)})
    for i, name in enumerate(classes):
        frame[name] = (np.asarray(labels) == i).astype(float)
    return frame


def submission_frame(image_ids, proba: np.ndarray, classes: list, output_classes: list) -> pd.DataFrame:
    """Predictions in ISIC submission format: ``image`` then one probability column per official class
    (classes the model never saw, like UNK, get 0)."""
    frame = pd.DataFrame({"image": list(image_ids)})
    for name in output_classes:
        frame[name] = proba[:, classes.index(name)] if name in classes else 0.0
    return frame


def metrics_record(kind: str, method: str, seed: int, fit, train_labels: np.ndarray, classes: list,
                   **extra) -> dict:
    """What is kept of one trained classifier (its ``metrics.json``): ``fit`` is a classify.FitResult."""
    return {"kind": kind, "method": method, "seed": seed, "test": fit.test, "val": fit.val,
            "train_seconds": round(fit.seconds, 2),
            "train_counts": np.bincount(train_labels, minlength=len(classes)).tolist(), **extra}


def results_table(records: list[dict]) -> pd.DataFrame:
    """One row per trained classifier: model (kind:method), variant, seed, test and validation scores,
    per-class recall/precision/F1/AUC."""
    rows = []
    for m in records:
        row = {"model": f"{m['kind']}:{m['method']}", "variant": m.get("variant", f"{m['kind']}:{m['method']}"),
               "kind": m["kind"], "method": m["method"], "seed": m["seed"],
               "balanced_accuracy": m["test"]["balanced_accuracy"], "accuracy": m["test"]["accuracy"],
               "macro_f1": m["test"]["macro_f1"], "val_balanced_accuracy": m["val"]["balanced_accuracy"],
               "synthetic_images": m.get("synthetic_images", 0), "train_seconds": m["train_seconds"]}
        for name, pc in m["test"]["per_class"].items():
            row.update({f"recall_{name}": pc["recall"], f"precision_{name}": pc["precision"],
                        f"f1_{name}": pc["f1"], f"auc_{name}": pc["auc"]})
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame, by: str = "model", predictions: dict | None = None,
              y_true: np.ndarray | None = None, classes: list | None = None, n_boot: int = 1000) -> dict:
    """Per model (or variant): mean over seeds of balanced accuracy, macro F1 and per-class recall, with an
    interval. With ``predictions`` ({key: [test probabilities per seed]}), ``y_true`` and ``classes``: the
    bootstrap interval over test images and seeds (:data:`INTERVAL`), and for two seeds or more their
    ensemble (``tailfill predict --ensemble``) scored as one model; otherwise a t-interval over seeds,
    clipped to [0, 1]."""
    summary = {}
    for key, g in results.groupby(by, sort=False):
        entry = {}
        for col in results.columns:
            if not col.startswith(("balanced_accuracy", "recall_", "macro_f1")):
                continue
            mean, lo, hi = mean_ci(g[col])
            if predictions is not None and key in predictions:
                metric = col if not col.startswith("recall_") else f"recall_{classes.index(col[7:])}"
                lo, hi = bootstrap_ci(y_true, predictions[key], n_boot=n_boot, metric=metric)
            elif np.isfinite(lo):
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            entry[col] = {"mean": mean, "low": lo, "high": hi}
        if predictions is not None and len(predictions.get(key, [])) > 1:
            m = classification_metrics(y_true, seed_ensemble(predictions[key]), classes)
            entry["ensemble"] = {"balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
                                 **{f"recall_{c}": v["recall"] for c, v in m["per_class"].items()}}
        summary[key] = {**entry, "seeds": len(g),
                        "interval": INTERVAL if predictions is not None else "95 % t-interval over seeds, clipped"}
    return summary


def best_method(results: pd.DataFrame, kind: str = "baseline") -> str:
    """The method of ``kind`` with the best mean *validation* balanced accuracy (never test)."""
    rows = results[results["kind"] == kind] if len(results) else results
    if not len(rows):
        raise ValueError(f"no {kind} results to choose a method from")
    return str(rows.groupby("method", sort=False)["val_balanced_accuracy"].mean().idxmax())
