"""The classifier: a timm backbone and a head, its timm-compatible save/load, weight averaging, test-time views."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.io import load_tensors, read_json, save_tensors, write_json
from ..utils.training import normalize_images
from .methods import COSINE_SCALE, METHODS


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
            if METHODS[self.method].head == "cosine":
                z = COSINE_SCALE * z
            out.append(z.cpu())
        z = torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), np.float32)
        if METHODS[self.method].posthoc:
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
            "tailfill": {"method": self.method, "head": METHODS[self.method].head,
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
        model = Classifier(info["architecture"], len(info["label_names"]), METHODS[t["method"]].head,
                           mean=pc.get("mean"), std=pc.get("std"), input_size=size if t.get("resize") else None)
        model.load_timm_state_dict(load_tensors(out_dir / "model.safetensors"))
        out = cls(model.to(device).eval(), info["label_names"], t["method"], np.asarray(t["log_prior"]), t["history"])
        out.input_size = t.get("image_size", size)
        out.tta = bool(t.get("tta", False))
        return out

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
