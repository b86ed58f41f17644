"""What a classifier trains on: synthetic shares, real frequencies, the control, sample weights, soft labels."""
import dataclasses

import numpy as np
import pytest
import torch

from tailfill.classifier.losses import LongTailLoss
from tailfill.classifier.train import train_classifier
from conftest import fit_config
from tailfill.config import ExperimentalConfig, MixingConfig
from tailfill.classifier.mixing import (cap_per_class, draw_probabilities, with_repeated_real,
                                        with_synthetic)

from test_classify import _blobs

def test_synthetic_share_caps_each_class_draws_and_keeps_class_balance():
    # class 0: 100 real; class 1: 6 real + 54 synthetic
    labels = np.r_[np.zeros(100, int), np.ones(60, int)]
    synthetic = np.r_[np.zeros(106, bool), np.ones(54, bool)]
    plain = draw_probabilities(labels, "balanced", synthetic)
    assert plain[synthetic].sum() == pytest.approx(0.5 * 54 / 60)  # 90 % of class 1's draws are synthetic
    capped = draw_probabilities(labels, "balanced", synthetic, synthetic_share=0.5)
    assert capped[labels == 1].sum() == pytest.approx(0.5) and capped[labels == 0].sum() == pytest.approx(0.5)
    assert capped[synthetic].sum() == pytest.approx(0.25)  # half of class 1's draws
    assert capped[(labels == 1) & ~synthetic][0] == pytest.approx(0.25 / 6)  # each real DF drawn 9x more often
    # natural sampling keeps class frequencies; a cap above the actual share changes nothing
    nat = draw_probabilities(labels, "natural", synthetic, synthetic_share=0.2)
    assert nat[labels == 1].sum() == pytest.approx(60 / 160) and nat[synthetic].sum() == pytest.approx(0.2 * 60 / 160)
    np.testing.assert_allclose(draw_probabilities(labels, "balanced", synthetic, synthetic_share=1.0), plain)
    assert draw_probabilities(labels, "natural", synthetic) is None  # a plain shuffle


def test_synthetic_images_that_do_not_rebalance_keep_each_class_at_its_real_frequency():
    # class 0: 100 real; class 1: 6 real + 54 synthetic
    labels = np.r_[np.zeros(100, int), np.ones(60, int)]
    synthetic = np.r_[np.zeros(106, bool), np.ones(54, bool)]
    nat = draw_probabilities(labels, "natural", synthetic, synthetic_rebalances=False)
    assert nat[labels == 1].sum() == pytest.approx(6 / 106)  # not 60 / 160: the class is as rare as it was
    assert nat[synthetic].sum() == pytest.approx(6 / 106 * 54 / 60)  # its draws spread over all its rows
    capped = draw_probabilities(labels, "natural", synthetic, synthetic_share=0.5, synthetic_rebalances=False)
    assert capped[labels == 1].sum() == pytest.approx(6 / 106) and capped[synthetic].sum() == pytest.approx(3 / 106)
    sqrt = draw_probabilities(labels, "sqrt", synthetic, synthetic_rebalances=False)
    assert sqrt[labels == 1].sum() == pytest.approx(6 ** 0.5 / (6 ** 0.5 + 100 ** 0.5))
    # balanced sampling draws every class equally often either way
    np.testing.assert_allclose(draw_probabilities(labels, "balanced", synthetic, 0.5, synthetic_rebalances=False),
                               draw_probabilities(labels, "balanced", synthetic, 0.5))
    assert draw_probabilities(labels, "natural", None, synthetic_rebalances=False) is None  # nothing to keep out


def test_a_loss_prior_from_real_images_only_when_synthetic_images_do_not_rebalance(rng):
    x, y = _blobs(rng, 90)
    vx, vy = _blobs(rng, 30)
    synthetic = np.zeros(len(y), bool)
    synthetic[np.flatnonzero(y == 2)[: (y == 2).sum() // 2]] = True  # half of class 2 is synthetic
    real = np.bincount(y[~synthetic], minlength=3)
    cfg = fit_config(backbone="resnet10t", epochs=1, batch_size=32, lr=3e-3, mixing=dict(rebalances=False))
    kept = train_classifier(x, y, vx, vy, ["a", "b", "c"], "logit_adjust_posthoc", cfg, seed=0, device="cpu",
                            synthetic=synthetic)
    np.testing.assert_allclose(kept.log_prior, np.log(real / real.sum()))
    counted = train_classifier(x, y, vx, vy, ["a", "b", "c"], "logit_adjust_posthoc",
                               dataclasses.replace(cfg, mixing=MixingConfig(rebalances=True)), seed=0, device="cpu",
                               synthetic=synthetic)
    np.testing.assert_allclose(counted.log_prior, np.log(np.bincount(y) / len(y)))


def test_training_sets_real_synthetic_and_the_control(rng):
    x = rng.integers(0, 255, (20, 4, 4, 3), dtype=np.uint8)
    y = np.r_[np.zeros(16, int), np.ones(4, int)]
    sx = rng.integers(0, 255, (10, 4, 4, 3), dtype=np.uint8)
    sy = np.ones(10, int)
    capped = with_synthetic(x, y, sx, sy, max_ratio=1.5)  # at most 1.5 x 4 real = 6 synthetic
    assert len(capped) == 26 and capped.synthetic.sum() == 6 and (capped.images[20:] == sx[:6]).all()
    assert len(with_synthetic(x, y, None, np.zeros(0, int))) == 20
    assert cap_per_class(sy, np.array([16, 4]), None).all()
    control = with_repeated_real(x, y, {1: 12}, seed=0)
    assert control.synthetic.sum() == 12 and (control.labels[20:] == 1).all()
    assert all(any((img == x[y == 1]).all(axis=(1, 2, 3))) for img in control.images[20:])  # real DF repeated
    assert np.array_equal(with_repeated_real(x, y, {1: 12}, 0).images, control.images)  # seeded


def test_sample_weights_reweight_the_loss():
    loss = LongTailLoss("ce", np.array([10, 10]))
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([1, 1])  # first wrong, second right
    plain = loss(logits, y)
    down = loss(logits, y, sample_weight=torch.tensor([0.1, 1.0]))  # the wrong one counts less
    assert down < plain
    torch.testing.assert_close(loss(logits, y, sample_weight=torch.tensor([3.0, 3.0])), plain)


def test_soft_labels_of_translated_images():
    import pandas as pd

    from tailfill.classifier.mixing import synthetic_labels, translation_weight

    np.testing.assert_allclose(translation_weight([1.0, 0.49, 0.0], 0.5), [1.0, 0.7, 0.0])
    used = pd.DataFrame({"label": [2, 2], "source_class": ["a", "c"], "strength": [0.49, 1.0]})
    cfg = ExperimentalConfig(soft_labels=True)
    soft = synthetic_labels(used, ["a", "b", "c"], cfg)
    assert soft["source_labels"].tolist() == [0, 2] and np.allclose(soft["target_weight"], [0.7, 1.0])
    assert synthetic_labels(used, ["a", "b", "c"], ExperimentalConfig()) == {}
    x = np.zeros((3, 2, 2, 3), np.uint8)
    train = with_synthetic(x, np.array([0, 1, 2]), x[:2], np.array([2, 2]), **soft)
    src, lam = train.soft_labels()
    assert src.tolist() == [0, 1, 2, 0, 2] and np.allclose(lam, [1, 1, 1, 0.7, 1])
    # the loss of a soft label is the same mix of the two hard-label losses (cross-entropy: soft-target CE)
    loss = LongTailLoss("ce", np.array([5, 5, 5]))
    logits = torch.randn(1, 3)
    mixed = loss(logits, torch.tensor([2]), soft=(torch.tensor([0]), torch.tensor([0.7])))
    target = torch.tensor([[0.3, 0.0, 0.7]])
    torch.testing.assert_close(mixed, -(target * torch.log_softmax(logits, 1)).sum())


def test_classifier_trains_on_soft_labels(rng):
    x, y = _blobs(rng, 90)
    vx, vy = _blobs(rng, 30)
    lam = np.where(np.arange(90) % 4 == 0, 0.6, 1.0)
    cfg = fit_config(backbone="resnet10t", epochs=3, batch_size=32, lr=3e-3)
    model = train_classifier(x, y, vx, vy, ["a", "b", "c"], "ce", cfg, seed=0, device="cpu",
                             soft_labels=((y + 1) % 3, lam))
    assert np.mean(model.predict_proba(vx).argmax(1) == vy) > 0.8
