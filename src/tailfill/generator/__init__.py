"""Step 2-3, the generator: the class- and mask-conditioned inpainting UNet and its pipeline (``pipeline``), its
training (``train``), the latent autoencoder (``autoencoder``), the pretrained SD-inpainting path
(``sd_inpaint``), and generation of new lesions into real skin with provenance (``generate``)."""

import importlib

# name -> submodule: imported on first use, so reading the package's light parts (a config's names) needs
# no torch
_LAZY = {
    "InpaintPipeline": "pipeline",
    "MaskSampler": "train",
    "SCHEDULERS": "pipeline",
    "build_unet": "pipeline",
    "diffusion_loss": "train",
    "load_unet": "pipeline",
    "make_scheduler": "pipeline",
    "null_label": "pipeline",
    "train_diffusion": "train",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
