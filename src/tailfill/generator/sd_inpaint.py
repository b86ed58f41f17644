"""Pretrained Stable-Diffusion-style inpainting, class-conditioned (``diffusion.pretrained: PATH``).

A diffusers inpainting pipeline folder (a 9-channel ``UNet2DConditionModel`` in ``unet/`` and an
``AutoencoderKL`` in ``vae/``, e.g. an SD inpainting checkpoint already on your disk) is fine-tuned on
your classes. No text encoder is needed: each class (and a null class, for classifier-free guidance)
gets a learned set of ``class_tokens`` embeddings that is fed to the UNet's cross-attention as its
context. Fine-tuning is LoRA on the attention projections (``diffusion.finetune: lora``, needs
``peft``) or the whole UNet (``full``). Nothing is downloaded: the folder must be local.

:class:`ClassConditionedUNet` looks to the rest of tailfill like the pixel/latent ``UNet2DModel``
(``forward(sample, t, class_labels)``, ``config.num_class_embeds``, ``save_pretrained``), so training,
EMA, checkpoints, resume and :class:`~tailfill.generator.pipeline.InpaintPipeline` work unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn

from ..utils.io import load_tensors, save_tensors

META = "class_conditioned.json"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _require_peft():
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ImportError("diffusion.finetune=lora needs the peft package: pip install 'tailfill[sd]' "
                          "(or set diffusion.finetune=full)") from None


class ClassConditionedUNet(nn.Module):
    """A pretrained inpainting ``UNet2DConditionModel`` driven by learned class tokens instead of text."""

    def __init__(self, unet, num_classes: int, tokens: int = 4, finetune: str = "lora", lora_rank: int = 8,
                 base: str | None = None):
        super().__init__()
        self.unet, self.finetune, self.lora_rank, self.base = unet, finetune, lora_rank, base
        dim = unet.config.cross_attention_dim
        self.class_tokens = nn.Parameter(torch.randn(num_classes + 1, tokens, dim) * 0.02)  # the last row: null
        if finetune == "lora":
            _require_peft()
            from peft import LoraConfig

            unet.requires_grad_(False)
            unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                        target_modules=LORA_TARGETS))
        elif finetune != "full":
            raise ValueError(f"diffusion.finetune is lora or full, got {finetune!r}")
        self.latent_channels = unet.config.out_channels
        self.config = SimpleNamespace(num_class_embeds=num_classes + 1, in_channels=2 * self.latent_channels + 1,
                                      out_channels=self.latent_channels, sample_size=unet.config.sample_size)

    @classmethod
    def from_base(cls, path: str | Path, num_classes: int, tokens: int = 4, finetune: str = "lora",
                  lora_rank: int = 8) -> "ClassConditionedUNet":
        """Start from a local diffusers inpainting pipeline folder (its ``unet/``)."""
        from diffusers import UNet2DConditionModel

        path = Path(path)
        if not (path / "unet" / "config.json").is_file():
            raise FileNotFoundError(f"diffusion.pretrained: no diffusers pipeline with a unet/ at {path}; it must be "
                                    "a local folder (nothing is downloaded)")
        unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True)
        if unet.config.in_channels != 2 * unet.config.out_channels + 1:
            raise ValueError(f"{path / 'unet'}: an inpainting UNet has 2 x latent + 1 input channels (9 for SD), "
                             f"this one has {unet.config.in_channels}")
        return cls(unet, num_classes, tokens, finetune, lora_rank, str(path))

    def forward(self, sample, timestep, class_labels):
        c = self.latent_channels
        noisy, masked, mask = sample[:, :c], sample[:, c:2 * c], sample[:, 2 * c:]
        # Stable Diffusion inpainting's channel order: noisy latent, mask, masked-image latent
        out = self.unet(torch.cat([noisy, mask, masked], dim=1), timestep,
                        encoder_hidden_states=self.class_tokens[class_labels].to(sample.dtype))
        return out

    # ---------- saving: the base stays where it is; only what was learnt is written
    def trainable_state(self) -> dict:
        state = {"class_tokens": self.class_tokens.detach()}
        if self.finetune == "lora":
            from peft.utils import get_peft_model_state_dict

            state.update({f"lora.{k}": v for k, v in get_peft_model_state_dict(self.unet).items()})
        return state

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(path / "class_conditioned.safetensors", self.trainable_state())
        if self.finetune == "full":
            self.unet.save_pretrained(path / "unet")
        (path / META).write_text(json.dumps({"base": self.base, "num_classes": self.config.num_class_embeds - 1,
                                             "tokens": self.class_tokens.shape[1], "finetune": self.finetune,
                                             "lora_rank": self.lora_rank}, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, **_) -> "ClassConditionedUNet":
        path = Path(path)
        meta = json.loads((path / META).read_text())
        base = path if meta["finetune"] == "full" else Path(meta["base"])
        model = cls.from_base(base, meta["num_classes"], meta["tokens"], meta["finetune"], meta["lora_rank"])
        model.base = meta["base"]
        state = load_tensors(path / "class_conditioned.safetensors")
        with torch.no_grad():
            model.class_tokens.copy_(state.pop("class_tokens"))
        if meta["finetune"] == "lora":
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(model.unet, {k[5:]: v for k, v in state.items()})
        return model


def is_class_conditioned(path: str | Path) -> bool:
    return (Path(path) / META).is_file()
