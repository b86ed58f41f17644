"""Generated feature vectors for the head re-training (head.feature_fill, LDMLR and its Gaussian control)."""
import numpy as np
import pytest

from tailfill.classifier.train import train_classifier
from conftest import fit_config
from tailfill.config import HeadConfig, config_from_dict
from tailfill.classifier.feature_fill import FeatureDiffusion, GaussianFeatures, feature_generator, fill_features
from tailfill.classifier.methods import FEATURE_GENERATORS
from tailfill.utils.training import TrainingDivergedError

from test_classify import _blobs


def _features(rng, counts, dim=12):
    """ReLU'd clusters, one per class, like pooled backbone features: non-negative, many exact zeros."""
    centres = rng.normal(0, 2, (len(counts), dim))
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.maximum(centres[labels] + rng.normal(0, 0.5, (len(labels), dim)), 0).astype(np.float32), labels, centres


@pytest.mark.parametrize("generator", [GaussianFeatures(), FeatureDiffusion(steps=400, hidden=64, sample_steps=20)],
                         ids=["gaussian", "diffusion"])
def test_generated_features_fall_near_their_own_class_and_fill_every_class_to_the_largest(rng, generator):
    feats, labels, _ = _features(rng, [200, 60, 8])
    filled, filled_labels, synthetic = fill_features(feats, labels, generator, seed=0)
    assert np.bincount(filled_labels).tolist() == [200, 200, 200]
    assert synthetic.sum() == 140 + 192 and not synthetic[:len(labels)].any()
    np.testing.assert_array_equal(filled[:len(labels)], feats)  # the real ones untouched, first
    new, new_labels = filled[synthetic], filled_labels[synthetic]
    means = np.stack([feats[labels == c].mean(0) for c in range(3)])
    nearest = ((new[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    for c in (1, 2):  # the rarest class too (8 real vectors): its new vectors are its own, not the head's
        assert np.mean(nearest[new_labels == c] == c) > 0.9
    # new vectors, not copies of the real ones
    assert ((new[:, None] - feats[None]) ** 2).sum(-1).min() > 1e-6
    again = fill_features(feats, labels, generator, seed=0)[0]
    np.testing.assert_allclose(again, filled, atol=1e-5)  # seeded


def test_feature_diffusion_stays_in_the_range_of_the_real_features(rng):
    feats, labels, _ = _features(rng, [100, 20])
    feats[:, 0] = 0.0  # a dimension a ReLU always zeroes: no standardising blow-up, no negative values
    gen = FeatureDiffusion(steps=200, hidden=64, sample_steps=10).fit(feats, labels, seed=1)
    new = gen.sample(np.ones(50, int), seed=1)
    assert new.shape == (50, feats.shape[1]) and np.isfinite(new).all()
    assert (new >= feats.min(0) - 1e-6).all() and (new <= feats.max(0) + 1e-6).all() and (new[:, 0] == 0).all()
    assert np.mean(gen.losses_[-50:]) < np.mean(gen.losses_[:50])  # it learnt something


def test_feature_fill_runs_in_the_head_retraining_and_is_checked_at_load(rng):
    x, y = _blobs(rng, 120)
    vx, vy = _blobs(rng, 60)
    cfg = fit_config(backbone="resnet10t", epochs=2, batch_size=32, lr=3e-3,
                     head=dict(retrain=True, epochs=2, feature_fill="gaussian", feature_share=0.3))
    model = train_classifier(x, y, vx, vy, ["a", "b", "c"], "balanced_sampling", cfg, seed=0, device="cpu")
    assert [h["epoch"] for h in model.history][-2:] == ["head 1", "head 2"]
    assert np.mean(model.predict_proba(vx).argmax(1) == vy) > 0.8
    with pytest.raises(ValueError, match="head.retrain"):
        config_from_dict({"head": {"feature_fill": "diffusion"}})
    with pytest.raises(ValueError, match="head.feature_fill"):
        config_from_dict({"head": {"feature_fill": "vae", "retrain": True}})
    with pytest.raises(ValueError, match="head.feature_share"):
        config_from_dict({"head": {"feature_share": 0}})
    with pytest.raises(ValueError, match="unknown head.feature_fill 'gan'"):
        feature_generator(HeadConfig(feature_fill="gan"))


def test_feature_generator_builds_the_registered_class_from_the_config(monkeypatch):
    gen = feature_generator(HeadConfig(feature_fill="diffusion", feature_steps=7))
    assert type(gen) is FeatureDiffusion and gen.steps == 7
    assert type(feature_generator(HeadConfig(feature_fill="gaussian"))) is GaussianFeatures

    class Shrunk(GaussianFeatures):  # a generator added to the registry is built by name, nothing else to touch
        pass

    monkeypatch.setitem(FEATURE_GENERATORS, "shrunk", Shrunk)
    assert type(feature_generator(HeadConfig(feature_fill="shrunk"))) is Shrunk


def test_a_diverging_feature_diffusion_stops_with_a_clear_error_and_bad_features_are_named(rng):
    feats, labels, _ = _features(rng, [40, 10])
    with pytest.raises(TrainingDivergedError, match="feature diffusion step"):
        FeatureDiffusion(steps=50, lr=1e30, hidden=16).fit(feats, labels)  # steps of 1e30 overflow float32
    feats[13, 2] = np.nan
    with pytest.raises(ValueError, match="1 of 50 feature vectors are not finite.*row 13, class 0"):
        fill_features(feats, labels, GaussianFeatures())


def test_head_init_keep_fine_tunes_the_trained_head_where_crt_starts_afresh(rng):
    import copy
    import dataclasses

    from tailfill.classifier.crt import retrain_head
    from tailfill.evaluation.metrics import balanced_accuracy

    x, y = _blobs(rng, 120)
    vx, vy = _blobs(rng, 60)
    cfg = fit_config(backbone="resnet10t", epochs=3, batch_size=32, lr=3e-3)
    model = train_classifier(x, y, vx, vy, ["a", "b", "c"], "balanced_sampling", cfg, seed=0, device="cpu")
    trained = balanced_accuracy(vy, model.predict_proba(vx).argmax(1), 3)
    assert trained > 0.8
    # a step too small to move anything: the first head epoch scores what the head it started from scores
    still = fit_config(backbone="resnet10t", batch_size=32, lr=1e-12, head=dict(epochs=1, retrain=True))
    kept = retrain_head(copy.deepcopy(model), x, y, vx, vy,
                        dataclasses.replace(still, head=HeadConfig(epochs=1, retrain=True, init="keep")), seed=0)
    reset = retrain_head(copy.deepcopy(model), x, y, vx, vy, still, seed=0)
    assert kept.history[-1]["val_balanced_accuracy"] == pytest.approx(trained)
    assert reset.history[-1]["val_balanced_accuracy"] < 0.7  # a fresh head, near chance
    with pytest.raises(ValueError, match="head.init"):
        config_from_dict({"head": {"init": "warm"}})
