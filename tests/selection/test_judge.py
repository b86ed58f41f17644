"""The fidelity judge (ALIA-style two-sided filter)."""

import numpy as np
import pytest

from tailfill.config import Config, ExperimentalConfig, SelectConfig, validate
from tailfill.selection.judge import FidelityJudge
from tailfill.selection.selector import select_synthetic

def clusters(n_per=40, dim=6, seed=0):
    """Three well separated classes in feature space."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, dim) * 6
    feats = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres])
    return feats, np.repeat(np.arange(3), n_per), centres


def test_judge_drops_images_another_class_claims_and_optionally_too_easy_ones():
    feats, labels, centres = clusters()
    judge = FidelityJudge(reject_confidence=0.5).fit(feats, labels)
    new = np.stack([centres[0], centres[1]])
    verdict = judge.decide(new, np.array([0, 0]))  # both claim to be class 0; the second looks like class 1
    assert verdict["judge_ok"].tolist() == [True, False]
    assert verdict["judge_reason"].iloc[1] == "judged_other_class" and verdict["judge_class"].iloc[1] == 1
    assert verdict["judge_proba"].iloc[0] > 0.9 > verdict["judge_proba"].iloc[1]
    strict = FidelityJudge(reject_confidence=0.5, max_confidence=0.9).fit(feats, labels).decide(new[:1], [0])
    assert strict["judge_reason"].tolist() == ["too_easy"] and not strict["judge_ok"].any()


class FeaturesAreImages:
    """A feature model whose features are the 'images' themselves (flattened)."""

    def features(self, images):
        return np.asarray(images, dtype=float).reshape(len(images), -1)


def test_select_with_judge_makes_wrongly_looking_images_ineligible_and_unused():
    feats, labels, centres = clusters(seed=1)
    rng = np.random.default_rng(2)
    val = np.concatenate([c + rng.normal(size=(10, 6)) for c in centres])
    val_y = np.repeat(np.arange(3), 10)
    # six synthetic class-2 images: three look like class 2, three like class 0
    synth = np.concatenate([centres[2] + rng.normal(size=(3, 6)) * 0.3, centres[0] + rng.normal(size=(3, 6)) * 0.3])
    synth_y = np.full(6, 2)
    table, cal = select_synthetic(FeaturesAreImages(), (feats, labels), (val, val_y), synth, synth_y,
                                  np.full(6, -1), {2: 6}, SelectConfig(method="none"), ["a", "b", "c"],
                                  ExperimentalConfig(judge="classifier"))
    assert table["eligible"].tolist() == [True] * 3 + [False] * 3
    assert set(table["reason"].iloc[3:]) == {"judged_other_class"}
    assert table["used"].tolist() == [True] * 3 + [False] * 3
    assert cal["judge_val_balanced_accuracy"] > 0.9
    without = select_synthetic(FeaturesAreImages(), (feats, labels), (val, val_y), synth, synth_y, np.full(6, -1),
                               {2: 6}, SelectConfig(method="none"), ["a", "b", "c"], ExperimentalConfig())[0]
    assert without["used"].all()  # the judge, not something else, removed them


def test_judge_settings_are_validated():
    cfg = Config()
    cfg.experimental.judge = "oracle"
    with pytest.raises(ValueError, match="experimental.judge"):
        validate(cfg)
    cfg.experimental.judge, cfg.select.features = None, "imagenet"
    with pytest.raises(ValueError, match="select.features"):
        validate(cfg)
