"""The classifier's named choices, without torch: long-tail methods (a loss plus a sampler) and the feature
generators of the head re-training. A config is checked against these names (``config.validate``).

=====================  ==============================================================
ce                     cross-entropy, natural sampling
balanced_sampling      cross-entropy, class-balanced re-sampling
sqrt_sampling          cross-entropy, square-root re-sampling
focal                  focal loss (gamma 2)
cb_focal               class-balanced focal loss (Cui et al. 2019, beta 0.999)
ldam_drw               LDAM margins + deferred re-weighting (Cao et al. 2019), cosine head
logit_adjust           logit-adjusted loss, tau 1 (Menon et al. 2021)
balanced_softmax       balanced softmax (Ren et al. 2020); the same loss as logit_adjust at tau 1
logit_adjust_posthoc   cross-entropy, then logits - log(prior) at prediction
=====================  ==============================================================

A new method is a ``METHODS.register`` line here (its loss a ``@LOSSES.register`` function in ``losses.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry

COSINE_SCALE = 30.0  # a cosine head's logits are cosines in [-1, 1]: scaled by this before the softmax


@dataclass(frozen=True)
class Method:
    loss: str                   # a name of losses.LOSSES
    sampler: str = "natural"    # natural | balanced | sqrt: how training images are drawn
    head: str = "linear"        # linear | cosine
    drw: bool = False           # deferred re-weighting late in training (LDAM-DRW)
    posthoc: bool = False       # logits - log(prior) at prediction


METHODS = Registry("method (classifier.methods)")
METHODS.register("ce", Method("ce"))
METHODS.register("balanced_sampling", Method("ce", sampler="balanced"))
METHODS.register("sqrt_sampling", Method("ce", sampler="sqrt"))
METHODS.register("focal", Method("focal"))
METHODS.register("cb_focal", Method("cb_focal"))
METHODS.register("ldam_drw", Method("ldam", head="cosine", drw=True))
METHODS.register("logit_adjust", Method("logit_adjust"))
METHODS.register("balanced_softmax", Method("logit_adjust"))
METHODS.register("logit_adjust_posthoc", Method("ce", posthoc=True))

# head.feature_fill: generated feature vectors for the head re-training (cRT)
FEATURE_GENERATORS = Registry("head.feature_fill")
FEATURE_GENERATORS.register("gaussian", "tailfill.classifier.feature_fill:GaussianFeatures")
FEATURE_GENERATORS.register("diffusion", "tailfill.classifier.feature_fill:FeatureDiffusion")
