"""Class- and mask-conditioned inpainting diffusion on ``diffusers`` pieces.

The model is a ``diffusers.UNet2DModel`` whose input stacks 7 channels -- the noisy image, the
masked image (lesion region zeroed) and the mask -- and whose class embedding has one extra
"null" class. Dropping labels to null during training gives classifier-free guidance at sampling
time. Any ``diffusers`` scheduler built ``from_config`` of the training scheduler samples it.
"""
from __future__ import annotations

import copy
import inspect
import logging
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from scipy import ndimage

from .io import atomic_dir, load_state, read_json, recover_dir, save_state, write_json
from .masks import random_shape_mask

log = logging.getLogger(__name__)

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def build_unet(image_size: int, num_classes: int, block_out_channels=(32, 64, 64), layers_per_block: int = 1,
               attention: bool = False) -> UNet2DModel:
    """An inpainting UNet: 7 input channels, ``num_classes + 1`` class embeddings (the last is null)."""
    n = len(block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention:  # attention where the feature map is smallest: cheap and global
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=image_size, in_channels=7, out_channels=3, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
        num_class_embeds=num_classes + 1, norm_num_groups=min(32, min(block_out_channels) // 4),
        add_attention=attention,
    )


def null_label(unet: UNet2DModel) -> int:
    return unet.config.num_class_embeds - 1


def make_scheduler(name: str, train_scheduler_config) -> object:
    """A sampler of kind ``name`` (ddpm | ddim | dpmsolver++) matching the training noise schedule."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    kwargs = {"timestep_spacing": "trailing"}  # start from pure noise even with few steps
    if name == "dpmsolver++":
        # pixel-space data prediction: without thresholding x0 = (x - sigma eps) / alpha explodes at high noise
        kwargs.update(algorithm_type="dpmsolver++", solver_order=2, thresholding=True, sample_max_value=1.0)
    return SAMPLERS[name].from_config(train_scheduler_config, **kwargs)


def to_model_range(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images_u8))
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def model_input(noisy, images, masks):
    """The 7-channel input: noisy image, image with the mask region blanked, mask."""
    return torch.cat([noisy, images * (1 - masks), masks], dim=1)


@torch.no_grad()
def inpaint(unet: UNet2DModel, scheduler, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
            guidance_scale: float = 2.0, num_inference_steps: int = 20,
            generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
            strength: float = 1.0) -> torch.Tensor:
    """Fill ``masks`` (B,1,H,W, 1 = generate) in ``images`` (B,3,H,W in [-1,1]) with class ``labels``.

    Classifier-free guidance: eps = eps(null) + scale * (eps(label) - eps(null)); scale 1 is plain
    conditional sampling. Outside the mask the result is exactly the input image. ``noise`` (the
    starting noise) makes each image reproducible on its own, whatever batch it is drawn in.
    ``strength`` < 1 starts from the input image noised to that fraction of the schedule instead of
    pure noise (SDEdit): the new lesion keeps the old one's layout and takes the class's look.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    device = next(unet.parameters()).device
    images, masks, labels = images.to(device), masks.to(device), labels.to(device)
    scheduler.set_timesteps(num_inference_steps, device=device)
    if noise is None:
        noise = torch.randn(images.shape, generator=generator, device="cpu")
    noise = noise.to(device)
    timesteps = scheduler.timesteps
    if strength < 1.0:
        start = min(len(timesteps) - 1, int(round(len(timesteps) * (1.0 - strength))))
        timesteps = timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        x = scheduler.add_noise(images, noise, timesteps[:1].repeat(len(images)))
    else:
        x = noise * scheduler.init_noise_sigma
    nulls = torch.full_like(labels, null_label(unet))
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in timesteps:
        inp = model_input(scheduler.scale_model_input(x, t), images, masks)
        if guidance_scale == 1.0:
            eps = unet(inp, t, class_labels=labels).sample
        else:
            eps_c, eps_u = unet(torch.cat([inp, inp]), t, class_labels=torch.cat([labels, nulls])).sample.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        if step_kwargs and generator is not None and generator.device.type != x.device.type:
            step_kwargs = {}  # a CPU generator can't drive CUDA noise; results stay seeded by the initial noise
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return masks * x.clamp(-1, 1) + (1 - masks) * images


class MaskSampler:
    """Training masks: the image's own lesion mask, grown by a random margin, or a random shape.

    The margin matters: at generation time a small lesion class (DF) is drawn into the mask of a
    bigger lesion (NV). Trained on loose masks, the model learns that the class, not the mask,
    decides the lesion's size, and fills the rest with skin.
    """

    def __init__(self, lesion_masks: np.ndarray, lesion_prob: float, seed: int, bank_size: int = 512):
        size = lesion_masks.shape[-1]
        self.max_margin = max(1, size // 8)
        # grown per batch, not precomputed: all margins of all masks would not fit in memory at 128+ px
        self.lesion_masks = lesion_masks > 0.5
        self.lesion_prob = lesion_prob
        rng = np.random.default_rng(seed)
        self.bank = np.stack([random_shape_mask(size, rng) for _ in range(bank_size)])

    def __call__(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        use_lesion = rng.uniform(size=len(idx)) < self.lesion_prob
        margin = rng.integers(0, self.max_margin + 1, size=len(idx))
        random = self.bank[rng.integers(len(self.bank), size=len(idx))]
        lesion = np.stack([ndimage.binary_dilation(self.lesion_masks[i], iterations=int(k)) if k else self.lesion_masks[i]
                           for i, k in zip(idx, margin)])
        return np.where(use_lesion[:, None, None], lesion, random).astype(np.float32)


def class_sampling_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-image probabilities so that class c is drawn with p ~ n_c ** power."""
    counts = np.bincount(labels)
    w = counts[labels].astype(np.float64) ** (power - 1.0)
    return w / w.sum()


def random_dihedral(x: torch.Tensor, m: torch.Tensor, rng: np.random.Generator):
    """One random flip/rotation for the whole batch: skin lesions have no up or down."""
    k = int(rng.integers(4))
    x, m = torch.rot90(x, k, (2, 3)), torch.rot90(m, k, (2, 3))
    if rng.uniform() < 0.5:
        x, m = x.flip(3), m.flip(3)
    return x, m


def train_diffusion(images_u8: np.ndarray, labels: np.ndarray, lesion_masks: np.ndarray, num_classes: int,
                    cfg, out_dir: str | Path, seed: int = 0, device: str = "auto", resume: bool = True) -> Path:
    """Train the inpainting model on all classes; returns the directory with ``unet`` and ``unet_ema``.

    Checkpoints every ``cfg.checkpoint_every`` steps into ``out_dir/checkpoint`` (atomically) and,
    with ``resume``, continues from there. Batches and noise are seeded by step, so a resumed run
    follows the same path as an uninterrupted one. Runs under Hugging Face Accelerate: launch
    with ``accelerate launch`` for several GPUs.
    """
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=(device == "cpu"))
    size = images_u8.shape[1]
    torch.manual_seed(seed)  # same initial weights on every process and every run
    unet = build_unet(size, num_classes, cfg.block_out_channels, cfg.layers_per_block, cfg.attention)
    noise_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = copy.deepcopy(unet).requires_grad_(False)
    step, history = 0, []
    recover_dir(ckpt)
    if resume and (ckpt / "state.pt").is_file():
        unet = UNet2DModel.from_pretrained(ckpt / "unet")
        ema = UNet2DModel.from_pretrained(ckpt / "unet_ema").requires_grad_(False)
        opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
        state = load_state(ckpt / "state.pt")
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])
        log.info("diffusion: resuming from step %d", step)
    unet, opt = accelerator.prepare(unet, opt)
    ema.to(accelerator.device)
    alphas = noise_sched.alphas_cumprod.to(accelerator.device)

    weights = class_sampling_weights(labels, cfg.class_sampling_power)
    mask_sampler = MaskSampler(lesion_masks, cfg.lesion_mask_prob, seed)
    all_images = to_model_range(images_u8)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    nparams = sum(p.numel() for p in unet.parameters())
    log.info("diffusion: %.2fM parameters, %d images, %d steps of %d", nparams / 1e6, len(labels), cfg.train_steps,
             cfg.batch_size)

    def save_checkpoint():
        if not accelerator.is_main_process:
            return
        with atomic_dir(ckpt) as tmp:
            accelerator.unwrap_model(unet).save_pretrained(tmp / "unet")
            ema.save_pretrained(tmp / "unet_ema")
            save_state(tmp / "state.pt", {"optimizer": opt.state_dict() if not hasattr(opt, "optimizer")
                                          else opt.optimizer.state_dict(), "step": step, "history": history})

    t0 = time.time()
    running = []
    while step < cfg.train_steps:
        rng = np.random.default_rng([seed, step, accelerator.process_index])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        idx = rng.choice(len(labels), size=cfg.batch_size, p=weights)
        x0 = all_images[idx]
        m = torch.from_numpy(mask_sampler(idx, rng))[:, None]
        x0, m = random_dihedral(x0, m, rng)
        y = labels_t[idx].clone()
        y[torch.rand(len(y), generator=gen) < cfg.cond_drop_prob] = num_classes  # null class
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (len(y),), generator=gen)
        x0, m, y, noise, t = (a.to(accelerator.device) for a in (x0, m, y, noise, t))
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with accelerator.autocast():
            pred = unet(model_input(noisy, x0, m), t, class_labels=y).sample
        w = 1 + (cfg.mask_loss_weight - 1) * m  # the lesion region is where the class has to show
        loss = (w * (pred.float() - noise) ** 2).mean() / w.mean()
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"diffusion loss became {loss.item()} at step {step}; the last good checkpoint "
                f"({ckpt}) is kept. Lower diffusion.lr or use fp32 (diffusion.mixed_precision=no).")
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), accelerator.unwrap_model(unet).parameters()):
                pe.lerp_(p.detach(), 1 - decay)
        step += 1
        running.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.train_steps:
            history.append({"step": step, "loss": float(np.mean(running)), "seconds": time.time() - t0})
            log.info("diffusion step %d/%d loss %.4f (%.1f img/s)", step, cfg.train_steps, np.mean(running),
                     len(running) * cfg.batch_size / max(1e-9, time.time() - t0))
            running, t0 = [], time.time()
        if step % cfg.checkpoint_every == 0 or step == cfg.train_steps:
            save_checkpoint()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(out_dir / "train_info.json", {"steps": step, "history": history, "parameters": nparams,
                                                  "scheduler": dict(noise_sched.config)})
    return ckpt


def load_inpainter(ckpt_dir: str | Path, use_ema: bool = True, device: str = "cpu"):
    """Load ``(unet, train_scheduler_config)`` from a training checkpoint (safetensors weights)."""
    ckpt_dir = Path(ckpt_dir)
    sub = "unet_ema" if use_ema else "unet"
    if not (ckpt_dir / sub).is_dir():
        raise FileNotFoundError(f"no diffusion checkpoint at {ckpt_dir / sub}; run `tailfill train-diffusion` first")
    unet = UNet2DModel.from_pretrained(ckpt_dir / sub, use_safetensors=True).to(device).eval()
    info = read_json(ckpt_dir.parent / "train_info.json")
    sched = DDPMScheduler.from_config(info["scheduler"])
    return unet, sched.config
