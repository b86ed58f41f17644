"""Training the inpainting UNet: the masked, Min-SNR-weighted loss, the mask sampler, the loop (EMA, checkpoints, resume)."""
from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from scipy import ndimage

from ..data.masks import random_shape_mask
from ..utils.io import atomic_dir, atomic_path, load_state, recover_dir, save_state, write_json
from ..utils.progress import progress
from ..utils.training import (StepLog, check_finite, class_power_probabilities, digests_per_rank, ema_update, finish_tracking,
                              kept_checkpoint, make_accelerator, optimizer_step, to_model_range, weights_digest)
from .pipeline import InpaintPipeline, build_unet, load_unet, model_input

log = logging.getLogger(__name__)


def diffusion_loss(pred: torch.Tensor, noise: torch.Tensor, masks: torch.Tensor, mask_loss_weight: float = 1.0,
                   snr: torch.Tensor | None = None, snr_gamma: float | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE, weighted ``mask_loss_weight`` inside the mask (where the class must show) and,
    with ``snr_gamma``, by Min-SNR-gamma per sample (Hang et al. 2023): min(SNR, gamma) / SNR, so the
    easy, low-noise steps stop dominating the gradient."""
    w = 1 + (mask_loss_weight - 1) * masks
    per_sample = (w * (pred.float() - noise) ** 2).flatten(1).mean(1) / w.flatten(1).mean(1)
    if snr_gamma is not None:
        per_sample = per_sample * (torch.clamp(snr, max=snr_gamma) / snr.clamp(min=1e-8))
    return per_sample.mean()


class MaskSampler:
    """Training masks: the image's own lesion mask, grown by a random margin, or a random shape.

    The margin matters: at generation time a small lesion class (DF) is drawn into the mask of a
    bigger lesion (NV). Trained on loose masks, the model learns that the class, not the mask,
    decides the lesion's size, and fills the rest with skin.
    """

    def __init__(self, lesion_masks: np.ndarray, lesion_prob: float, seed: int, bank_size: int = 512):
        size = lesion_masks.shape[-1]
        self.max_margin = max(1, size // 8)
        # grown per batch, not precomputed: all margins of all masks would not fit in memory at 128+ px;
        # read per batch too (they may be rows on disk)
        self.lesion_masks = lesion_masks
        self.lesion_prob = lesion_prob
        rng = np.random.default_rng(seed)
        self.bank = np.stack([random_shape_mask(size, rng) for _ in range(bank_size)])

    def __call__(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        use_lesion = rng.uniform(size=len(idx)) < self.lesion_prob
        margin = rng.integers(0, self.max_margin + 1, size=len(idx))
        random = self.bank[rng.integers(len(self.bank), size=len(idx))]
        own = np.asarray(self.lesion_masks[idx]) > 0.5
        lesion = np.stack([ndimage.binary_dilation(m, iterations=int(k)) if k else m for m, k in zip(own, margin)])
        return np.where(use_lesion[:, None, None], lesion, random).astype(np.float32)


def encode_all(vae, images_u8: np.ndarray, batch_size: int = 64, cache_dir: str | Path | None = None) -> torch.Tensor:
    """The latents of every image (on the CPU): what ``latent_condition: mask`` trains on, encoded once. With
    ``cache_dir`` they are kept there by autoencoder weights and image content (``latents_<digest>.npz``,
    unscaled, fp16), so the folds of a cross-validation, which share most of their images, encode each once."""
    from .autoencoder import encode

    scale, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0
    keys = np.array([hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()[:20] for im in images_u8])
    path = Path(cache_dir) / f"latents_{weights_digest(vae)}.npz" if cache_dir else None
    known = {}
    if path is not None and path.is_file():
        with np.load(path) as f:
            known = dict(zip(f["keys"].tolist(), f["latents"]))
    todo = [i for i, k in enumerate(keys) if k not in known]
    bar = progress(len(todo), "encoding training images", "image")
    for start in range(0, len(todo), batch_size):
        rows = todo[start:start + batch_size]
        z = encode(vae, to_model_range(np.stack([images_u8[i] for i in rows])).to(vae.device)).float().cpu()
        for i, zi in zip(rows, (z / scale + shift).numpy().astype(np.float16)):
            known[keys[i]] = zi
        bar.update(len(rows))
    bar.close()
    if path is not None and todo:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.array(list(known)), latents=np.stack(list(known.values())))
    if path is not None and len(keys) and not todo:
        log.info("diffusion: the latents of all %d training images came from %s", len(keys), path)
    return (torch.from_numpy(np.stack([known[k] for k in keys]).astype(np.float32)) - shift) * scale


def random_dihedral(x: torch.Tensor, m: torch.Tensor, rng: np.random.Generator):
    """One random flip/rotation for the whole batch: skin lesions have no up or down."""
    k = int(rng.integers(4))
    x, m = torch.rot90(x, k, (2, 3)), torch.rot90(m, k, (2, 3))
    if rng.uniform() < 0.5:
        x, m = x.flip(3), m.flip(3)
    return x, m


def train_diffusion(images_u8: np.ndarray, labels: np.ndarray, lesion_masks: np.ndarray, num_classes: int,
                    cfg, out_dir: str | Path, seed: int = 0, device: str = "auto", resume: bool = True,
                    tracking=None, vae=None, latent_cache: str | Path | None = None) -> Path:
    """Train the inpainting model on all classes; returns the checkpoint folder, an :class:`InpaintPipeline`
    (``unet/``, ``unet_ema/``, ``scheduler/``) plus the optimiser state.

    ``cfg`` is a :class:`~tailfill.config.DiffusionConfig`. Checkpoints every ``cfg.checkpoint_every``
    steps into ``out_dir/checkpoint`` (atomically) and, with ``resume``, continues from there. Batches
    and noise are seeded by step, so a resumed run follows the same path as an uninterrupted one.
    Runs under Hugging Face Accelerate: launch with ``accelerate launch`` for several GPUs. With ``vae``
    (a frozen autoencoder) the UNet learns the same task on its latents (latent diffusion); with
    ``cfg.latent_condition: mask`` each training image is encoded once, before the first step, and the
    condition is its latents masked on the latent grid, so a step runs no autoencoder (``latent_cache``: where
    :func:`encode_all` keeps them for the next fold).
    """
    from diffusers.training_utils import compute_snr

    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    accelerator = make_accelerator(cfg.mixed_precision, device, tracking, "diffusion", vars(cfg))
    size = images_u8.shape[1]
    factor, channels = 1, 3
    if vae is not None:
        from .autoencoder import downscale, encode, latent_mask

        vae = vae.to(accelerator.device).eval().requires_grad_(False)
        factor, channels = downscale(vae), vae.config.latent_channels
    latents = encode_all(vae, images_u8, cache_dir=latent_cache) if vae is not None and cfg.latent_condition == "mask" \
        else None
    torch.manual_seed(seed)  # same initial weights on every process and every run
    if cfg.pretrained:  # a pretrained SD-style inpainting UNet, fine-tuned with learned class tokens
        from .sd_inpaint import ClassConditionedUNet

        unet = ClassConditionedUNet.from_base(cfg.pretrained, num_classes, cfg.class_tokens, cfg.finetune,
                                              cfg.lora_rank)
        noise_sched = DDPMScheduler.from_config(DDPMScheduler.load_config(Path(cfg.pretrained) / "scheduler"))
    else:
        unet = build_unet(size // factor, num_classes, cfg.block_out_channels, cfg.layers_per_block, cfg.attention,
                          channels)
        noise_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)

    def optimizer(model):  # only what is trained (LoRA and class tokens, when the base is frozen)
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)

    opt = optimizer(unet)
    ema = copy.deepcopy(unet).requires_grad_(False)
    step, history = 0, []
    recover_dir(ckpt)
    if resume and (ckpt / "state.pt").is_file():
        unet = load_unet(ckpt / "unet")
        ema = load_unet(ckpt / "unet_ema").requires_grad_(False)
        opt = optimizer(unet)
        state = load_state(ckpt / "state.pt")
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])
        log.info("diffusion: resuming from step %d", step)
    unet, opt = accelerator.prepare(unet, opt)
    ema.to(accelerator.device)

    weights = class_power_probabilities(labels, cfg.class_sampling_power)
    mask_sampler = MaskSampler(lesion_masks, cfg.lesion_mask_prob, seed)
    # batches are converted to float as they are drawn: a float copy of the whole set is 4x its uint8 size
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    nparams = sum(p.numel() for p in unet.parameters())
    log.info("diffusion: %.2fM parameters (%.2fM trained), %d images, %d steps of %d", nparams / 1e6,
             sum(p.numel() for p in unet.parameters() if p.requires_grad) / 1e6, len(labels), cfg.train_steps,
             cfg.batch_size)

    def save_checkpoint():
        if not accelerator.is_main_process:
            return
        with atomic_dir(ckpt) as tmp:
            InpaintPipeline(accelerator.unwrap_model(unet), noise_sched, vae,
                            cfg.latent_condition).save_pretrained(tmp, "unet")
            ema.save_pretrained(tmp / "unet_ema")
            save_state(tmp / "state.pt", {"optimizer": opt.state_dict() if not hasattr(opt, "optimizer")
                                          else opt.optimizer.state_dict(), "step": step, "history": history})

    bar = progress(cfg.train_steps, "diffusion", "step", initial=step, disable=not accelerator.is_main_process)
    book = StepLog("diffusion", accelerator, bar, history, cfg.train_steps, cfg.log_every, cfg.checkpoint_every,
                   cfg.batch_size)
    while step < cfg.train_steps:
        rng = np.random.default_rng([seed, step, accelerator.process_index])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        idx = rng.choice(len(labels), size=cfg.batch_size, p=weights)
        m = torch.from_numpy(mask_sampler(idx, rng))[:, None]
        if latents is not None:  # the cached latents, turned as the mask is (pooling commutes with the turn)
            x0, m = random_dihedral(latents[idx], latent_mask(m, factor), rng)
        else:
            x0, m = random_dihedral(to_model_range(images_u8[idx]), m, rng)
        y = labels_t[idx].clone()
        y[torch.rand(len(y), generator=gen) < cfg.cond_drop_prob] = num_classes  # null class
        x0, m = x0.to(accelerator.device), m.to(accelerator.device)
        masked = x0 * (1 - m)
        if vae is not None and latents is None:  # the frozen autoencoder's latents: target, condition, mask grid
            x0, masked, m = encode(vae, x0), encode(vae, masked), latent_mask(m, factor)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(y),), generator=gen)
        y, noise, t = (a.to(accelerator.device) for a in (y, noise, t))
        noisy = noise_sched.add_noise(x0, noise, t)
        with accelerator.autocast():
            pred = unet(model_input(noisy, masked, m), t, class_labels=y).sample
        snr = compute_snr(noise_sched, t) if cfg.snr_gamma is not None else None
        loss = diffusion_loss(pred, noise, m, cfg.mask_loss_weight, snr, cfg.snr_gamma)
        check_finite(loss, f"diffusion step {step}", lambda: f"{kept_checkpoint(ckpt)}. Lower diffusion.lr or use "
                     "fp32 (diffusion.mixed_precision=no).")
        optimizer_step(accelerator, opt, unet, loss)
        ema_update(ema, accelerator.unwrap_model(unet), cfg.ema_decay, step)
        step += 1
        if book.after(step, loss.item()):
            save_checkpoint()
    bar.close()
    finish_tracking(accelerator)
    digests = digests_per_rank(accelerator.unwrap_model(unet))  # DDP check: one value when in sync
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(out_dir / "train_info.json", {"steps": step, "history": history, "parameters": nparams,
                                                  "processes": accelerator.num_processes,
                                                  "weights_digest_per_rank": digests})
    return ckpt
