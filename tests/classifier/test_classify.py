import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailfill.classifier.losses import LongTailLoss
from tailfill.classifier.methods import METHODS
from tailfill.classifier.model import TrainedClassifier
from tailfill.classifier.train import train_classifier
from tailfill.classifier.mixing import draw_probabilities
from conftest import fit_config
from tailfill.evaluation.metrics import balanced_accuracy


def test_logit_adjusted_loss_is_ce_on_prior_shifted_logits():
    counts = np.array([90, 9, 1])
    loss = LongTailLoss("logit_adjust", counts)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = F.cross_entropy(logits + torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32)), y)
    torch.testing.assert_close(loss(logits, y), expected)


def test_rare_classes_get_larger_margins_and_weights():
    loss = LongTailLoss("ldam", np.array([1000, 100, 10]), drw=True)
    assert loss.margins[2] > loss.margins[1] > loss.margins[0] and loss.margins.max() == pytest.approx(0.5)
    assert loss.cb_weights[2] > loss.cb_weights[0]
    logits, y = torch.zeros(3, 3), torch.tensor([0, 1, 2])
    assert loss(logits, y, 0.9) != loss(logits, y, 0.1)  # re-weighting switched on late


def test_balanced_sampling_equalises_classes():
    labels = np.repeat([0, 1, 2], [100, 10, 1])
    p = draw_probabilities(labels, "balanced")
    per_class = [p[labels == c].sum() for c in range(3)]
    np.testing.assert_allclose(per_class, [1 / 3] * 3)
    assert draw_probabilities(labels, "natural") is None


def _blobs(rng, n, size=16):
    """Class 0 dark, class 1 bright, class 2 red: learnable in a few epochs."""
    labels = rng.integers(0, 3, n)
    base = np.array([[40, 40, 40], [210, 210, 210], [200, 30, 30]])[labels]
    images = np.clip(base[:, None, None, :] + rng.normal(0, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("method", ["ce", "ldam_drw", "logit_adjust_posthoc", "cb_focal"])
def test_training_learns_and_roundtrips(tmp_path, rng, method):
    x, y = _blobs(rng, 120)
    vx, vy = _blobs(rng, 60)
    cfg = fit_config(backbone="resnet10t", epochs=4, batch_size=32, lr=3e-3)
    model = train_classifier(x, y, vx, vy, ["a", "b", "c"], method, cfg, seed=0, device="cpu")
    proba = model.predict_proba(vx)
    assert np.allclose(proba.sum(1), 1)
    assert np.mean(proba.argmax(1) == vy) > 0.8
    assert model.features(vx[:5]).shape[0] == 5
    model.save(tmp_path, "resnet10t")
    again = TrainedClassifier.load(tmp_path)
    np.testing.assert_allclose(again.predict_proba(vx), proba, atol=1e-5)


def test_every_method_is_known_and_unknown_rejected(rng):
    x, y = _blobs(rng, 20)
    with pytest.raises(ValueError, match="unknown method"):
        train_classifier(x, y, x, y, ["a", "b", "c"], "magic", fit_config(), device="cpu")
    assert {"ce", "balanced_sampling", "focal", "cb_focal", "ldam_drw", "logit_adjust", "balanced_softmax"} <= set(METHODS)


@pytest.mark.parametrize("method", ["ce", "ldam_drw"])
def test_saved_classifier_loads_into_a_plain_timm_model(tmp_path, rng, method):
    import json

    import timm

    x, y = _blobs(rng, 60)
    cfg = fit_config(backbone="resnet10t", epochs=1, batch_size=32)
    model = train_classifier(x, y, x, y, ["a", "b", "c"], method, cfg, seed=0, device="cpu")
    model.save(tmp_path, "resnet10t")
    info = json.loads((tmp_path / "config.json").read_text())
    assert info["label_names"] == ["a", "b", "c"] and info["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert info["pretrained_cfg"]["mean"] == [0.5] * 3 and info["pretrained_cfg"]["std"] == [0.5] * 3
    plain = timm.create_model(info["architecture"], num_classes=info["num_classes"],
                              checkpoint_path=str(tmp_path / "model.safetensors")).eval()
    pc = info["pretrained_cfg"]
    inputs = (torch.as_tensor(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(pc["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(pc["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        plain_pred = plain(inputs).argmax(1).numpy()
    ours = model.logits(x)
    if method == "ce":
        np.testing.assert_allclose(plain(inputs).detach().numpy(), ours, atol=1e-4)
    assert (plain_pred == ours.argmax(1)).all()


def test_input_size_resizes_before_the_network_and_travels_with_the_weights(tmp_path, rng):
    import json

    x, y = _blobs(rng, 60, size=16)
    cfg = fit_config(backbone="resnet10t", epochs=1, batch_size=32, input_size=32)
    model = train_classifier(x, y, x, y, ["a", "b", "c"], "ce", cfg, seed=0, device="cpu")
    assert model.model.preprocess(x[:2]).shape == (2, 3, 32, 32)
    seen = []
    hook = model.model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    model.logits(x[:4])
    hook.remove()
    assert seen == [32]  # the network ran on 32 px, not on the 16 px images it was given
    model.save(tmp_path, "resnet10t")
    info = json.loads((tmp_path / "config.json").read_text())
    assert info["pretrained_cfg"]["input_size"] == [3, 32, 32] and info["tailfill"]["image_size"] == 16
    again = TrainedClassifier.load(tmp_path)
    assert again.model.input_size == 32 and again.input_size == 16
    np.testing.assert_allclose(again.logits(x), model.logits(x), atol=1e-4)
    # without the option the network sees the images as they come, and a reload does not resize them
    plain = train_classifier(x, y, x, y, ["a", "b", "c"], "ce", fit_config(backbone="resnet10t", epochs=1),
                             seed=0, device="cpu")
    plain.save(tmp_path / "plain", "resnet10t")
    assert TrainedClassifier.load(tmp_path / "plain").model.input_size is None
    assert plain.model.preprocess(x[:2]).shape == (2, 3, 16, 16)


def test_input_size_too_small_is_refused_by_the_config_check():
    from tailfill.config import load_config

    with pytest.raises(ValueError, match="classifier.input_size"):
        load_config(None, ["classifier.input_size=4"])
    assert load_config(None, ["classifier.input_size=128"]).classifier.input_size == 128


def test_dihedral_views_are_the_eight_flips_and_quarter_turns():
    from tailfill.classifier.model import dihedral

    x = torch.arange(9.0).view(1, 1, 3, 3)  # no symmetry: every view is a different array
    views = [dihedral(x, v) for v in range(8)]
    assert torch.equal(views[0], x)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8


def test_tta_averages_the_eight_views_and_travels_with_the_weights(tmp_path, rng):
    from tailfill.classifier.train import fit_and_score
    from tailfill.classifier.mixing import TrainingSet

    x, y = _blobs(rng, 60, size=16)
    x[:, :8] = 0  # the top half dark: a lesion's orientation changes what the network sees
    cfg = fit_config(backbone="resnet10t", epochs=1, batch_size=32, tta=True)
    fit = fit_and_score(TrainingSet.real(x, y), (x, y), (x[:20], y[:20]), ["a", "b", "c"], "ce", cfg, 0, "cpu")
    model = fit.model
    assert model.tta
    one = [model.logits(x[:20], view=v) for v in range(8)]
    assert not np.allclose(one[0], one[1], atol=1e-4)  # the views do differ
    softmax = [np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
               for z in one]
    np.testing.assert_allclose(fit.test_proba, np.mean(softmax, axis=0), atol=1e-5)
    model.save(tmp_path, "resnet10t")
    again = TrainedClassifier.load(tmp_path)
    assert again.tta
    np.testing.assert_allclose(again.predict_proba(x[:20]), fit.test_proba, atol=1e-5)
    # without it, one view: the probabilities of the images as they are
    model.tta = False
    np.testing.assert_allclose(model.predict_proba(x[:20]), softmax[0], atol=1e-5)


def test_weight_average_is_the_exponential_moving_average_of_the_weights():
    from tailfill.classifier.model import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    average = WeightAverage(model, decay=0.9)
    start = {k: v.clone() for k, v in average.module.state_dict().items()}
    for step in range(1, 4):
        with torch.no_grad():
            model[0].weight.fill_(1.0)
        model[1].num_batches_tracked += 1
        average.update(model)
        np.testing.assert_allclose(average.module[0].weight.numpy(), 1 - 0.9 ** step, rtol=1e-6)
    assert int(average.module[1].num_batches_tracked) == 3  # counters are copied, not averaged
    torch.testing.assert_close(average.module[1].running_var, start["1.running_var"])  # unchanged ones stay
    assert not any(p.requires_grad for p in average.module.parameters())


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_keep_last_keeps_the_final_weights_and_best_the_best_epoch(rng, ema_decay):
    x, y = _blobs(rng, 90)
    vx, vy = _blobs(rng, 30)
    vy[:10] = (vy[:10] + 1) % 3  # noisy labels: the validation score moves from epoch to epoch
    kept = {}
    for keep in ("best", "last"):
        cfg = fit_config(backbone="resnet10t", epochs=4, batch_size=32, lr=3e-3, experimental=dict(ema_decay=ema_decay, keep=keep))
        model = train_classifier(x, y, vx, vy, ["a", "b", "c"], "ce", cfg, seed=0, device="cpu")
        scores = [h["val_balanced_accuracy"] for h in model.history]
        now = balanced_accuracy(vy, model.logits(vx).argmax(1), 3)
        assert now == pytest.approx(max(scores) if keep == "best" else scores[-1])
        kept[keep] = model.model.state_dict()
    if ema_decay:  # the same training: averaged weights differ from the last step's
        cfg = fit_config(backbone="resnet10t", epochs=4, batch_size=32, lr=3e-3, experimental=dict(keep="last"))
        plain = train_classifier(x, y, vx, vy, ["a", "b", "c"], "ce", cfg, seed=0, device="cpu").model.state_dict()
        assert not torch.allclose(plain["head.weight"], kept["last"]["head.weight"])


def test_weight_average_and_keep_are_checked():
    from tailfill.config import load_config

    with pytest.raises(ValueError, match="experimental.ema_decay"):
        load_config(None, ["experimental.ema_decay=1.5"])
    with pytest.raises(ValueError, match="experimental.keep"):
        load_config(None, ["experimental.keep=first"])
    with pytest.raises(ValueError, match=r"classifier.ema_decay \(now experimental.ema_decay\)"):
        load_config(None, ["classifier.ema_decay=0.98"])  # an old config: the error names the new key
    c = load_config(None, ["experimental.ema_decay=0.98", "experimental.keep=last"]).experimental
    assert (c.ema_decay, c.keep) == (0.98, "last")


@pytest.mark.parametrize("method", ["ce", "balanced_sampling"])
def test_steps_per_epoch_is_a_fixed_budget_drawn_by_the_methods_sampler(rng, monkeypatch, method):
    """A fixed number of batches an epoch however many head images there are, drawn as the method draws."""
    import tailfill.classifier.train as classifier_train

    seen = []
    real_augment = classifier_train.augment
    monkeypatch.setattr(classifier_train, "augment", lambda x, gen: (seen.append(len(x)), real_augment(x, gen))[1])
    y = np.repeat([0, 1, 2], [200, 20, 4])
    x = _blobs(rng, len(y))[0]
    vx, vy = _blobs(rng, 12)
    cfg = fit_config(backbone="resnet10t", epochs=2, batch_size=16, steps_per_epoch=5)
    model = train_classifier(x, y, vx, vy, ["a", "b", "c"], method, cfg, seed=0, device="cpu")
    assert seen == [16] * 10 and len(model.history) == 2  # not ceil(224 / 16) = 14 a pass
    seen.clear()
    train_classifier(x, y, vx, vy, ["a", "b", "c"], method, fit_config(backbone="resnet10t", epochs=1,
                                                                             batch_size=16), seed=0, device="cpu")
    assert len(seen) == 14  # null: one pass over the training images


def test_epoch_permutation_covers_every_image_per_pass(rng):
    from tailfill.classifier.train import epoch_permutation

    order = epoch_permutation(rng, 10, 25)
    assert len(order) == 25 and sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(epoch_permutation(a, 7, 7), b.permutation(7))  # null budget: as before
