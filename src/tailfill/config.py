"""Run configuration: nested dataclasses loaded from YAML, strict about unknown keys.

The defaults *are* the demo: ``tailfill run`` with no config draws a small synthetic
long-tailed dermoscopy-like set and runs every stage at 32 px on a CPU in minutes.
A YAML file overrides any subset, e.g. ``configs/isic2019.yaml``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


@dataclass
class DataConfig:
    kind: str = "demo"                 # demo | isic2019 | ham10000 | folder | csv
    root: Optional[str] = None         # dataset root (demo: where to draw it; default <run_dir>/demo_data)
    csv: Optional[str] = None          # kind=csv: CSV with columns image,label[,lesion_id]; isic2019/ham10000:
                                       # an ISIC 2019 ground-truth CSV elsewhere (default: the root's)
    labels: str = "isic2019"           # ham10000: isic2019 (ISIC 2019's 8 classes) | dx (HAM's own 7)
    image_size: int = 32               # side of the cached square images every stage works on
    resize: str = "crop"               # a non-square image (and its mask) to the square: crop (centre square) |
                                       # squash | pad (black sides); the same in prepare, generate and predict
    dataset_masks: bool = True         # use the lesion masks a dataset ships (ham10000) instead of segmenting
    val_fraction: float = 0.15         # held-out real images: model selection and OOD calibration
    test_fraction: float = 0.2
    split_file: Optional[str] = None   # CSV image,split (train/val/test/unused): your own split instead of ours
    folds: Optional[int] = None        # k-fold cross-validation: k runs, fold i the test split of run i (grouped)
    fold: Optional[int] = None         # set per fold by `tailfill run` when folds is set
    val_per_class: Optional[int] = None   # instead of val_fraction: this many images (whole lesions) of each class
    test_per_class: Optional[int] = None  # instead of test_fraction: this many images (whole lesions) of each class
    imbalance_ratio: Optional[float] = None  # thin the training split to this head/tail ratio (None: as is; demo: 20)
    max_per_class: Optional[int] = None      # cap images per class before splitting (quick experiments)
    on_bad_image: str = "error"        # error | skip: a missing or unreadable image
    masks_dir: Optional[str] = None    # user lesion masks (<image>.png or <image>_segmentation.png)
    cache_dir: Optional[str] = None    # default <run_dir>/cache
    workers: int = 2                   # threads decoding images for the cache
    demo_images: int = 1000            # demo only: total images drawn
    demo_imbalance: float = 4.0        # demo only: largest/smallest class in the whole drawn set


@dataclass
class AutoencoderConfig:
    """The autoencoder of latent diffusion (diffusion.space: latent), when tailfill trains it."""
    block_out_channels: list = field(default_factory=lambda: [32, 64, 64])  # 3 levels: latents 4x smaller
    latent_channels: int = 4
    layers_per_block: int = 1
    train_steps: int = 2000
    batch_size: int = 32
    crop_size: Optional[int] = None    # train on random crops of this side (it is fully convolutional; None or >=
                                       # image_size: whole images); 64 at 128 px: a quarter of the pixels a step
    lr: float = 5e-4
    kl_weight: float = 1e-6            # small: a near-deterministic autoencoder, as in latent diffusion
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    log_every: int = 100
    mixed_precision: Optional[str] = None


@dataclass
class DiffusionConfig:
    space: str = "pixel"               # pixel | latent (a UNet on an autoencoder's latents: more px per CPU-minute)
    vae: Optional[str] = None          # latent: a local pretrained AutoencoderKL folder; None: train one (autoencoder.*)
    pretrained: Optional[str] = None   # latent: a local diffusers SD-style inpainting pipeline folder to fine-tune
    finetune: str = "lora"             # pretrained: lora (needs peft) | full
    lora_rank: int = 8
    class_tokens: int = 4              # pretrained: learned cross-attention tokens per class (no text encoder)
    block_out_channels: list = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention: bool = False            # self-attention in the lowest-resolution blocks
    train_steps: int = 400             # optimiser steps (400: the CPU demo's, with Min-SNR and lr 1e-3)
    batch_size: int = 32
    lr: float = 1e-3
    ema_decay: float = 0.995
    cond_drop_prob: float = 0.1        # label dropout that trains the null class for guidance
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    lesion_mask_prob: float = 0.8      # share of training masks that cover the lesion (rest: random shapes)
    mask_loss_weight: float = 4.0      # extra loss weight inside the mask, where the class must show
    class_sampling_power: float = 0.5  # draw class c with p ~ n_c**power: 1 natural, 0 balanced, 0.5 between
    snr_gamma: Optional[float] = 5.0   # Min-SNR-gamma loss weighting (Hang et al. 2023); None: plain epsilon MSE
    checkpoint_every: int = 250
    mixed_precision: Optional[str] = None  # no | fp16 | bf16; null: the launcher's (accelerate launch --mixed_precision)
    log_every: int = 100


@dataclass
class GenerateConfig:
    classes: Union[str, list] = "tail"  # "tail" (below the median count), "all", or a list of class names
    target: Union[str, int] = "median"  # fill each chosen class up to this many training images ("median"|"max"|int)
    oversample: float = 2.0            # draw this many times the deficit so selection has a choice
    sampler: str = "dpmsolver++"       # ddpm | ddim | dpmsolver++
    steps: int = 12                    # DPM-Solver++ needs few; 20-25 for ddim
    guidance_scale: float = 3.0
    latent_clip: Optional[float] = 2.0  # latent space: clip each step's x0 estimate to +-this (latents have unit
                                        # variance; unclipped, a small UNet drifts into blobs); null for SD's UNet
    strength: Union[float, list] = 1.0  # <1: start from the context's own lesion noised this far (SDEdit), not pure
                                        # noise; a list: each image draws one (Diff-Mix: [0.5, 0.7, 0.9])
    mask_source: str = "auto"          # auto (segment the context's lesion) | user | random
    context_classes: Union[str, list] = "all"  # skin context from: "all" training images, the "same" class, or names
    mask_dilation: int = 2             # grow lesion masks (pixels) so the old lesion's rim is replaced too
    batch_size: int = 16               # images a sampling batch (16 suits a CPU; more on a GPU)
    shard_size: int = 64               # images per shard; finished shards are skipped on resume
    seed: int = 1234
    use_ema: bool = True


@dataclass
class SelectConfig:
    method: str = "mahalanobis"        # mahalanobis | knn | none
    k: int = 5                         # knn: neighbours
    real_quantile: float = 0.95        # threshold = this quantile of held-out real scores of the class
    near_duplicate_similarity: Union[str, float] = "auto"  # centred cosine similarity to a training image above
                                       # which a sample is a copy; auto: held-out real images' 99th percentile
    feature_method: Optional[str] = None  # which baseline's classifier gives the features (default: best on val)
    features: str = "classifier"       # OOD features: classifier (the baseline's) | lite0 (frozen ImageNet, tailfill[lite0])
    feature_size: int = 224            # lite0 features (OOD scores and experimental.judge) at this many px


@dataclass
class ClassifierConfig:
    backbone: str = "resnet18"         # any timm model name (lite0 = tf_efficientnet_lite0)
    pretrained: bool = False           # timm weights in the local cache, or lite0's from tailfill[lite0]
    input_size: Optional[int] = None   # side the network reads (None: data.image_size; 128: a 64 px cache at lite0's scale)
    epochs: int = 20
    steps_per_epoch: Optional[int] = None  # batches an epoch, drawn by the method's sampler (null: one pass; a fixed
                                       # budget keeps a fit's cost off the head class's size)
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    methods: list = field(default_factory=lambda: ["ce", "balanced_sampling", "logit_adjust"])
    seeds: list = field(default_factory=lambda: [0, 1])
    mixed_precision: Optional[str] = None  # as diffusion.mixed_precision
    tta: bool = False                  # predictions average the 8 flips and quarter turns (a lesion has no up)


@dataclass
class MixingConfig:
    """How synthetic (or, for the control, repeated real) images join training in train-augmented."""
    method: str = "best"               # the method that trains on them: a classifier method, or best (on val)
    fill_with: str = "synthetic"       # what fills each class's deficit: synthetic | real (the control, no generator)
    share: Optional[float] = None      # cap the synthetic share of each class's draws (None: no cap)
    rebalances: bool = True            # they count toward their class's frequency (false: the real prior is kept)


@dataclass
class HeadConfig:
    """cRT: after a fit, the head re-trained class-balanced on real features (classifier/crt.py)."""
    retrain: bool = False              # re-train the head of every fit
    epochs: int = 10                   # epochs of that re-training
    init: str = "reset"                # reset (cRT) | keep (fine-tune the trained head, as LDMLR does)
    feature_fill: Optional[str] = None  # also draw generated feature vectors: gaussian | diffusion (LDMLR) | null
    feature_share: float = 0.5         # at most this share of a class's head-training draws are generated
    feature_steps: int = 1500          # training steps of the feature diffusion model


@dataclass
class ExperimentalConfig:
    """Knobs measured null or harmful (docs/results.md keeps the record), kept to reproduce those rows."""
    keep_fraction: float = 1.0         # select: keep at most this fraction of each class's best scores
    min_real_quantile: Optional[float] = None  # select: also drop scores below this real quantile (too typical)
    fill_fraction: float = 1.0         # select: use eligible images for at most this share of a deficit
    judge: Optional[str] = None        # select: a fidelity judge besides the OOD score: lite0 | classifier | null
    judge_reject_confidence: float = 0.5  # judge: drop an image another class claims with at least this probability
    judge_max_confidence: Optional[float] = None  # judge: drop images of their class above this probability
    soft_labels: bool = False          # mixing: a translated image counts strength**gamma as its class (Diff-Mix)
    soft_label_gamma: float = 0.5      # the gamma of soft_labels
    synthetic_loss_weight: float = 1.0  # mixing: loss weight of a synthetic image relative to a real one
    synthetic_max_ratio: Optional[float] = None  # mixing: at most this many synthetic images per real one, per class
    ema_decay: Optional[float] = None  # classifier: validate and keep a moving average of the weights (e.g. 0.98)
    keep: Optional[str] = None         # classifier: the weights kept: best (null: best validation epoch) | last


@dataclass
class Config:
    run_dir: str = "runs/demo"
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda
    report_to: Optional[str] = None    # tensorboard | wandb: training curves to an accelerate tracker as well
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    experimental: ExperimentalConfig = field(default_factory=ExperimentalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# keys that moved to a section of their own (old dotted key -> new): an old config gets an error naming the new
# key; a run directory's saved config.yaml is upgraded on load (`tailfill upgrade-config` rewrites a file)
MOVED = {
    "classifier.augmented_method": "mixing.method", "classifier.fill_with": "mixing.fill_with",
    "classifier.synthetic_share": "mixing.share", "classifier.synthetic_rebalances": "mixing.rebalances",
    "classifier.retrain_head": "head.retrain", "classifier.head_epochs": "head.epochs",
    "classifier.head_init": "head.init", "classifier.feature_fill": "head.feature_fill",
    "classifier.feature_share": "head.feature_share", "classifier.feature_steps": "head.feature_steps",
    "select.judge_size": "select.feature_size",
    **{f"select.{k}": f"experimental.{k}" for k in ("keep_fraction", "min_real_quantile", "fill_fraction", "judge",
                                                     "judge_reject_confidence", "judge_max_confidence")},
    **{f"classifier.{k}": f"experimental.{k}" for k in ("soft_labels", "soft_label_gamma", "synthetic_loss_weight",
                                                         "synthetic_max_ratio", "ema_decay", "keep")},
}


def upgrade_config(values: dict) -> list[tuple[str, str]]:
    """Move every old key of the nested ``values`` to its new place (``MOVED``), in place; the moves made."""
    done = []
    for old, new in MOVED.items():
        (o_sec, o_key), (n_sec, n_key) = old.split("."), new.split(".")
        section = values.get(o_sec)
        if isinstance(section, dict) and o_key in section:
            target = values.setdefault(n_sec, {}) or {}
            values[n_sec] = target
            if isinstance(target, dict):
                target[n_key] = section.pop(o_key)
                done.append((old, new))
    return done


def upgrade_file(path: str | Path) -> tuple[str, list[tuple[str, str]]]:
    """The YAML of the config or sweep spec at ``path`` with its moved keys at their new place (comments are not
    kept), and the moves made. A sweep spec's dotted keys (in ``set`` and each variant) are renamed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    if "variants" in values or "set" in values:  # a sweep spec
        moves = []
        for block in [values.get("set")] + list((values.get("variants") or {}).values()):
            for old in [k for k in (block or {}) if k in MOVED]:
                block[MOVED[old]] = block.pop(old)
                moves.append((old, MOVED[old]))
    else:
        moves = upgrade_config(values)
    return yaml.safe_dump(values, sort_keys=False), moves


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"config section {where.rstrip('.') or 'top level'} must be a mapping of keys, got "
                         f"{values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    moved = [f"{where}{k} (now {MOVED[where + k]})" for k in unknown if where + k in MOVED]
    if moved:
        raise ValueError(f"config key(s) moved: {', '.join(moved)}; `tailfill upgrade-config FILE` rewrites a "
                         "config in the new layout")
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hints[name], where + name)
    return cls(**kwargs)


def _coerce(value, hint, key: str):
    """``value`` as the field's type, or a ValueError naming ``key``. YAML 1.1 reads ``1e-3`` as a string:
    numbers written so become floats; anything that is not the field's type is refused here, at load."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):  # str last
            try:
                return _coerce(value, option, key)
            except ValueError as e:
                errors.append(e)
        raise ValueError(f"config key {key}: expected {' or '.join(_name(a) for a in args)}, got {value!r}")
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    elif hint in (bool, str) and isinstance(value, hint):
        return value
    elif hint is list and isinstance(value, (list, tuple)):
        return list(value)
    elif hint is Any:
        return value
    raise ValueError(f"config key {key}: expected {_name(hint)}, got {value!r}")


def _name(t) -> str:
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


def config_from_dict(values: dict | None) -> Config:
    cfg = _build(Config, values or {}, "")
    validate(cfg)
    return cfg


def set_dotted(values: dict, key: str, value, where: str) -> None:
    """``values[a][b] = value`` for ``key`` "a.b" (sections made as needed); ``where`` starts the error."""
    node, parts = values, key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"{where}: config section {p} must be a mapping, got {node!r}")
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict:
    """``["a.b=value", ...]`` (values in YAML) -> ``{"a.b": (item, value)}``, the last of a key winning."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = (item, yaml.safe_load(raw))
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: not a valid YAML value: {e}") from None
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config over the defaults; ``overrides`` are ``a.b=value`` strings (YAML values)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if values is None:  # an empty file is more likely a mistake than a wish for the demo
            raise ValueError(f"config file {path} is empty; write the keys to change (tailfill show-config lists "
                             "them), or leave out --config to run the demo")
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections (data:, classifier:, ...), "
                             f"got a {type(values).__name__}")
    for key, (item, value) in parse_overrides(overrides).items():
        set_dotted(values, key, value, f"override {item!r}")
    return config_from_dict(values)

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
    from .classifier.methods import FEATURE_GENERATORS, METHODS
    from .data.images import RESIZE_MODES
    from .data.prepare import DATASETS
    from .data.sources import HAM_LABELS
    from .generator.schedulers import SCHEDULERS
    from .selection.scorers import FEATURE_EXTRACTORS, SCORERS

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
    from .utils.trackers import check_tracker

    check_tracker(cfg.report_to)
