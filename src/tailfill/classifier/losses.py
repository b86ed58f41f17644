"""The long-tail losses (``LOSSES``, each a per-image loss over a :class:`LongTailLoss`'s class statistics),
behind one call. Which loss each method trains with is in ``methods.METHODS``.

Class priors always come from the *training set actually used* (real + synthetic), so a loss
that corrects for imbalance corrects for the imbalance that is really there.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry
from .methods import COSINE_SCALE

# name -> per_sample(criterion, logits, y, progress) -> (loss per image, class weight per image or None)
LOSSES = Registry("loss")


@LOSSES.register("ce")
def cross_entropy(c, logits, y, progress):
    return F.cross_entropy(logits, y, reduction="none"), None


@LOSSES.register("logit_adjust")
def logit_adjusted(c, logits, y, progress):
    return F.cross_entropy(logits + c.log_prior, y, reduction="none"), None


@LOSSES.register("focal")
def focal(c, logits, y, progress, gamma: float = 2.0):
    logp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    return -((1 - logp.exp()) ** gamma) * logp, None


@LOSSES.register("cb_focal")
def class_balanced_focal(c, logits, y, progress):
    return focal(c, logits, y, progress, gamma=1.0)[0] * c.cb_weights[y], None


@LOSSES.register("ldam")
def ldam(c, logits, y, progress):
    # logits are cosines: margins taken off the true class, then scaled; re-weighted late in training (DRW),
    # as cross_entropy's weight= would
    adjusted = logits - F.one_hot(y, logits.shape[1]) * c.margins[None, :]
    return F.cross_entropy(COSINE_SCALE * adjusted, y, reduction="none"), \
        c.drw_weights[y] if c.drw and progress >= 0.75 else None


def class_weights_cb(counts: np.ndarray, beta: float) -> torch.Tensor:
    eff = (1 - beta ** counts) / (1 - beta)
    w = 1.0 / np.maximum(eff, 1e-12)
    return torch.tensor(w / w.sum() * len(counts), dtype=torch.float32)


class LongTailLoss(nn.Module):
    """Every loss of ``LOSSES`` behind one call: ``loss(logits, targets, epoch_fraction)``."""

    def __init__(self, kind: str, counts: np.ndarray, drw: bool = False):
        super().__init__()
        LOSSES.get(kind)  # an unknown loss fails here, naming the choices
        self.kind, self.drw = kind, drw
        counts = np.maximum(np.asarray(counts, dtype=np.float64), 1)
        self.register_buffer("log_prior", torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32))
        self.register_buffer("cb_weights", class_weights_cb(counts, 0.999))
        self.register_buffer("drw_weights", class_weights_cb(counts, 0.9999))
        m = 1.0 / counts ** 0.25
        self.register_buffer("margins", torch.tensor(m * (0.5 / m.max()), dtype=torch.float32))

    def per_sample(self, logits, y, progress: float = 0.0):
        """(loss per image, class weight per image or None) for hard labels ``y``."""
        return LOSSES.get(self.kind)(self, logits, y, progress)

    def forward(self, logits, y, progress: float = 0.0, sample_weight: torch.Tensor | None = None,
                soft: tuple | None = None):
        """Mean loss over the batch. ``sample_weight`` (per image, e.g. lower for synthetic ones) re-weights it;
        ``soft = (y_source, lam)`` gives soft labels lam * y + (1 - lam) * y_source (translated images),
        as the same mix of the two hard-label losses."""
        loss, class_weight = self.per_sample(logits, y, progress)
        if soft is not None:
            y_source, lam = soft
            loss = lam * loss + (1 - lam) * self.per_sample(logits, y_source, progress)[0]
        w = torch.ones_like(loss) if sample_weight is None else sample_weight.to(loss)
        if class_weight is not None:
            w = w * class_weight
        return (w * loss).sum() / w.sum()
