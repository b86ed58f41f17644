"""cRT: the head re-trained on real images, in one or two steps, never worse on validation."""
import dataclasses

import numpy as np

from tailfill.classifier.model import TrainedClassifier
from tailfill.classifier.crt import retrain_head, retrain_head_on_real
from tailfill.classifier.train import train_classifier
from tailfill.config import HeadConfig

from conftest import fit_config

from test_classify import _blobs

def test_classifier_trains_with_synthetic_share_weight_and_crt(rng):
    x, y = _blobs(rng, 120)
    vx, vy = _blobs(rng, 60)
    synthetic = np.zeros(len(y), bool)
    synthetic[::3] = True
    cfg = fit_config(backbone="resnet10t", epochs=3, batch_size=32, lr=3e-3, mixing=dict(share=0.3),
                     experimental=dict(synthetic_loss_weight=0.5), head=dict(retrain=True, epochs=3))
    model = train_classifier(x, y, vx, vy, ["a", "b", "c"], "balanced_sampling", cfg, seed=0, device="cpu",
                             synthetic=synthetic)
    assert [h["epoch"] for h in model.history][-3:] == ["head 1", "head 2", "head 3"]
    assert np.mean(model.predict_proba(vx).argmax(1) == vy) > 0.8
    np.testing.assert_allclose(model.log_prior, np.log(1 / 3))  # post-hoc corrections see a balanced head


def test_crt_in_two_steps_from_a_saved_first_stage_is_crt_in_one(rng, tmp_path):
    # the benchmark re-trains the head of a cached fit: it must be the model train_classifier makes in one go
    x, y = _blobs(rng, 90)
    vx, vy = _blobs(rng, 45)
    synthetic = np.zeros(len(y), bool)
    synthetic[::4] = True
    cfg = fit_config(backbone="resnet10t", epochs=2, batch_size=32, lr=3e-3, head=dict(epochs=3))
    crt = dataclasses.replace(cfg, head=HeadConfig(epochs=3, retrain=True))
    one_go = train_classifier(x, y, vx, vy, ["a", "b", "c"], "balanced_sampling", crt, seed=2, device="cpu",
                              synthetic=synthetic)
    first = train_classifier(x, y, vx, vy, ["a", "b", "c"], "balanced_sampling", cfg, seed=2, device="cpu",
                             synthetic=synthetic)
    first.save(tmp_path / "first", "resnet10t")
    two_steps = retrain_head_on_real(TrainedClassifier.load(tmp_path / "first"), x, y, synthetic, vx, vy, crt, seed=2)
    np.testing.assert_allclose(two_steps.predict_proba(vx), one_go.predict_proba(vx), atol=1e-5)
    assert [h["epoch"] for h in two_steps.history] == [h["epoch"] for h in one_go.history]
    # and the head saw the real rows only: with the synthetic rows relabelled, the result does not move
    y_other = y.copy()
    y_other[synthetic] = (y[synthetic] + 1) % 3
    other = retrain_head_on_real(TrainedClassifier.load(tmp_path / "first"), x, y_other, synthetic, vx, vy, crt, seed=2)
    np.testing.assert_allclose(other.predict_proba(vx), two_steps.predict_proba(vx), atol=1e-6)


def test_crt_never_ends_worse_on_validation_than_the_head_it_replaces(rng):
    x, y = _blobs(rng, 90)
    vx, vy = _blobs(rng, 45)
    cfg = fit_config(backbone="resnet10t", epochs=2, batch_size=32, lr=3e-3, head=dict(epochs=2))
    model = train_classifier(x, y, vx, vy, ["a", "b", "c"], "ce", cfg, seed=1, device="cpu")
    before = np.mean([np.mean(model.predict_proba(vx).argmax(1)[vy == c] == c) for c in range(3)])
    retrain_head(model, x, y, vx, vy, cfg, seed=1)
    after = np.mean([np.mean(model.predict_proba(vx).argmax(1)[vy == c] == c) for c in range(3)])
    assert after >= before - 1e-9
