"""Training one classifier (a method, a seed) and scoring it on validation and test."""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.metrics import balanced_accuracy, classification_metrics
from ..utils.progress import progress
from ..utils.training import check_finite, digests_per_rank, finish_tracking, make_accelerator
from .crt import retrain_head_on_real
from .losses import LongTailLoss
from .methods import METHODS
from .mixing import class_counts, draw_probabilities
from .model import Classifier, TrainedClassifier, WeightAverage, augment

log = logging.getLogger(__name__)


def epoch_permutation(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """``draws`` indices into ``n`` images, every image once per pass (one permutation when ``draws == n``)."""
    return np.concatenate([rng.permutation(n) for _ in range(math.ceil(draws / n))])[:draws]


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
                     val_labels: np.ndarray, classes: list, method: str, cfg, seed: int = 0,
                     device: str = "auto", synthetic: np.ndarray | None = None,
                     soft_labels: tuple | None = None, tracking=None) -> TrainedClassifier:
    """Train with ``method`` and keep the epoch with the best *validation* balanced accuracy.

    ``cfg`` is the run's :class:`~tailfill.config.Config`: its ``classifier`` section trains, ``mixing`` says how
    the images ``synthetic`` marks are drawn (``share``, ``rebalances``), ``head.retrain`` then re-trains the
    head on the real images only (:func:`~tailfill.classifier.crt.retrain_head`), and ``experimental`` holds
    ``synthetic_loss_weight``, ``ema_decay`` (validate and keep a moving average) and ``keep: last``.
    ``soft_labels = (source_labels, target_weight)`` per image: image i counts ``target_weight[i]`` as its label
    and the rest as ``source_labels[i]``.
    """
    c, mix, exp = cfg.classifier, cfg.mixing, cfg.experimental
    spec = METHODS.get(method)
    num_classes = len(classes)
    accelerator = make_accelerator(c.mixed_precision, device, tracking, f"classifier_{method}_seed{seed}", vars(c))
    counts = np.bincount(train_labels, minlength=num_classes)
    if (counts == 0).any():
        empty = [classes[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(f"no training images for class(es) {', '.join(empty)}")
    synthetic = np.zeros(len(train_labels), bool) if synthetic is None else np.asarray(synthetic, bool)
    torch.manual_seed(seed)
    # channels_last: convolutions run on NHWC without layout conversions (1.12x for resnet18 training at
    # 64 px on 2 CPU cores, docs/performance.md); weights and results are the same
    model = Classifier(c.backbone, num_classes, spec.head, c.pretrained,
                       input_size=c.input_size).to(memory_format=torch.channels_last)
    if not mix.rebalances:  # the loss's class prior from the real images: synthetic ones add no mass
        counts = class_counts(np.asarray(train_labels)[~synthetic], num_classes)
    criterion = LongTailLoss(spec.loss, counts, spec.drw).to(accelerator.device)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    # a fixed budget (classifier.steps_per_epoch) keeps a fit's cost off the head class's size: NV's 5,000
    # images need not be seen each epoch for DF's 80 to be drawn often enough
    steps_per_epoch = c.steps_per_epoch or max(1, math.ceil(len(train_labels) / c.batch_size /
                                                              accelerator.num_processes))
    draws = c.steps_per_epoch * c.batch_size * accelerator.num_processes if c.steps_per_epoch \
        else len(train_labels)
    total = c.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=total, pct_start=0.15)
    model, opt = accelerator.prepare(model, opt)
    probs = draw_probabilities(train_labels, spec.sampler, synthetic, mix.share, mix.rebalances)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    labels_t = torch.as_tensor(train_labels, dtype=torch.long)
    sample_w = torch.as_tensor(np.where(synthetic, exp.synthetic_loss_weight, 1.0), dtype=torch.float32)
    weighted = bool(synthetic.any()) and exp.synthetic_loss_weight != 1.0
    if soft_labels is not None and np.all(np.asarray(soft_labels[1]) == 1.0):
        soft_labels = None  # every label is hard
    if soft_labels is not None:
        source_t = torch.as_tensor(np.asarray(soft_labels[0]), dtype=torch.long)
        lam_t = torch.as_tensor(np.asarray(soft_labels[1]), dtype=torch.float32)
    log_prior = np.log(counts / counts.sum())
    result = TrainedClassifier(accelerator.unwrap_model(model), list(classes), method, log_prior, [])
    average = WeightAverage(result.model, exp.ema_decay) if exp.ema_decay else None
    judged = result if average is None else dataclasses.replace(result, model=average.module)  # what is validated
    best, best_state = -1.0, None
    bar = progress(c.epochs * steps_per_epoch, f"classifier {method} seed {seed}", "batch",
                   disable=not accelerator.is_main_process)
    for epoch in range(c.epochs):
        model.train()
        t0 = time.time()
        order = rng.choice(len(train_labels), size=draws, p=probs) if probs is not None \
            else epoch_permutation(rng, len(train_labels), draws)
        # under `accelerate launch` each process takes its share of the epoch (same seed -> disjoint shares)
        order = order[accelerator.process_index::accelerator.num_processes]
        losses = []
        for i in range(steps_per_epoch):
            bar.update(1)
            batch = order[i * c.batch_size:(i + 1) * c.batch_size]
            if len(batch) < 2:
                continue
            idx = torch.as_tensor(batch)
            # only the batch is read: the training images may be rows on disk (data.rows.NpyRows)
            x = augment(result.model.preprocess(train_images[batch]), gen).to(
                accelerator.device, memory_format=torch.channels_last)
            y = labels_t[idx].to(accelerator.device)
            w = sample_w[idx].to(accelerator.device) if weighted else None
            with accelerator.autocast():
                soft = None if soft_labels is None else (source_t[idx].to(accelerator.device),
                                                         lam_t[idx].to(accelerator.device))
                loss = criterion(model(x).float(), y, epoch / c.epochs, w, soft)
            check_finite(loss, f"classifier {method}, epoch {epoch}", "lower classifier.lr")
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            if average is not None:
                average.update(result.model)
            losses.append(loss.item())
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
        val_bacc = balanced_accuracy(val_labels, judged.logits(val_images).argmax(1), num_classes)
        result.history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_balanced_accuracy": val_bacc,
                               "seconds": time.time() - t0})
        accelerator.log({"train/loss": float(np.mean(losses)), "val/balanced_accuracy": val_bacc,
                         "train/lr": sched.get_last_lr()[0]}, step=epoch + 1)
        if accelerator.is_main_process:
            log.info("%s seed %d epoch %d/%d: loss %.4f, val balanced accuracy %.3f (%.0f s)", method, seed, epoch + 1,
                     c.epochs, np.mean(losses), val_bacc, time.time() - t0)
        if val_bacc > best or exp.keep == "last":
            best, best_state = val_bacc, copy.deepcopy(judged.model.state_dict())
    bar.close()
    finish_tracking(accelerator)
    result.rank_digests = digests_per_rank(result.model)  # DDP check: one value when the ranks are in sync
    result.input_size = int(train_images.shape[1])
    result.model.load_state_dict(best_state)
    result.model.eval()
    if cfg.head.retrain:
        retrain_head_on_real(result, train_images, train_labels, synthetic, val_images, val_labels, cfg, seed)
    return result


@dataclass
class FitResult:
    """A trained classifier and its scores: metrics on validation and test, test probabilities."""

    model: TrainedClassifier
    val: dict
    test: dict
    test_proba: np.ndarray
    seconds: float


def score(model: TrainedClassifier, val: tuple, test: tuple, classes: list, seconds: float = 0.0) -> FitResult:
    """``model`` scored on the real ``val`` and ``test`` ``(images, labels)``, with its own ``tta`` setting."""
    (val_x, val_y), (test_x, test_y) = val, test
    proba = model.predict_proba(test_x)
    return FitResult(model, classification_metrics(val_y, model.predict_proba(val_x), classes),
                     classification_metrics(test_y, proba, classes), proba, seconds)


def fit_and_score(train, val: tuple, test: tuple, classes: list, method: str, cfg, seed: int = 0,
                  device: str = "auto", tracking=None) -> FitResult:
    """Train one classifier on ``train`` (a :class:`~tailfill.classifier.mixing.TrainingSet`) and score it on the real
    ``val`` and ``test`` ``(images, labels)``: the one rule the pipeline and the benchmark both use."""
    t0 = time.time()
    model = train_classifier(train.images, train.labels, val[0], val[1], classes, method, cfg, seed, device,
                             synthetic=train.synthetic, soft_labels=train.soft_labels(), tracking=tracking)
    model.tta = bool(cfg.classifier.tta)
    return score(model, val, test, classes, time.time() - t0)
