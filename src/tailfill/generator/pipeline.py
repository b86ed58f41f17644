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

import inspect
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from ..utils.io import read_json, write_json
from .schedulers import SCHEDULERS


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
    """A saved UNet: tailfill's ``UNet2DModel``, or a fine-tuned pretrained one (see :mod:`tailfill.generator.sd_inpaint`)."""
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
    kwargs, kind = {"timestep_spacing": "trailing"}, SCHEDULERS.get(name)  # trailing: start from pure noise
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

    def __init__(self, unet: UNet2DModel, scheduler, vae=None, latent_condition: str = "encode"):
        # latent space: the masked image as the condition is its encoding (encode) or the image's latents
        # masked on the latent grid (mask); the model was trained on one, generation must use the same
        self.unet, self.scheduler, self.vae, self.latent_condition = unet, scheduler, vae, latent_condition

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
            write_json(path / "pipeline.json", {"latent_condition": self.latent_condition})

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
        settings = read_json(path / "pipeline.json") if (path / "pipeline.json").is_file() else {}
        return cls(unet, sched, vae, settings.get("latent_condition", "encode"))

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

            start, cond_masks = encode(self.vae, images), latent_mask(masks, downscale(self.vae))
            masked = start * (1 - cond_masks) if self.latent_condition == "mask" else \
                encode(self.vae, images * (1 - masks))
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
