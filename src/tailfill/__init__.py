"""tailfill: fix the long tail of medical image classification with diffusion-generated data.

The package follows the pipeline, one package per step (docs/architecture.md draws it):

    data/        datasets (ISIC 2019, HAM10000, folders, CSVs: a registry), grouped splits, lesion masks, cache
    generator/   the inpainting UNet and pipeline, its training, the autoencoder, SD inpainting, generation
    selection/   OOD scorers, the selector fitted on real images, the fidelity judge
    classifier/  long-tail losses and methods, the model, training, cRT, mixing, generated features
    evaluation/  ISIC metrics and intervals, the report's tables, plots and page
    utils/       atomic files, progress logs, what both trainers share
    config, run, stages, crossval, sweep, compare, predict, cli: the run layer on top
"""

__version__ = "0.2.0"
