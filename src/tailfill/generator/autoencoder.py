"""The autoencoder of latent diffusion (``diffusion.space: latent``): a ``diffusers.AutoencoderKL``.

Either trained here on the training images (``tailfill train-autoencoder``: reconstruction MSE + a
small KL term, EMA, atomic checkpoints, resume along the same path, like the diffusion trainer) or
loaded from a local pretrained folder (``diffusion.vae: PATH``, e.g. a Stable Diffusion VAE already
in your cache; nothing is downloaded). Its ``scaling_factor`` makes latents about unit variance.

    vae = train_autoencoder(images_u8, cfg.autoencoder, out_dir)      # or load_vae(path)
    z = encode(vae, x)          # (N, C, H/f, W/f), scaled
    x = decode(vae, z)          # back to [-1, 1]
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..utils.io import atomic_dir, load_state, read_json, recover_dir, save_state, write_json
from ..utils.progress import progress
from ..utils.training import (StepLog, check_finite, ema_update, finish_tracking, kept_checkpoint, make_accelerator,
                              optimizer_step, to_model_range)

log = logging.getLogger(__name__)


def build_autoencoder(image_size: int, block_out_channels=(32, 64, 64), latent_channels: int = 4,
                      layers_per_block: int = 1) -> AutoencoderKL:
    """A small KL autoencoder: ``2 ** (len(block_out_channels) - 1)`` times smaller latents."""
    n = len(block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(block_out_channels),
                         latent_channels=latent_channels, layers_per_block=layers_per_block,
                         norm_num_groups=min(32, min(block_out_channels) // 4), sample_size=image_size)


def load_vae(path: str | Path, device: str = "cpu"):
    """A local autoencoder folder: an ``AutoencoderKL`` (safetensors; a diffusers pipeline folder's ``vae/`` is
    found too), a saved :class:`~.tiny_autoencoder.TinyAutoencoder`, or a TAESD-family pair of ``*_encoder.pth``
    / ``*_decoder.pth`` files (e.g. TAEF2)."""
    from .tiny_autoencoder import TinyAutoencoder, is_taesd_folder

    path = Path(path)
    if (path / "vae").is_dir():
        path = path / "vae"
    if is_taesd_folder(path):
        return TinyAutoencoder.from_taesd_files(path).to(device)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no autoencoder at {path} (an AutoencoderKL folder with config.json and weights, or "
                                "TAESD *_encoder.pth/*_decoder.pth); diffusion.vae must point to a local folder, "
                                "nothing is downloaded")
    cls = TinyAutoencoder if read_json(path / "config.json").get("_class_name") == "TinyAutoencoder" else AutoencoderKL
    return cls.from_pretrained(path, use_safetensors=True).to(device).eval().requires_grad_(False)


def downscale(vae) -> int:
    """How many times smaller the latent grid is than the image."""
    return getattr(vae.config, "downscale_factor", None) or 2 ** (len(vae.config.block_out_channels) - 1)


def pretrained_autoencoder(path: str | Path, images_u8: np.ndarray, keep: str | Path, seed: int = 0,
                           device: str = "cpu", write: bool = True):
    """The local pretrained autoencoder at ``path`` for a run: one of the TAESD family ships without a latent
    scale, so its scale is fitted on ``images_u8`` (the training split) and the result kept at ``keep`` (with
    ``write``: the main process), where the run reads it from then on."""
    from .tiny_autoencoder import is_taesd_folder

    vae = load_vae(path, device)
    if is_taesd_folder(path):
        set_latent_scale(vae, images_u8, seed)
        if write:
            with atomic_dir(keep) as tmp:
                vae.save_pretrained(tmp)
    return vae


def set_latent_scale(vae, images_u8: np.ndarray, seed: int = 0, n: int = 256):
    """Set ``vae``'s ``scaling_factor`` so that the latents of ``n`` of ``images_u8`` have unit variance, as
    the diffusion model expects (Stable Diffusion's 0.18215 is the same idea); returns ``vae``."""
    sample = images_u8[np.random.default_rng(seed).permutation(len(images_u8))[:n]]
    vae.register_to_config(scaling_factor=1.0)
    z = torch.cat([encode(vae, to_model_range(sample[i:i + 64]).to(vae.device)) for i in range(0, len(sample), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std().clamp(min=1e-6)))
    return vae


@torch.no_grad()
def encode(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator | None = None,
           sample: bool = False) -> torch.Tensor:
    """[-1, 1] images -> scaled latents (the posterior mode, or a sample)."""
    dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


@torch.no_grad()
def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> [-1, 1] images."""
    z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    return vae.decode(z.to(vae.device, vae.dtype)).sample.clamp(-1, 1)


def latent_mask(masks: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel mask (B, 1, H, W) on the latent grid: a latent cell is masked if any of its pixels is."""
    return F.max_pool2d(masks, factor) if factor > 1 else masks


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of [-1, 1] images."""
    mse = ((a.float() - b.float()) / 2).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def reconstruction_psnr(vae: AutoencoderKL, images_u8: np.ndarray, batch_size: int = 64) -> float:
    """PSNR of encode -> decode on held-out images (the ceiling of what latent generation can keep)."""
    values = []
    for i in range(0, len(images_u8), batch_size):
        x = to_model_range(images_u8[i:i + batch_size]).to(vae.device)
        values.append(psnr(decode(vae, encode(vae, x)), x) * len(x))
    return float(np.sum(values) / max(1, len(images_u8)))


class _Reconstruct(torch.nn.Module):
    """encode -> sample (with the given noise) -> decode, as one forward: what DDP wraps."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, x, noise):
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.mean + posterior.std * noise).sample, posterior.kl()


def train_autoencoder(images_u8: np.ndarray, cfg, out_dir: str | Path, seed: int = 0, device: str = "auto",
                      resume: bool = True, tracking=None) -> AutoencoderKL:
    """Train on ``images_u8`` (the training split); returns the EMA autoencoder with its scaling factor set.

    ``cfg`` is an :class:`~tailfill.config.AutoencoderConfig`. Checkpoints to ``out_dir/checkpoint``
    (``vae/``, ``vae_ema/``, ``state.pt``) every ``cfg.checkpoint_every`` steps; batches are seeded by
    step, so a resumed run follows the same path.
    """
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    accelerator = make_accelerator(cfg.mixed_precision, device, tracking, "autoencoder", vars(cfg))
    torch.manual_seed(seed)
    vae = build_autoencoder(images_u8.shape[1], cfg.block_out_channels, cfg.latent_channels, cfg.layers_per_block)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = copy.deepcopy(vae).requires_grad_(False)
    step, history = 0, []
    recover_dir(ckpt)
    if resume and (ckpt / "state.pt").is_file():
        vae = AutoencoderKL.from_pretrained(ckpt / "vae")
        ema = AutoencoderKL.from_pretrained(ckpt / "vae_ema").requires_grad_(False)
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
        state = load_state(ckpt / "state.pt")
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])
        log.info("autoencoder: resuming from step %d", step)
    model, opt = accelerator.prepare(_Reconstruct(vae), opt)
    ema.to(accelerator.device)

    def save_checkpoint():
        if accelerator.is_main_process:
            with atomic_dir(ckpt) as tmp:
                accelerator.unwrap_model(model).vae.save_pretrained(tmp / "vae")
                ema.save_pretrained(tmp / "vae_ema")
                save_state(tmp / "state.pt", {"optimizer": opt.state_dict() if not hasattr(opt, "optimizer")
                                              else opt.optimizer.state_dict(), "step": step, "history": history})

    bar = progress(cfg.train_steps, "autoencoder", "step", initial=step, disable=not accelerator.is_main_process)
    book = StepLog("autoencoder", accelerator, bar, history, cfg.train_steps, cfg.log_every, cfg.checkpoint_every,
                   cfg.batch_size)
    while step < cfg.train_steps:
        rng = np.random.default_rng([seed, step, accelerator.process_index])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x = to_model_range(images_u8[rng.integers(len(images_u8), size=cfg.batch_size)])
        k = int(rng.integers(4))
        x = torch.rot90(x, k, (2, 3))
        if cfg.crop_size and cfg.crop_size < x.shape[-1]:  # a random window per image (cheaper steps, same weights)
            c = cfg.crop_size
            at = rng.integers(x.shape[-1] - c + 1, size=(len(x), 2))
            x = torch.stack([xi[:, a:a + c, b:b + c] for xi, (a, b) in zip(x, at)])
        x = x.to(accelerator.device)
        size = x.shape[-1] // 2 ** (len(cfg.block_out_channels) - 1)
        noise = torch.randn((len(x), cfg.latent_channels, size, size), generator=gen).to(x.device)
        with accelerator.autocast():
            rec, kl = model(x, noise)
        loss = F.mse_loss(rec.float(), x) + cfg.kl_weight * kl.float().mean()
        check_finite(loss, f"autoencoder step {step}", lambda: f"{kept_checkpoint(ckpt)}; lower autoencoder.lr")
        optimizer_step(accelerator, opt, model, loss)
        ema_update(ema, accelerator.unwrap_model(model).vae, cfg.ema_decay, step)
        step += 1
        if book.after(step, loss.item()):
            save_checkpoint()
    bar.close()
    finish_tracking(accelerator)
    accelerator.wait_for_everyone()
    set_latent_scale(ema.eval(), images_u8, seed)
    if accelerator.is_main_process:
        ema.save_pretrained(out_dir / "vae")
        write_json(out_dir / "train_info.json", {"steps": step, "history": history,
                                                  "scaling_factor": ema.config.scaling_factor,
                                                  "parameters": sum(p.numel() for p in ema.parameters())})
    return ema.requires_grad_(False)
