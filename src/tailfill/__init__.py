"""tailfill: fix the long tail of medical image classification with diffusion-generated data.

The package follows the pipeline, one module per stage:

    data      -> load ISIC 2019 / image folders / CSVs, grouped splits, resized cache
    masks     -> lesion masks (automatic, user, random shapes)
    diffusion -> class- and mask-conditioned inpainting UNet, training, sampling
    generate  -> inpaint new lesions of rare classes into real skin, with provenance
    select    -> OOD post-selection of synthetic images against real ones
    classify  -> long-tail classifier training (baselines and augmented)
    evaluate  -> ISIC metrics, confidence intervals, submission CSVs
    report    -> tables and plots
    pipeline  -> the stages wired together in a run directory
    cli       -> the ``tailfill`` command
"""

__version__ = "0.1.0"
