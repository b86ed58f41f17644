"""Step 5, the classifier: long-tail methods and losses (``losses``), the model with its timm-compatible
save/load (``model``), training and scoring (``train``), cRT (``crt``), what it trains on (``mixing``),
generated features for the head (``feature_fill``) and packaged ImageNet weights (``pretrained``)."""
from ..utils.lazy import lazy_exports

# each public name -> its submodule, imported on first use: the package's light parts (the names a config is
# checked against) import no torch
__getattr__, __all__ = lazy_exports(__name__, {
    "Classifier": "model",
    "FitResult": "train",
    "LongTailLoss": "losses",
    "METHODS": "methods",
    "TrainedClassifier": "model",
    "TrainingSet": "mixing",
    "fit_and_score": "train",
    "score": "train",
    "train_classifier": "train",
})
