"""A pretrained tiny autoencoder of the TAESD family (e.g. TAEF2, MIT, in ``../shared/models/taef2``) as the
latent space of latent diffusion: ``diffusion.vae: PATH`` to a folder with ``*_encoder.pth`` and
``*_decoder.pth`` (plain PyTorch state dicts of one flat ``nn.Sequential`` each, loaded ``weights_only``).

Learnt on a very large generic image collection, it brings texture that no autoencoder trained on a few
thousand lesions has. It is deterministic and speaks the part of ``AutoencoderKL``'s interface tailfill
uses (``encode(x).latent_dist.mode()``, ``decode(z).sample``, ``config.scaling_factor`` / ``shift_factor``
/ ``latent_channels`` / ``downscale_factor``), and saves and loads as a diffusers model, so a checkpoint
carries it like any other autoencoder.

    vae = TinyAutoencoder.from_taesd_files("../shared/models/taef2")   # or load_vae(path)
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """Three 3x3 convs with ReLUs plus the input, then ReLU; with ``norm``, first x + a GroupNorm'd 1x1 branch."""

    def __init__(self, c: int, norm: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, c))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = nn.Sequential(nn.Conv2d(c, 4 * c, 1, bias=False), nn.GroupNorm(4, 4 * c), nn.ReLU(),
                                  nn.Conv2d(4 * c, c, 1, bias=False)) if norm else None

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _encoder(latent_channels: int, norm: bool, c: int = 64) -> nn.Sequential:
    down = lambda: _conv(c, c, stride=2, bias=False)  # noqa: E731
    return nn.Sequential(_conv(3, c), _Block(c),
                         down(), _Block(c), _Block(c), _Block(c),
                         down(), _Block(c), _Block(c), _Block(c),
                         down(), _Block(c, norm), _Block(c, norm), _Block(c, norm),
                         _conv(c, latent_channels))


def _decoder(latent_channels: int, norm: bool, c: int = 64) -> nn.Sequential:
    up = lambda: (nn.Upsample(scale_factor=2), _conv(c, c, bias=False))  # noqa: E731
    return nn.Sequential(_Clamp(), _conv(latent_channels, c), nn.ReLU(),
                         _Block(c, norm), _Block(c, norm), _Block(c, norm), *up(),
                         _Block(c), _Block(c), _Block(c), *up(),
                         _Block(c), _Block(c), _Block(c), *up(),
                         _Block(c), _conv(c, 3))


class TinyAutoencoder(ModelMixin, ConfigMixin):
    """TAESD-style encoder (RGB in [0, 1] -> latents at 1/8 side) and decoder; images here are in [-1, 1]."""

    @register_to_config
    def __init__(self, latent_channels: int = 32, midblock_norm: bool = True, scaling_factor: float = 1.0,
                 shift_factor: float = 0.0, downscale_factor: int = 8):
        super().__init__()
        self.encoder = _encoder(latent_channels, midblock_norm)
        self.decoder = _decoder(latent_channels, midblock_norm)

    def encode(self, x: torch.Tensor):
        z = self.encoder((x + 1) / 2)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: z, sample=lambda generator=None: z))

    def decode(self, z: torch.Tensor):
        return SimpleNamespace(sample=self.decoder(z) * 2 - 1)

    @classmethod
    def from_taesd_files(cls, folder: str | Path) -> "TinyAutoencoder":
        """The model from ``folder/*_encoder.pth`` and ``*_decoder.pth``, its latent width read from them."""
        folder = Path(folder)
        enc, dec = sorted(folder.glob("*_encoder.pth")), sorted(folder.glob("*_decoder.pth"))
        if len(enc) != 1 or len(dec) != 1:
            raise FileNotFoundError(f"{folder}: expected one *_encoder.pth and one *_decoder.pth (a TAESD-family "
                                    f"autoencoder), found {len(enc)} and {len(dec)}")
        enc_state = torch.load(enc[0], map_location="cpu", weights_only=True)
        dec_state = torch.load(dec[0], map_location="cpu", weights_only=True)
        last = max(int(k.split(".")[0]) for k in enc_state)
        model = cls(latent_channels=int(enc_state[f"{last}.weight"].shape[0]),
                    midblock_norm=any(".pool." in k for k in enc_state))
        try:
            model.encoder.load_state_dict({k: v.float() for k, v in enc_state.items()}, strict=True)
            model.decoder.load_state_dict({k: v.float() for k, v in dec_state.items()}, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())  # torch's message spans lines
            raise ValueError(f"{folder}: the weights do not fit a TAESD-family autoencoder: {detail}") from None
        return model.eval().requires_grad_(False)


def is_taesd_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(path.glob("*_encoder.pth")) and any(path.glob("*_decoder.pth"))
