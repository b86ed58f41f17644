import numpy as np
import pandas as pd
import pytest

from tailfill.selection.scorers import KNNScorer, MahalanobisScorer, build_scorer, realism_auroc
from tailfill.selection.selector import OODSelector, choose_for_deficits, select_synthetic
from tailfill.config import ExperimentalConfig, SelectConfig


def gaussian_classes(rng, n=200, dim=16, classes=3, shift=4.0):
    labels = np.repeat(np.arange(classes), n)
    means = rng.normal(0, shift, (classes, dim))
    return rng.normal(0, 1, (len(labels), dim)) + means[labels], labels, means


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_in_distribution_scores_lower_than_shifted(rng, method):
    x, y, means = gaussian_classes(rng)
    scorer = build_scorer(method, SelectConfig(k=5)).fit(x, y)
    inside = rng.normal(0, 1, (50, 16)) + means[1]
    outside = rng.normal(0, 1, (50, 16)) + means[1] + 3.0
    wrong_class = rng.normal(0, 1, (50, 16)) + means[2]  # real-looking, but not of class 1
    s_in, s_out, s_wrong = (scorer.score(a, np.ones(50, int)) for a in (inside, outside, wrong_class))
    assert realism_auroc(s_in, s_out) > 0.9
    assert realism_auroc(s_in, s_wrong) > 0.95
    assert 0.3 < realism_auroc(s_in, scorer.score(rng.normal(0, 1, (50, 16)) + means[1], np.ones(50, int))) < 0.7


def test_calibration_threshold_passes_the_asked_share_of_real(rng):
    x, y, means = gaussian_classes(rng)
    held, held_y, _ = x[::2], y[::2], None
    sel = OODSelector(MahalanobisScorer(), real_quantile=0.9).fit(x[1::2], y[1::2]).calibrate(held, held_y)
    fresh = rng.normal(0, 1, (2000, 16)) + means[0]
    passed = np.mean(sel.score(fresh, np.zeros(2000, int)) <= sel.thresholds_[0])
    assert 0.8 < passed < 0.97


def test_select_rejects_ood_copies_and_respects_keep_fraction(rng):
    x, y, means = gaussian_classes(rng)
    sel = OODSelector(KNNScorer(5), real_quantile=0.95, keep_fraction=1.0, near_duplicate_similarity=0.999)
    sel.fit(x, y).calibrate(x[::3], y[::3])
    good = rng.normal(0, 1, (20, 16)) + means[0]
    bad = rng.normal(0, 1, (5, 16)) + means[0] + 8
    copies = x[y == 0][:3] + 1e-6
    feats = np.concatenate([good, bad, copies])
    labels = np.zeros(len(feats), int)
    table = sel.decide(feats, labels)
    assert (table["reason"].iloc[20:25] == "out_of_distribution").all()
    assert (table["reason"].iloc[25:] == "near_copy").all()
    assert table["eligible"].iloc[:20].mean() > 0.8
    # the copy of its own source context is not a copy: the source is excluded from the search
    src = np.full(len(feats), -1)
    src[25:] = np.flatnonzero(y == 0)[:3]
    assert (sel.decide(feats, labels, source_index=src)["reason"].iloc[25:] != "near_copy").all()
    sel.keep_fraction = 0.5
    half = sel.decide(good, np.zeros(20, int))
    assert half["eligible"].sum() <= 10
    assert half.loc[half["eligible"], "score"].max() <= half.loc[~half["eligible"], "score"].min()


def test_small_classes_fall_back_to_pooled_threshold(rng):
    x, y, _ = gaussian_classes(rng)
    held_y = y[::2].copy()
    held_x = x[::2]
    keep = (held_y != 2) | (np.arange(len(held_y)) % 50 == 0)  # class 2: 2 held-out images only
    sel = OODSelector(MahalanobisScorer()).fit(x, y).calibrate(held_x[keep], held_y[keep])
    pooled = np.quantile(sel.score(held_x[keep], held_y[keep]), 0.95)
    assert sel.thresholds_[2] == pytest.approx(pooled)


def test_auto_duplicate_threshold_is_calibrated_on_held_out_real(rng):
    x, y, means = gaussian_classes(rng, dim=8)
    train, held = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    sel = OODSelector(MahalanobisScorer(), real_quantile=1.0).fit(x[train], y[train]).calibrate(x[held], y[held])
    fresh = rng.normal(0, 1, (300, 8)) + means[0]
    copies = x[train & (y == 0)][:20] + rng.normal(0, 1e-3, (20, 8))
    table = sel.decide(np.concatenate([fresh, copies]), np.zeros(320, int))
    assert (table["reason"].iloc[300:] == "near_copy").all()
    assert (table["reason"].iloc[:300] == "near_copy").mean() < 0.05  # ~1 % of real-like ones


def test_choose_for_deficits_takes_the_best_eligible_up_to_each_deficit():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    decisions = pd.DataFrame({"score": [3.0, 1.0, 2.0, 0.5, 1.0, 2.0, 3.0],
                              "eligible": [True, True, True, False, True, False, False]})
    used = choose_for_deficits(decisions, labels, {0: 2, 1: 5})
    assert used.tolist() == [False, True, True, False, True, False, False]  # never an ineligible one, no repeats
    assert choose_for_deficits(decisions, labels, {0: 2}, fill_fraction=0.5).tolist() == [False, True] + [False] * 5


class _Identity:
    def features(self, x):
        return np.asarray(x, dtype=float)


def test_select_synthetic_applies_threshold_and_keep_fraction_together(rng):
    """keep_fraction narrows what passes the threshold; it never lets an out-of-distribution image in."""
    x, y, means = gaussian_classes(rng, dim=8)
    synth = np.concatenate([rng.normal(0, 1, (30, 8)) + means[0], rng.normal(0, 1, (10, 8)) + means[0] + 6])
    s_y = np.zeros(40, int)
    args = (_Identity(), (x[::2], y[::2]), (x[1::2], y[1::2]), synth, s_y, np.full(40, -1), {0: 40})
    full, cal = select_synthetic(*args, SelectConfig(), ["a", "b", "c"], ExperimentalConfig())
    assert full["eligible"].iloc[30:].sum() == 0 and full["eligible"].iloc[:30].mean() > 0.8
    assert (full["used"] == full["eligible"]).all()  # deficit 40: every eligible image is used
    assert set(cal) == {"thresholds", "val_scores", "realism_auroc"} and cal["realism_auroc"]["a"] > 0.6
    fifth, _ = select_synthetic(*args, SelectConfig(), ["a", "b", "c"], ExperimentalConfig(keep_fraction=0.2))
    assert fifth["eligible"].sum() <= 8 and (fifth["eligible"] <= full["eligible"]).all()
    none, cal = select_synthetic(*args, SelectConfig(method="none"), ["a", "b", "c"], ExperimentalConfig())
    assert none["used"].all() and cal == {}


def test_min_real_quantile_rejects_images_too_typical_of_their_class(rng):
    """Images shrunk towards the class mean (hazy, low-contrast lesions) score below almost every real image."""
    x, y, means = gaussian_classes(rng)
    train, held = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    fresh = rng.normal(0, 1, (400, 16)) + means[0]                 # like real images of class 0
    hazy = 0.1 * rng.normal(0, 1, (40, 16)) + means[0]             # nearly the class mean
    feats, labels = np.concatenate([fresh, hazy]), np.zeros(440, int)
    one_sided = OODSelector(MahalanobisScorer()).fit(x[train], y[train]).calibrate(x[held], y[held])
    assert one_sided.decide(feats, labels)["eligible"].iloc[400:].all()  # the upper threshold alone keeps them
    sel = OODSelector(MahalanobisScorer(), min_real_quantile=0.1).fit(x[train], y[train]).calibrate(x[held], y[held])
    table = sel.decide(feats, labels)
    assert (table["reason"].iloc[400:] == "too_typical").all() and not table["eligible"].iloc[400:].any()
    assert 0.03 < table["too_typical"].iloc[:400].mean() < 0.2  # about 10 % of real-like images
    assert (table["eligible"] == (table["within_threshold"] & ~table["too_typical"] & table["within_keep_fraction"]
                                  & ~table["near_copy"])).all()


def test_min_real_quantile_must_sit_below_real_quantile():
    from tailfill.config import load_config

    with pytest.raises(ValueError, match="experimental.min_real_quantile"):
        load_config(None, ["experimental.min_real_quantile=0.97"])
    assert load_config(None, ["experimental.min_real_quantile=0.1"]).experimental.min_real_quantile == 0.1
