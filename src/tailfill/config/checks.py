"""What a config must satisfy beyond its types: every number in its range, and the cross-field rules."""
from __future__ import annotations

import dataclasses

from .sections import Config


# the allowed range of every numeric key, in interval notation; checked at load, naming the key (a test
# makes sure a new numeric key gets one). NaN is never allowed, infinity only where the range says inf].
RANGES = {
    "seed": "[0, inf)",
    "data.image_size": "[8, inf)", "data.val_fraction": "(0, 0.5)", "data.test_fraction": "(0, 0.5)",
    "data.folds": "[2, inf)", "data.fold": "[0, inf)", "data.val_per_class": "[1, inf)",
    "data.test_per_class": "[1, inf)", "data.imbalance_ratio": "[1, inf)", "data.max_per_class": "[1, inf)",
    "data.workers": "[1, inf)", "data.demo_images": "[48, inf)", "data.demo_imbalance": "[1, inf)",
    "autoencoder.block_out_channels": "[1, inf)", "autoencoder.latent_channels": "[1, inf)", "autoencoder.layers_per_block": "[1, inf)",
    "autoencoder.train_steps": "[1, inf)", "autoencoder.batch_size": "[1, inf)", "autoencoder.crop_size": "[1, inf)",
    "autoencoder.lr": "(0, inf)", "autoencoder.kl_weight": "[0, inf)", "autoencoder.ema_decay": "[0, 1)",
    "autoencoder.checkpoint_every": "[1, inf)", "autoencoder.log_every": "[1, inf)",
    "diffusion.block_out_channels": "[1, inf)", "diffusion.lora_rank": "[1, inf)", "diffusion.class_tokens": "[1, inf)", "diffusion.layers_per_block": "[1, inf)",
    "diffusion.train_steps": "[1, inf)", "diffusion.batch_size": "[1, inf)", "diffusion.lr": "(0, inf)",
    "diffusion.ema_decay": "[0, 1)", "diffusion.cond_drop_prob": "[0, 1)", "diffusion.num_train_timesteps": "[2, inf)",
    "diffusion.lesion_mask_prob": "[0, 1]", "diffusion.mask_loss_weight": "[0, inf)",
    "diffusion.class_sampling_power": "[0, 1]", "diffusion.snr_gamma": "(0, inf)",
    "diffusion.checkpoint_every": "[1, inf)", "diffusion.log_every": "[1, inf)",
    "generate.target": "[0, inf)", "generate.oversample": "(0, inf)", "generate.steps": "[1, inf)",
    "generate.guidance_scale": "[0, inf)", "generate.latent_clip": "(0, inf)", "generate.strength": "(0, 1]",
    "generate.mask_dilation": "[0, inf)", "generate.batch_size": "[1, inf)", "generate.shard_size": "[1, inf)",
    "generate.seed": "[0, inf)",
    "select.k": "[1, inf)", "select.real_quantile": "(0, 1]",
    "select.near_duplicate_similarity": "[-1, 1]", "select.feature_size": "[32, inf)",
    "classifier.seeds": "[0, inf)", "classifier.input_size": "[8, inf)", "classifier.epochs": "[1, inf)", "classifier.steps_per_epoch": "[1, inf)",
    "classifier.batch_size": "[2, inf)", "classifier.lr": "(0, inf)", "classifier.weight_decay": "[0, inf)",
    "mixing.share": "[0, 1]",
    "head.epochs": "[1, inf)", "head.feature_share": "(0, 1]", "head.feature_steps": "[1, inf)",
    "experimental.keep_fraction": "(0, 1]", "experimental.min_real_quantile": "[0, 1)",
    "experimental.fill_fraction": "[0, inf)", "experimental.judge_reject_confidence": "(0, 1]",
    "experimental.judge_max_confidence": "(0, 1]", "experimental.soft_label_gamma": "[0, inf)",
    "experimental.synthetic_loss_weight": "(0, inf)", "experimental.synthetic_max_ratio": "[0, inf)",
    "experimental.ema_decay": "(0, 1)",
}


def in_range(value: float, interval: str) -> bool:
    """Whether ``value`` lies in ``interval``, written "[0, 1)", "(0, inf)" and so on."""
    lo_s, hi_s = (x.strip() for x in interval[1:-1].split(","))
    lo, hi = float(lo_s), float(hi_s)
    if value != value:  # NaN
        return False
    above = value >= lo if interval[0] == "[" else value > lo
    below = value <= hi if interval[-1] == "]" else value < hi
    return above and below


def numeric_values(cfg: "Config"):
    """``(key, value)`` for every number in the config; a list's items each (e.g. every classifier.seeds)."""
    def numbers(key, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value
        elif isinstance(value, list):
            for v in value:
                yield from numbers(key, v)

    for top in dataclasses.fields(cfg):
        value = getattr(cfg, top.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                yield from numbers(f"{top.name}.{f.name}", getattr(value, f.name))
        else:
            yield from numbers(top.name, value)


def check_ranges(cfg: "Config") -> None:
    """Every number within its key's range (``RANGES``); the message names the key, the value and the range."""
    for key, value in numeric_values(cfg):
        interval = RANGES.get(key)
        if interval is None:
            raise ValueError(f"invalid config: {key} has no declared range (add it to config.RANGES)")
        if not in_range(value, interval):
            raise ValueError(f"invalid config: {key}={value!r} is out of range; allowed: {interval}")


def validate(cfg: Config) -> None:
    """Cross-field checks; allowed names come from the registries (dataset kinds, samplers, scorers, feature
    extractors, methods, feature generators), read without importing torch."""
    from ..classifier.methods import FEATURE_GENERATORS, METHODS
    from ..data.images import RESIZE_MODES
    from ..data.prepare import DATASETS
    from ..data.ham10000 import HAM_LABELS
    from ..generator.schedulers import SCHEDULERS
    from ..selection.scorers import FEATURE_EXTRACTORS, SCORERS

    def check(cond: bool, msg: str):
        if not cond:
            raise ValueError(f"invalid config: {msg}")

    def one_of(value, allowed, key: str):
        check(value in allowed, f"{key}={value!r}; choose from {', '.join(allowed)}")

    check_ranges(cfg)
    d, g, s, c, x = cfg.data, cfg.generate, cfg.select, cfg.classifier, cfg.experimental
    mix, head = cfg.mixing, cfg.head
    one_of(d.kind, DATASETS, "data.kind")
    check(d.kind == "demo" or d.root or d.csv, "data.root is required for real data")
    check(d.image_size % 8 == 0, f"data.image_size={d.image_size} must be a multiple of 8")
    check(d.fold is None or (d.folds is not None and 0 <= d.fold < d.folds), "data.fold in [0, data.folds)")
    check(not (d.folds and d.split_file), "data.folds and data.split_file exclude each other")
    one_of(d.on_bad_image, ("error", "skip"), "data.on_bad_image")
    one_of(d.labels, HAM_LABELS, "data.labels")
    one_of(d.resize, RESIZE_MODES, "data.resize")
    one_of(g.sampler, SCHEDULERS, "generate.sampler")
    one_of(g.mask_source, ("auto", "user", "random"), "generate.mask_source")
    check(g.mask_source != "user" or d.masks_dir or (d.kind == "ham10000" and d.dataset_masks),
          "mask_source=user needs data.masks_dir (or a dataset that ships masks: ham10000)")
    strengths = g.strength if isinstance(g.strength, list) else [g.strength]
    check(len(strengths) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
                                     for v in strengths),
          "generate.strength in (0, 1], or a non-empty list of such values")
    check(g.context_classes in ("all", "same") or isinstance(g.context_classes, list),
          "generate.context_classes is all, same or a list of classes")
    one_of(s.method, list(SCORERS) + ["none"], "select.method")
    check(x.min_real_quantile is None or 0 <= x.min_real_quantile < s.real_quantile,
          "experimental.min_real_quantile in [0, select.real_quantile) or null")
    one_of(s.features, FEATURE_EXTRACTORS, "select.features")
    if x.judge is not None:
        one_of(x.judge, FEATURE_EXTRACTORS, "experimental.judge")
    nd = s.near_duplicate_similarity
    check(nd == "auto" or (isinstance(nd, (int, float)) and -1 <= nd <= 1),
          "select.near_duplicate_similarity is auto or a cosine similarity in [-1, 1]")
    check(len(c.seeds) > 0, "classifier.seeds must not be empty")
    check(len(c.methods) > 0, "classifier.methods must not be empty")
    one_of(mix.fill_with, ("synthetic", "real"), "mixing.fill_with")
    for m in c.methods + ([] if mix.method == "best" else [mix.method]):
        check(m in METHODS, f"unknown classifier method {m!r}; choose from {', '.join(METHODS)}")
    if head.feature_fill is not None:
        one_of(head.feature_fill, FEATURE_GENERATORS, "head.feature_fill")
        check(head.retrain, "head.feature_fill acts in the head re-training: set head.retrain: true")
    one_of(head.init, ["reset", "keep"], "head.init")
    if x.keep is not None:
        one_of(x.keep, ["best", "last"], "experimental.keep")
    for key, mp in (("diffusion", cfg.diffusion.mixed_precision), ("classifier", c.mixed_precision)):
        check(mp is None or mp in ("no", "fp16", "bf16"), f"{key}.mixed_precision is no, fp16, bf16 or null")
    one_of(cfg.diffusion.space, ("pixel", "latent"), "diffusion.space")
    one_of(cfg.diffusion.latent_condition, ("encode", "mask"), "diffusion.latent_condition")
    check(not (cfg.diffusion.pretrained and cfg.diffusion.latent_condition == "mask"), "diffusion.latent_condition: "
          "mask does not fit diffusion.pretrained (an SD inpainting UNet learnt the encoded masked image): use encode")
    check(not cfg.diffusion.pretrained or cfg.diffusion.space == "latent", "diffusion.pretrained needs "
          "diffusion.space=latent")
    one_of(cfg.diffusion.finetune, ("lora", "full"), "diffusion.finetune")
    if cfg.diffusion.space == "latent" and not (cfg.diffusion.vae or cfg.diffusion.pretrained):
        factor = 2 ** (len(cfg.autoencoder.block_out_channels) - 1)
        check(d.image_size % (factor * 2 ** (len(cfg.diffusion.block_out_channels) - 1)) == 0,
              f"data.image_size must be divisible by the autoencoder's {factor}x and the UNet's downsampling")
        crop = cfg.autoencoder.crop_size
        check(crop is None or (crop > 0 and crop % factor == 0),
              f"autoencoder.crop_size must be positive and divisible by the autoencoder's {factor}x")
    from ..utils.trackers import check_tracker

    check_tracker(cfg.report_to)
