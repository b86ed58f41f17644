"""Step 5, the classifier: long-tail methods and losses (``losses``), the model with its timm-compatible
save/load (``model``), training and scoring (``train``), cRT (``crt``), what it trains on (``mixing``),
generated features for the head (``feature_fill``) and packaged ImageNet weights (``pretrained``)."""

import importlib

# name -> submodule: imported on first use, so reading the package's light parts (a config's names) needs
# no torch
_LAZY = {
    "Classifier": "model",
    "FitResult": "train",
    "LongTailLoss": "losses",
    "METHODS": "methods",
    "TrainedClassifier": "model",
    "TrainingSet": "mixing",
    "fit_and_score": "train",
    "score": "train",
    "train_classifier": "train",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
