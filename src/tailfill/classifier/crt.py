"""cRT: the backbone kept, the head re-trained class-balanced on real images (and generated features)."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from ..data.rows import take_rows
from ..evaluation.metrics import balanced_accuracy
from ..utils.training import check_finite
from .feature_fill import feature_generator, fill_features
from .methods import COSINE_SCALE, METHODS
from .mixing import draw_probabilities
from .model import TrainedClassifier, augment


def retrain_head_on_real(result: TrainedClassifier, images: np.ndarray, labels: np.ndarray, synthetic: np.ndarray,
                         val_images: np.ndarray, val_labels: np.ndarray, cfg, seed: int = 0) -> TrainedClassifier:
    """cRT's second stage as :func:`train_classifier` runs it after the first: the head re-trained on the rows
    of the first stage's training set that are real (``~synthetic``; the control's repeats are not)."""
    real = ~np.asarray(synthetic, bool)
    return retrain_head(result, take_rows(images, real), np.asarray(labels)[real], val_images, val_labels, cfg, seed)


def retrain_head(result: TrainedClassifier, images: np.ndarray, labels: np.ndarray, val_images: np.ndarray,
                 val_labels: np.ndarray, cfg, seed: int = 0, views: int = 4) -> TrainedClassifier:
    """Classifier re-training (cRT, Kang et al. 2020): freeze the backbone, re-initialise the head and train
    it with class-balanced sampling on ``images`` (the real ones) for ``cfg.head.epochs`` (``cfg.head.init``:
    ``keep`` fine-tunes the trained head instead, as LDMLR does), at ``cfg.classifier``'s lr; keeps the epoch
    with the best validation balanced accuracy (the unchanged head competes too). Features are taken once,
    over ``views`` augmented copies of each image; with ``cfg.head.feature_fill`` generated ones are added
    (:mod:`tailfill.classifier.feature_fill`), at most ``cfg.head.feature_share`` of each class's draws.
    ``cfg`` is the run's :class:`~tailfill.config.Config`."""
    head_cfg, c = cfg.head, cfg.classifier
    model = result.model
    num_classes = len(result.classes)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.eval()  # a batch at a time: the images may be rows on disk, and float copies of all are 4x uint8
        feats = torch.cat([torch.cat([model.features(augment(model.preprocess(images[i:i + 256]), gen).to(device))
                                      .float().cpu() for i in range(0, len(images), 256)]) for _ in range(views)])
    ys, synthetic = np.tile(labels, views), None
    if head_cfg.feature_fill:  # LDMLR: generated feature vectors beside the real ones, at most feature_share of a class
        feats, ys, synthetic = fill_features(feats.numpy(), ys, feature_generator(head_cfg), seed)
        feats = torch.as_tensor(feats)
    ys = torch.as_tensor(ys, dtype=torch.long)
    scale = COSINE_SCALE if METHODS[result.method].head == "cosine" else 1.0
    probs = draw_probabilities(ys.numpy(), "balanced", synthetic, head_cfg.feature_share)
    rng = np.random.default_rng(seed)

    def val_score():
        return balanced_accuracy(val_labels, result.logits(val_images).argmax(1), num_classes)

    best, best_state = val_score(), copy.deepcopy(model.head.state_dict())
    torch.manual_seed(seed)
    head = model.head
    if head_cfg.init == "reset":  # cRT: re-initialised, the old head learnt the old class balance
        for p in head.parameters():
            torch.nn.init.normal_(p, std=0.01) if p.dim() > 1 else torch.nn.init.zeros_(p)
    opt = torch.optim.AdamW(head.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    for epoch in range(head_cfg.epochs):
        head.train()
        order = rng.choice(len(ys), size=len(ys), p=probs)
        for i in range(0, len(order), c.batch_size):
            idx = torch.as_tensor(order[i:i + c.batch_size])
            loss = F.cross_entropy(scale * head(feats[idx].to(device)), ys[idx].to(device))
            check_finite(loss, f"head re-training, epoch {epoch}", "lower classifier.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        score = val_score()
        result.history.append({"epoch": f"head {epoch + 1}", "val_balanced_accuracy": score})
        if score > best:
            best, best_state = score, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    model.eval()
    # the head now saw every class equally often: a post-hoc prior correction would correct twice
    result.log_prior = np.full(num_classes, -np.log(num_classes))
    return result
