import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from tailfill.evaluation.metrics import (bootstrap_ci, bootstrap_difference, classification_metrics, mean_ci,
                                         seed_ensemble, submission_frame)


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


def test_bootstrap_interval_over_images_and_seeds_stays_in_range(rng):
    y = np.repeat(np.arange(3), [40, 10, 5])
    good = np.eye(3)[y] + rng.uniform(0, 0.5, (len(y), 3))
    perfect = np.eye(3)[y]
    lo, hi = bootstrap_ci(y, [perfect, perfect], n_boot=200)
    assert lo == hi == 1.0  # never above the metric's range, unlike a t-interval
    lo, hi = bootstrap_ci(y, [good, np.eye(3)[(y + 1) % 3]], n_boot=300)  # one good seed, one all wrong
    assert 0.0 <= lo < 0.5 < hi <= 1.0  # the seed spread shows in the interval
    lo, hi = bootstrap_ci(y, [good], n_boot=200, metric="recall_2")
    assert 0 <= lo <= hi <= 1
    lo_f1, hi_f1 = bootstrap_ci(y, [good], n_boot=100, metric="macro_f1")
    assert 0 <= lo_f1 <= hi_f1 <= 1
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(y, [good], n_boot=2, metric="auc")


def test_summary_intervals_are_bootstrap_and_clipped():
    import pandas as pd

    from tailfill.evaluation.metrics import INTERVAL, summarise

    y = np.array([0, 0, 1, 1])
    results = pd.DataFrame({"model": ["m", "m"], "balanced_accuracy": [0.9, 1.0], "macro_f1": [0.9, 1.0],
                            "recall_a": [1.0, 1.0], "recall_b": [0.5, 1.0]})
    t = summarise(results)["m"]
    assert t["balanced_accuracy"]["high"] <= 1.0 and "t-interval" in t["interval"]
    probas = [np.eye(2)[[0, 0, 1, 0]], np.eye(2)[y]]
    b = summarise(results, predictions={"m": probas}, y_true=y, classes=["a", "b"], n_boot=200)["m"]
    assert b["interval"] == INTERVAL and 0.0 <= b["recall_b"]["low"] < b["recall_b"]["high"] <= 1.0
    assert b["balanced_accuracy"]["mean"] == pytest.approx(0.95)


def test_seed_ensemble_is_the_mean_probability_and_can_fix_what_each_seed_gets_wrong():
    a = np.array([[0.9, 0.1], [0.45, 0.55], [0.3, 0.7]])   # wrong on image 1
    b = np.array([[0.45, 0.55], [0.9, 0.1], [0.3, 0.7]])   # wrong on image 0
    np.testing.assert_allclose(seed_ensemble([a, b]), (a + b) / 2)
    y = np.array([0, 0, 1])
    assert [int((p.argmax(1) == y).sum()) for p in (a, b, seed_ensemble([a, b]))] == [2, 2, 3]
    # the evaluate stage's summary scores the seeds as one model too (balanced accuracy 0.75 each, 1.0 together)
    import pandas as pd

    from tailfill.evaluation.metrics import summarise
    from tailfill.evaluation.tables import summary_table

    results = pd.DataFrame({"model": ["m", "m"], "balanced_accuracy": [0.75, 0.75], "macro_f1": [0.7, 0.7],
                            "recall_a": [0.5, 0.5], "recall_b": [1.0, 1.0]})
    summary = summarise(results, predictions={"m": [a, b]}, y_true=y, classes=["a", "b"], n_boot=50)
    assert summary["m"]["ensemble"]["balanced_accuracy"] == 1.0 and summary["m"]["ensemble"]["recall_a"] == 1.0
    assert summary_table(summary, ["a", "b"]).loc[0, "ensemble_balanced_acc"] == "1.000"
    one_seed = summarise(results.iloc[:1], predictions={"m": [a]}, y_true=y, classes=["a", "b"], n_boot=50)
    assert "ensemble" not in one_seed["m"] and "ensemble_balanced_acc" not in summary_table(one_seed, ["a", "b"])


def test_paired_bootstrap_difference_resolves_a_gap_the_images_support(rng):
    y = np.repeat(np.arange(4), 50)
    truth = np.eye(4)[y]
    noise = rng.random((200, 4))
    good = np.where(rng.random((200, 1)) < 0.9, truth, noise)    # ~90 % right
    bad = np.where(rng.random((200, 1)) < 0.6, truth, noise)     # ~60 % right
    d, lo, hi, up = bootstrap_difference(y, good, bad)
    assert 0.15 < d < 0.45 and lo > 0 and hi > d > lo and up == 1.0
    assert bootstrap_difference(y, bad, good)[0] == pytest.approx(-d)
    same = bootstrap_difference(y, good, good)  # paired: the same images for both, so no spread at all
    assert same == (0.0, 0.0, 0.0, 0.0)
