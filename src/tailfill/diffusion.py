"""Class- and mask-conditioned inpainting diffusion on ``diffusers`` pieces.

The model is a ``diffusers.UNet2DModel`` whose input stacks 7 channels -- the noisy image, the
masked image (lesion region zeroed) and the mask -- and whose class embedding has one extra
"null" class. Dropping labels to null during training gives classifier-free guidance at sampling
time. :class:`InpaintPipeline` pairs the UNet with any ``diffusers`` scheduler built ``from_config``
of the training one, and saves both into one folder, like a diffusers pipeline.

    pipe = InpaintPipeline.from_pretrained("run/diffusion/checkpoint", scheduler="ddim")
    out = pipe(images, masks, labels, guidance_scale=2.0, num_inference_steps=20)
"""
from __future__ import annotations

import copy
import inspect
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from scipy import ndimage

from .io import atomic_dir, load_state, recover_dir, save_state, write_json
from .masks import random_shape_mask
from .progress import progress
from .training import (TrainingDivergedError, check_finite, class_power_probabilities, digests_per_rank,
                       ema_update, finish_tracking, kept_checkpoint, make_accelerator, optimizer_step,
                       to_model_range)

log = logging.getLogger(__name__)

# noise schedulers that sample a trained model (not to be confused with class re-sampling or MaskSampler)
SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}

__all__ = ["SCHEDULERS", "InpaintPipeline", "MaskSampler", "TrainingDivergedError", "build_unet", "diffusion_loss",
           "make_scheduler", "null_label", "train_diffusion"]


def build_unet(image_size: int, num_classes: int, block_out_channels=(32, 64, 64), layers_per_block: int = 1,
               attention: bool = False, channels: int = 3) -> UNet2DModel:
    """An inpainting UNet: ``2 * channels + 1`` input channels (noisy image, masked image, mask; 7 in pixel
    space), ``num_classes + 1`` class embeddings (the last is null). In latent space ``image_size`` is the
    latent side and ``channels`` the autoencoder's latent channels."""
    n = len(block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention:  # attention where the feature map is smallest: cheap and global
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=image_size, in_channels=2 * channels + 1, out_channels=channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
        num_class_embeds=num_classes + 1, norm_num_groups=min(32, min(block_out_channels) // 4),
        add_attention=attention,
    )


def load_unet(path: str | Path):
    """A saved UNet: tailfill's ``UNet2DModel``, or a fine-tuned pretrained one (see :mod:`tailfill.sd_inpaint`)."""
    from .sd_inpaint import ClassConditionedUNet, is_class_conditioned

    if is_class_conditioned(path):
        return ClassConditionedUNet.from_pretrained(path)
    return UNet2DModel.from_pretrained(path, use_safetensors=True)


def null_label(unet: UNet2DModel) -> int:
    return unet.config.num_class_embeds - 1


class ClippedDPMSolver(DPMSolverMultistepScheduler):
    """DPM-Solver++ whose x0 estimate is clipped to +-``x0_clip``: latent space's stand-in for the pixel
    path's thresholding (which rescales x0 into [-1, 1], right for pixels, wrong for latents)."""

    x0_clip: float | None = None

    def convert_model_output(self, *args, **kwargs):
        x0 = super().convert_model_output(*args, **kwargs)
        return x0 if self.x0_clip is None else x0.clamp(-self.x0_clip, self.x0_clip)


def make_scheduler(name: str, train_scheduler_config, latent: bool = False, latent_clip: float | None = None):
    """A sampler of kind ``name`` (ddpm | ddim | dpmsolver++) matching the training noise schedule. In latent
    space each step's x0 estimate is clipped to +-``latent_clip`` (None: not clipped)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SCHEDULERS)}")
    kwargs, kind = {"timestep_spacing": "trailing"}, SCHEDULERS[name]  # trailing: start from pure noise
    if name == "dpmsolver++":
        kwargs.update(algorithm_type="dpmsolver++", solver_order=2)
        if latent:
            kind = ClippedDPMSolver
        else:  # pixel-space data prediction: without thresholding x0 = (x - sigma eps) / alpha explodes
            kwargs.update(thresholding=True, sample_max_value=1.0)
    elif latent:  # DDIM/DDPM clip x0 themselves (in pixel space to [-1, 1], the training config's)
        kwargs.update(clip_sample=latent_clip is not None, clip_sample_range=latent_clip or 1.0)
    sched = kind.from_config(train_scheduler_config, **kwargs)
    if kind is ClippedDPMSolver:
        sched.x0_clip = latent_clip
    return sched


def model_input(noisy, masked, masks):
    """The UNet's input: noisy image (or latent), the image with the mask region blanked (or its latent),
    the mask (on the latent grid in latent space)."""
    return torch.cat([noisy, masked, masks], dim=1)


class InpaintPipeline:
    """A UNet and a scheduler that fill masked regions with new lesions of a given class; with a ``vae``
    (latent diffusion) the UNet works on the autoencoder's latents and the result is decoded, then the
    unmasked pixels are pasted back from the real image exactly."""

    def __init__(self, unet: UNet2DModel, scheduler, vae=None):
        self.unet, self.scheduler, self.vae = unet, scheduler, vae

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def noise_shape(self, image_shape: tuple) -> tuple:
        """The starting noise of one image of (3, H, W): the same shape in pixels, the latent's otherwise."""
        if self.vae is None:
            return tuple(image_shape)
        from .autoencoder import downscale

        f = downscale(self.vae)
        return (self.vae.config.latent_channels, image_shape[-2] // f, image_shape[-1] // f)

    def save_pretrained(self, path: str | Path, unet_subfolder: str = "unet") -> None:
        """``unet_subfolder/`` (safetensors + config), ``scheduler/scheduler_config.json`` and, in latent
        space, ``vae/``: everything generation needs, in one folder."""
        path = Path(path)
        self.unet.save_pretrained(path / unet_subfolder)
        self.scheduler.save_pretrained(path / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(path / "vae")

    @classmethod
    def from_pretrained(cls, path: str | Path, *, unet_subfolder: str = "unet_ema", scheduler: str | None = None,
                        device: str = "cpu", latent_clip: float | None = 2.0) -> "InpaintPipeline":
        """Load a saved pipeline (or a training checkpoint); ``scheduler`` picks the sampler, default the
        training scheduler (DDPM); ``latent_clip``: see :func:`make_scheduler`."""
        path = Path(path)
        if not (path / unet_subfolder).is_dir() or not (path / "scheduler").is_dir():
            raise FileNotFoundError(f"no inpainting pipeline at {path} (needs {unet_subfolder}/ and scheduler/); "
                                    "run `tailfill train-diffusion` first")
        unet = load_unet(path / unet_subfolder).to(device).eval()
        vae = None
        if (path / "vae").is_dir():
            from .autoencoder import load_vae

            vae = load_vae(path / "vae", device)
        config = DDPMScheduler.load_config(path / "scheduler")
        sched = make_scheduler(scheduler, config, vae is not None, latent_clip) if scheduler else DDPMScheduler.from_config(config)
        return cls(unet, sched, vae)

    @torch.inference_mode()  # generation never needs autograd: skip its bookkeeping
    def __call__(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, *,
                 guidance_scale: float = 2.0, num_inference_steps: int = 20, strength: float = 1.0,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill ``masks`` (B,1,H,W, 1 = generate) in ``images`` (B,3,H,W in [-1,1]) with class ``labels``.

        Classifier-free guidance: eps = eps(null) + scale * (eps(label) - eps(null)); scale 1 is plain
        conditional sampling. Outside the mask the result is exactly the input image. ``noise`` (the
        starting noise, :meth:`noise_shape` per image) makes each image reproducible on its own, whatever
        batch it is drawn in. ``strength`` < 1 starts from the input image noised to that fraction of the
        schedule instead of pure noise (SDEdit): the new lesion keeps the old one's layout and takes the
        class's look.
        """
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        unet, scheduler, device = self.unet, self.scheduler, self.device
        images, masks, labels = images.to(device), masks.to(device), labels.to(device)
        if self.vae is None:
            start, masked, cond_masks = images, images * (1 - masks), masks
        else:  # the same idea on the autoencoder's latent grid
            from .autoencoder import downscale, encode, latent_mask

            start, masked = encode(self.vae, images), encode(self.vae, images * (1 - masks))
            cond_masks = latent_mask(masks, downscale(self.vae))
        scheduler.set_timesteps(num_inference_steps, device=device)
        if noise is None:
            noise = torch.randn((len(images), *self.noise_shape(images.shape[1:])), generator=generator, device="cpu")
        noise = noise.to(device)
        timesteps = scheduler.timesteps
        if strength < 1.0:
            first = min(len(timesteps) - 1, int(round(len(timesteps) * (1.0 - strength))))
            timesteps = timesteps[first:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(first)
            x = scheduler.add_noise(start, noise, timesteps[:1].repeat(len(images)))
        else:
            x = noise * scheduler.init_noise_sigma
        nulls = torch.full_like(labels, null_label(unet))
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        if generator is not None and generator.device.type != x.device.type:
            step_kwargs = {}  # a CPU generator can't drive CUDA noise; results stay seeded by the initial noise
        for t in timesteps:
            inp = model_input(scheduler.scale_model_input(x, t), masked, cond_masks)
            if guidance_scale == 1.0:
                eps = unet(inp, t, class_labels=labels).sample
            else:
                eps_c, eps_u = unet(torch.cat([inp, inp]), t, class_labels=torch.cat([labels, nulls])).sample.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        if self.vae is not None:
            from .autoencoder import decode

            x = decode(self.vae, x)
        return masks * x.clamp(-1, 1) + (1 - masks) * images


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


def random_dihedral(x: torch.Tensor, m: torch.Tensor, rng: np.random.Generator):
    """One random flip/rotation for the whole batch: skin lesions have no up or down."""
    k = int(rng.integers(4))
    x, m = torch.rot90(x, k, (2, 3)), torch.rot90(m, k, (2, 3))
    if rng.uniform() < 0.5:
        x, m = x.flip(3), m.flip(3)
    return x, m


def train_diffusion(images_u8: np.ndarray, labels: np.ndarray, lesion_masks: np.ndarray, num_classes: int,
                    cfg, out_dir: str | Path, seed: int = 0, device: str = "auto", resume: bool = True,
                    tracking=None, vae=None) -> Path:
    """Train the inpainting model on all classes; returns the checkpoint folder, an :class:`InpaintPipeline`
    (``unet/``, ``unet_ema/``, ``scheduler/``) plus the optimiser state.

    ``cfg`` is a :class:`~tailfill.config.DiffusionConfig`. Checkpoints every ``cfg.checkpoint_every``
    steps into ``out_dir/checkpoint`` (atomically) and, with ``resume``, continues from there. Batches
    and noise are seeded by step, so a resumed run follows the same path as an uninterrupted one.
    Runs under Hugging Face Accelerate: launch with ``accelerate launch`` for several GPUs. With ``vae``
    (an AutoencoderKL, frozen) the UNet learns the same task on its latents (latent diffusion).
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
            InpaintPipeline(accelerator.unwrap_model(unet), noise_sched, vae).save_pretrained(tmp, "unet")
            ema.save_pretrained(tmp / "unet_ema")
            save_state(tmp / "state.pt", {"optimizer": opt.state_dict() if not hasattr(opt, "optimizer")
                                          else opt.optimizer.state_dict(), "step": step, "history": history})

    t0 = time.time()
    running = []
    bar = progress(cfg.train_steps, "diffusion", "step", initial=step, disable=not accelerator.is_main_process)
    while step < cfg.train_steps:
        rng = np.random.default_rng([seed, step, accelerator.process_index])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        idx = rng.choice(len(labels), size=cfg.batch_size, p=weights)
        x0 = to_model_range(images_u8[idx])
        m = torch.from_numpy(mask_sampler(idx, rng))[:, None]
        x0, m = random_dihedral(x0, m, rng)
        y = labels_t[idx].clone()
        y[torch.rand(len(y), generator=gen) < cfg.cond_drop_prob] = num_classes  # null class
        x0, m = x0.to(accelerator.device), m.to(accelerator.device)
        masked = x0 * (1 - m)
        if vae is not None:  # the frozen autoencoder's latents: the target, the condition and the mask's grid
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
        running.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        accelerator.log({"diffusion/loss": loss.item()}, step=step)
        if step % cfg.log_every == 0 or step == cfg.train_steps:
            history.append({"step": step, "loss": float(np.mean(running)), "seconds": time.time() - t0})
            log.debug("diffusion step %d/%d loss %.4f (%.1f img/s)", step, cfg.train_steps, np.mean(running),
                     len(running) * cfg.batch_size / max(1e-9, time.time() - t0))
            running, t0 = [], time.time()
        if step % cfg.checkpoint_every == 0 or step == cfg.train_steps:
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
