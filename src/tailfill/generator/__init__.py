"""Step 2-3, the generator: the class- and mask-conditioned inpainting UNet and its pipeline (``pipeline``), its
training (``train``), the latent autoencoder (``autoencoder``), the pretrained SD-inpainting path
(``sd_inpaint``), and generation of new lesions into real skin with provenance (``generate``)."""
from ..utils.lazy import lazy_exports

# each public name -> its submodule, imported on first use: the package's light parts (the names a config is
# checked against) import no torch
__getattr__, __all__ = lazy_exports(__name__, {
    "InpaintPipeline": "pipeline",
    "MaskSampler": "train",
    "SCHEDULERS": "pipeline",
    "build_unet": "pipeline",
    "diffusion_loss": "train",
    "load_unet": "pipeline",
    "make_scheduler": "pipeline",
    "null_label": "pipeline",
    "train_diffusion": "train",
})
