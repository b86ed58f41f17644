import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from tailfill.evaluate import bootstrap_ci, classification_metrics, mean_ci, submission_frame


def test_metrics_match_sklearn(rng):
    y = rng.integers(0, 4, 300)
    proba = rng.dirichlet(np.ones(4), 300)
    proba[np.arange(300)[:150], y[:150]] += 1  # half right for sure
    m = classification_metrics(y, proba, ["a", "b", "c", "d"])
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, proba.argmax(1)))
    assert np.sum(m["confusion_matrix"]) == 300
    assert 0.5 < m["per_class"]["a"]["auc"] <= 1
    lo, hi = bootstrap_ci(y, proba, n_boot=200)
    assert lo < m["balanced_accuracy"] < hi


def test_mean_ci():
    mean, lo, hi = mean_ci([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and lo < 0.7 and hi > 0.9
    assert np.isnan(mean_ci([0.5])[1])


def test_submission_format_has_official_columns():
    frame = submission_frame(["ISIC_1", "ISIC_2"], np.array([[0.9, 0.1], [0.2, 0.8]]), ["NV", "DF"],
                             ["MEL", "NV", "DF", "UNK"])
    assert list(frame.columns) == ["image", "MEL", "NV", "DF", "UNK"]
    assert (frame["UNK"] == 0).all() and frame["DF"].tolist() == [0.1, 0.8]
