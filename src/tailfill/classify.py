"""Long-tail classifier training: a timm backbone, a head, and the honest baselines.

A *method* is a loss plus a sampler (see ``METHODS``):

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

Class priors always come from the *training set actually used* (real + synthetic), so a loss
that corrects for imbalance corrects for the imbalance that is really there.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .evaluate import balanced_accuracy, classification_metrics
from .feature_fill import feature_generator, fill_features
from .io import load_tensors, read_json, save_tensors, write_json
from .data.rows import take_rows
from .mixing import class_counts, draw_probabilities
from .progress import progress
from .training import check_finite, digests_per_rank, finish_tracking, make_accelerator, normalize_images

log = logging.getLogger(__name__)

METHODS = {
    "ce": {"loss": "ce", "sampler": "natural"},
    "balanced_sampling": {"loss": "ce", "sampler": "balanced"},
    "sqrt_sampling": {"loss": "ce", "sampler": "sqrt"},
    "focal": {"loss": "focal", "sampler": "natural"},
    "cb_focal": {"loss": "cb_focal", "sampler": "natural"},
    "ldam_drw": {"loss": "ldam", "sampler": "natural", "head": "cosine", "drw": True},
    "logit_adjust": {"loss": "logit_adjust", "sampler": "natural"},
    "balanced_softmax": {"loss": "logit_adjust", "sampler": "natural"},
    "logit_adjust_posthoc": {"loss": "ce", "sampler": "natural", "posthoc": True},
}


class CosineHead(nn.Module):
    """Linear head on L2-normalised features and weights (LDAM's NormedLinear)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1, 1))

    def forward(self, x):
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


class Classifier(nn.Module):
    """timm backbone (features) + head (logits). ``features`` feeds the OOD selector.

    ``mean``/``std`` are the input normalisation: the pretrained weights' own (timm's pretrained_cfg) for
    a pretrained backbone, 0.5/0.5 (the [-1, 1] range) from scratch. ``input_size``: the side images are
    resized to before the network (None: as they come); a pretrained backbone sees lesions at the scale
    it learnt on ImageNet even when the cache is 64 px (docs/benchmarks.md, 64 px lite0).
    """

    def __init__(self, backbone: str, num_classes: int, head: str = "linear", pretrained: bool = False,
                 mean=None, std=None, input_size: int | None = None):
        super().__init__()
        self.input_size = input_size
        import timm

        from .pretrained import ALIASES, has_packaged_weights, load_packaged_weights

        backbone = ALIASES.get(backbone, backbone)
        packaged = pretrained and has_packaged_weights(backbone)  # weights from an installed package
        try:
            self.backbone = timm.create_model(backbone, pretrained=pretrained and not packaged, num_classes=0)
        except RuntimeError as e:
            raise RuntimeError(f"cannot build backbone {backbone!r} (pretrained={pretrained}): {e}. "
                               "Pretrained weights must already be in the local Hugging Face / torch cache "
                               "(or use tf_efficientnet_lite0, whose weights install with tailfill[lite0]); "
                               "set classifier.pretrained=false to train from scratch.") from None
        cfg = dict(getattr(self.backbone, "pretrained_cfg", {}) or {})
        if packaged:
            cfg["mean"], cfg["std"] = load_packaged_weights(self.backbone, backbone)
        # what forward() returns without a classifier: after the pre-logits layer when there is one (MobileNetV3)
        dim = self.feature_dim = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.head = CosineHead(dim, num_classes) if head == "cosine" else nn.Linear(dim, num_classes)
        self.mean = tuple(mean or (cfg.get("mean", (0.5,) * 3) if pretrained else (0.5,) * 3))
        self.std = tuple(std or (cfg.get("std", (0.5,) * 3) if pretrained else (0.5,) * 3))
        self.classifier_name = cfg.get("classifier", "fc") if isinstance(cfg.get("classifier", "fc"), str) else "fc"

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.head(self.backbone(x))

    def preprocess(self, images_u8) -> torch.Tensor:
        x = normalize_images(images_u8, self.mean, self.std)
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def timm_state_dict(self) -> dict:
        """Keys of a plain ``timm.create_model(backbone, num_classes=K)``. A cosine head is written as a linear
        layer with normalised weights and zero bias: the same argmax (cosine logits only divide by |features|)."""
        sd = dict(self.backbone.state_dict())
        weight = self.head.weight.detach()
        if isinstance(self.head, CosineHead):
            sd[f"{self.classifier_name}.weight"] = F.normalize(weight, dim=1)
            sd[f"{self.classifier_name}.bias"] = torch.zeros(len(weight))
        else:
            sd[f"{self.classifier_name}.weight"], sd[f"{self.classifier_name}.bias"] = weight, self.head.bias.detach()
        return sd

    def load_timm_state_dict(self, sd: dict) -> None:
        prefix = self.classifier_name + "."
        if any(k.startswith("backbone.") for k in sd):  # written by tailfill <= 0.1
            self.load_state_dict(sd)
            return
        self.backbone.load_state_dict({k: v for k, v in sd.items() if not k.startswith(prefix)})
        head = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if isinstance(self.head, CosineHead):
            head.pop("bias", None)
        self.head.load_state_dict(head)


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging, timm's ModelEma): a smoother model than
    the last step's, so what is kept depends less on the last few batches and on epoch-to-epoch noise. Unlike the
    generator's ``training.ema_update`` it averages the BatchNorm statistics too (the UNet has none), and has no
    warm-up: a classifier trains a few hundred steps, and the warm-up would cap 0.98 at ~0.95 for all of them."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.module = decay, copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for avg, now in zip(self.module.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:  # parameters and BatchNorm statistics; counters are copied
                avg.lerp_(now.detach().to(avg.dtype), 1 - self.decay)
            else:
                avg.copy_(now)


def dihedral(x: torch.Tensor, view: int) -> torch.Tensor:
    """View 0-7 of a (N, C, H, W) batch: ``view % 4`` quarter turns, mirrored when ``view >= 4``."""
    x = torch.rot90(x, view % 4, (2, 3))
    return x.flip(3) if view >= 4 else x


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample flips, 90-degree turns, shift (reflect pad + crop) and brightness on a float batch."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    k = int(torch.randint(4, (1,), generator=gen))
    x = torch.rot90(x, k, (2, 3))
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    x = xp[:, :, dy:dy + h, dx:dx + w]
    scale = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5).to(x.device)
    return (x + 1) * scale - 1


def class_weights_cb(counts: np.ndarray, beta: float) -> torch.Tensor:
    eff = (1 - beta ** counts) / (1 - beta)
    w = 1.0 / np.maximum(eff, 1e-12)
    return torch.tensor(w / w.sum() * len(counts), dtype=torch.float32)


class LongTailLoss(nn.Module):
    """All the losses of ``METHODS`` behind one call: ``loss(logits, targets, epoch_fraction)``."""

    def __init__(self, kind: str, counts: np.ndarray, drw: bool = False):
        super().__init__()
        self.kind, self.drw = kind, drw
        counts = np.maximum(np.asarray(counts, dtype=np.float64), 1)
        self.register_buffer("log_prior", torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32))
        self.register_buffer("cb_weights", class_weights_cb(counts, 0.999))
        self.register_buffer("drw_weights", class_weights_cb(counts, 0.9999))
        m = 1.0 / counts ** 0.25
        self.register_buffer("margins", torch.tensor(m * (0.5 / m.max()), dtype=torch.float32))

    def per_sample(self, logits, y, progress: float = 0.0):
        """(loss per image, class weight per image or None) for hard labels ``y``."""
        if self.kind == "ce":
            return F.cross_entropy(logits, y, reduction="none"), None
        if self.kind == "logit_adjust":
            return F.cross_entropy(logits + self.log_prior, y, reduction="none"), None
        if self.kind in ("focal", "cb_focal"):
            gamma = 2.0 if self.kind == "focal" else 1.0
            logp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
            loss = -((1 - logp.exp()) ** gamma) * logp
            return (loss * self.cb_weights[y] if self.kind == "cb_focal" else loss), None
        if self.kind == "ldam":
            s = 30.0  # logits are cosines in [-1, 1]: scale them
            adjusted = logits - F.one_hot(y, logits.shape[1]) * self.margins[None, :]
            # deferred re-weighting late in training: a weighted mean, as cross_entropy's weight=
            return F.cross_entropy(s * adjusted, y, reduction="none"), \
                self.drw_weights[y] if self.drw and progress >= 0.75 else None
        raise ValueError(f"unknown loss {self.kind!r}")

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


@dataclass
class TrainedClassifier:
    model: Classifier
    classes: list
    method: str
    log_prior: np.ndarray
    history: list
    input_size: int | None = None  # the side of the images it was trained on (the network's: model.input_size)
    rank_digests: list | None = None  # weights hash of each process's copy after training (equal under DDP)
    tta: bool = False  # predict_proba averages the 8 dihedral views (classifier.tta)

    @torch.inference_mode()
    def logits(self, images_u8: np.ndarray, batch_size: int = 256, view: int = 0) -> np.ndarray:
        """Logits of ``images_u8`` seen as dihedral ``view`` (0: as they are)."""
        self.model.eval()
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(images_u8), batch_size):
            x = self.model.preprocess(torch.as_tensor(np.asarray(images_u8[i:i + batch_size])).to(device))
            z = self.model(dihedral(x, view)).float()
            if METHODS[self.method].get("head") == "cosine":
                z = 30.0 * z
            out.append(z.cpu())
        z = torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), np.float32)
        if METHODS[self.method].get("posthoc"):
            z = z - self.log_prior[None, :]
        return z

    def predict_proba(self, images_u8: np.ndarray) -> np.ndarray:
        """Class probabilities; with ``tta`` the mean over the 8 flips and quarter turns."""
        probas = []
        for view in range(8 if self.tta else 1):
            z = self.logits(images_u8, view=view)
            p = np.exp(z - z.max(axis=1, keepdims=True))
            probas.append(p / p.sum(axis=1, keepdims=True))
        return np.mean(probas, axis=0)

    @torch.inference_mode()
    def features(self, images_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        self.model.eval()
        device = next(self.model.parameters()).device
        feats = [self.model.features(self.model.preprocess(torch.as_tensor(np.asarray(images_u8[i:i + batch_size])).to(device)))
                 .float().cpu() for i in range(0, len(images_u8), batch_size)]
        return torch.cat(feats).numpy() if feats else np.zeros((0, self.model.feature_dim), np.float32)

    def save(self, out_dir: str | Path, backbone: str) -> None:
        """``model.safetensors`` with the keys of a plain timm model, and ``config.json`` beside it in timm's
        style (architecture, num_classes, label_names, pretrained_cfg with input size, mean, std) plus what
        tailfill needs to predict as it did (method, head, prior)::

            model = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"],
                                      checkpoint_path="model.safetensors")
        """
        from .pretrained import ALIASES

        out_dir, backbone = Path(out_dir), ALIASES.get(backbone, backbone)
        m = self.model
        save_tensors(out_dir / "model.safetensors", m.timm_state_dict())
        size = m.input_size or self.input_size
        write_json(out_dir / "config.json", {
            "architecture": backbone, "num_classes": len(self.classes), "label_names": self.classes,
            "pretrained_cfg": {"input_size": [3, size, size] if size else None, "mean": list(m.mean),
                               "std": list(m.std), "interpolation": "bilinear", "crop_pct": 1.0,
                               "classifier": m.classifier_name},
            "tailfill": {"method": self.method, "head": METHODS[self.method].get("head", "linear"),
                         "image_size": self.input_size, "resize": bool(m.input_size),
                         "log_prior": self.log_prior.tolist(), "tta": self.tta, "history": self.history,
                         "weights_digest_per_rank": self.rank_digests}})

    @classmethod
    def load(cls, out_dir: str | Path, device: str = "cpu") -> "TrainedClassifier":
        out_dir = Path(out_dir)
        if not (out_dir / "config.json").is_file() and (out_dir / "model.json").is_file():  # tailfill <= 0.1
            info = read_json(out_dir / "model.json")
            info = {"architecture": info["backbone"], "label_names": info["classes"], "pretrained_cfg": {},
                    "tailfill": info}
        else:
            info = read_json(out_dir / "config.json")
        t, pc = info["tailfill"], info["pretrained_cfg"]
        size = (pc.get("input_size") or [None, None, None])[-1]
        model = Classifier(info["architecture"], len(info["label_names"]), METHODS[t["method"]].get("head", "linear"),
                           mean=pc.get("mean"), std=pc.get("std"), input_size=size if t.get("resize") else None)
        model.load_timm_state_dict(load_tensors(out_dir / "model.safetensors"))
        out = cls(model.to(device).eval(), info["label_names"], t["method"], np.asarray(t["log_prior"]), t["history"])
        out.input_size = t.get("image_size", size)
        out.tta = bool(t.get("tta", False))
        return out


def epoch_permutation(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """``draws`` indices into ``n`` images, every image once per pass (one permutation when ``draws == n``)."""
    return np.concatenate([rng.permutation(n) for _ in range(math.ceil(draws / n))])[:draws]


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
                     val_labels: np.ndarray, classes: list, method: str, cfg, seed: int = 0,
                     device: str = "auto", synthetic: np.ndarray | None = None,
                     soft_labels: tuple | None = None, tracking=None) -> TrainedClassifier:
    """Train with ``method`` and keep the epoch with the best *validation* balanced accuracy (``cfg.keep``:
    ``last`` keeps the final weights). With ``cfg.ema_decay`` it is the moving average of the weights that is
    validated and kept.

    ``cfg`` is a :class:`~tailfill.config.ClassifierConfig`. ``synthetic`` marks generated training
    images: their share of each class's draws is capped by ``cfg.synthetic_share`` and their loss
    weighted by ``cfg.synthetic_loss_weight``. With ``cfg.retrain_head`` the head is then re-trained
    on the real images only (see :func:`retrain_head`). ``soft_labels = (source_labels, target_weight)``
    per image: image i counts ``target_weight[i]`` as its label and the rest as ``source_labels[i]``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    spec = METHODS[method]
    num_classes = len(classes)
    accelerator = make_accelerator(cfg.mixed_precision, device, tracking, f"classifier_{method}_seed{seed}", vars(cfg))
    counts = np.bincount(train_labels, minlength=num_classes)
    if (counts == 0).any():
        empty = [classes[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(f"no training images for class(es) {', '.join(empty)}")
    synthetic = np.zeros(len(train_labels), bool) if synthetic is None else np.asarray(synthetic, bool)
    torch.manual_seed(seed)
    # channels_last: convolutions run on NHWC without layout conversions (1.12x for resnet18 training at
    # 64 px on 2 CPU cores, docs/performance.md); weights and results are the same
    model = Classifier(cfg.backbone, num_classes, spec.get("head", "linear"), cfg.pretrained,
                       input_size=cfg.input_size).to(memory_format=torch.channels_last)
    if not cfg.synthetic_rebalances:  # the loss's class prior from the real images: synthetic ones add no mass
        counts = class_counts(np.asarray(train_labels)[~synthetic], num_classes)
    criterion = LongTailLoss(spec["loss"], counts, spec.get("drw", False)).to(accelerator.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # a fixed budget (classifier.steps_per_epoch) keeps a fit's cost off the head class's size: NV's 5,000
    # images need not be seen each epoch for DF's 80 to be drawn often enough
    steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(train_labels) / cfg.batch_size /
                                                              accelerator.num_processes))
    draws = cfg.steps_per_epoch * cfg.batch_size * accelerator.num_processes if cfg.steps_per_epoch \
        else len(train_labels)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    model, opt = accelerator.prepare(model, opt)
    probs = draw_probabilities(train_labels, spec["sampler"], synthetic, cfg.synthetic_share, cfg.synthetic_rebalances)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    labels_t = torch.as_tensor(train_labels, dtype=torch.long)
    sample_w = torch.as_tensor(np.where(synthetic, cfg.synthetic_loss_weight, 1.0), dtype=torch.float32)
    weighted = bool(synthetic.any()) and cfg.synthetic_loss_weight != 1.0
    if soft_labels is not None and np.all(np.asarray(soft_labels[1]) == 1.0):
        soft_labels = None  # every label is hard
    if soft_labels is not None:
        source_t = torch.as_tensor(np.asarray(soft_labels[0]), dtype=torch.long)
        lam_t = torch.as_tensor(np.asarray(soft_labels[1]), dtype=torch.float32)
    log_prior = np.log(counts / counts.sum())
    result = TrainedClassifier(accelerator.unwrap_model(model), list(classes), method, log_prior, [])
    average = WeightAverage(result.model, cfg.ema_decay) if cfg.ema_decay else None
    judged = result if average is None else dataclasses.replace(result, model=average.module)  # what is validated
    best, best_state = -1.0, None
    bar = progress(cfg.epochs * steps_per_epoch, f"classifier {method} seed {seed}", "batch",
                   disable=not accelerator.is_main_process)
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.time()
        order = rng.choice(len(train_labels), size=draws, p=probs) if probs is not None \
            else epoch_permutation(rng, len(train_labels), draws)
        # under `accelerate launch` each process takes its share of the epoch (same seed -> disjoint shares)
        order = order[accelerator.process_index::accelerator.num_processes]
        losses = []
        for i in range(steps_per_epoch):
            bar.update(1)
            batch = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
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
                loss = criterion(model(x).float(), y, epoch / cfg.epochs, w, soft)
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
                     cfg.epochs, np.mean(losses), val_bacc, time.time() - t0)
        if val_bacc > best or cfg.keep == "last":
            best, best_state = val_bacc, copy.deepcopy(judged.model.state_dict())
    bar.close()
    finish_tracking(accelerator)
    result.rank_digests = digests_per_rank(result.model)  # DDP check: one value when the ranks are in sync
    result.input_size = int(train_images.shape[1])
    result.model.load_state_dict(best_state)
    result.model.eval()
    if cfg.retrain_head:
        retrain_head_on_real(result, train_images, train_labels, synthetic, val_images, val_labels, cfg, seed)
    return result


def retrain_head_on_real(result: TrainedClassifier, images: np.ndarray, labels: np.ndarray, synthetic: np.ndarray,
                         val_images: np.ndarray, val_labels: np.ndarray, cfg, seed: int = 0) -> TrainedClassifier:
    """cRT's second stage as :func:`train_classifier` runs it after the first: the head re-trained on the rows
    of the first stage's training set that are real (``~synthetic``; the control's repeats are not)."""
    real = ~np.asarray(synthetic, bool)
    return retrain_head(result, take_rows(images, real), np.asarray(labels)[real], val_images, val_labels, cfg, seed)


def retrain_head(result: TrainedClassifier, images: np.ndarray, labels: np.ndarray, val_images: np.ndarray,
                 val_labels: np.ndarray, cfg, seed: int = 0, views: int = 4) -> TrainedClassifier:
    """Classifier re-training (cRT, Kang et al. 2020): freeze the backbone, re-initialise the head and train
    it with class-balanced sampling on ``images`` (the real ones) for ``cfg.head_epochs`` (``cfg.head_init``:
    ``keep`` fine-tunes the trained head instead, as LDMLR does); keeps the epoch
    with the best validation balanced accuracy (the unchanged head competes too). Features are taken once,
    over ``views`` augmented copies of each image; with ``cfg.feature_fill`` generated ones are added
    (:mod:`tailfill.feature_fill`), at most ``cfg.feature_share`` of each class's draws."""
    model = result.model
    num_classes = len(result.classes)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.eval()  # a batch at a time: the images may be rows on disk, and float copies of all are 4x uint8
        feats = torch.cat([torch.cat([model.features(augment(model.preprocess(images[i:i + 256]), gen).to(device))
                                      .float().cpu() for i in range(0, len(images), 256)]) for _ in range(views)])
    ys, synthetic = np.tile(labels, views), None
    if cfg.feature_fill:  # LDMLR: generated feature vectors beside the real ones, at most feature_share of a class
        feats, ys, synthetic = fill_features(feats.numpy(), ys, feature_generator(cfg), seed)
        feats = torch.as_tensor(feats)
    ys = torch.as_tensor(ys, dtype=torch.long)
    scale = 30.0 if METHODS[result.method].get("head") == "cosine" else 1.0
    probs = draw_probabilities(ys.numpy(), "balanced", synthetic, cfg.feature_share)
    rng = np.random.default_rng(seed)

    def val_score():
        return balanced_accuracy(val_labels, result.logits(val_images).argmax(1), num_classes)

    best, best_state = val_score(), copy.deepcopy(model.head.state_dict())
    torch.manual_seed(seed)
    head = model.head
    if cfg.head_init == "reset":  # cRT: re-initialised, the old head learnt the old class balance
        for p in head.parameters():
            torch.nn.init.normal_(p, std=0.01) if p.dim() > 1 else torch.nn.init.zeros_(p)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.head_epochs):
        head.train()
        order = rng.choice(len(ys), size=len(ys), p=probs)
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.as_tensor(order[i:i + cfg.batch_size])
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
    """Train one classifier on ``train`` (a :class:`~tailfill.mixing.TrainingSet`) and score it on the real
    ``val`` and ``test`` ``(images, labels)``: the one rule the pipeline and the benchmark both use."""
    t0 = time.time()
    model = train_classifier(train.images, train.labels, val[0], val[1], classes, method, cfg, seed, device,
                             synthetic=train.synthetic, soft_labels=train.soft_labels(), tracking=tracking)
    model.tta = bool(cfg.tta)
    return score(model, val, test, classes, time.time() - t0)
