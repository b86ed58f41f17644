"""tailfill: fix the long tail of medical image classification with diffusion-generated data.

The package follows the pipeline, one module per step (docs/architecture.md draws it):

    data      -> load ISIC 2019 / image folders / CSVs (a registry), grouped splits, resized cache
    masks     -> lesion masks (automatic, user, random shapes)
    training  -> what both trainers share: accelerator, pixel range, class re-sampling, divergence check
    diffusion -> class- and mask-conditioned inpainting UNet, its loss, training, InpaintPipeline
    generate  -> inpaint new lesions of rare classes into real skin, with provenance
    ood       -> OOD post-selection of synthetic images against real ones; which ones are used
    mixing    -> what a classifier trains on (real + synthetic, the real-oversampling control), draw rates
    classify  -> long-tail classifier training (baselines and augmented), fit_and_score
    evaluate  -> ISIC metrics, results tables, best method on validation, intervals, submission CSVs
    report    -> tables and plots
    run       -> the run directory: layout, stage markers, config check, prepared data
    stages    -> each stage a short function over the library; run/resume
    cli       -> the ``tailfill`` command
"""

__version__ = "0.2.0"
