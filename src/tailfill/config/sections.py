"""The config's sections, one dataclass per module that reads it; one comment per field."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Union

import yaml


@dataclass
class DataConfig:
    """The dataset, its splits and the resized cache every stage reads (data/)."""
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
    test_fraction: float = 0.2         # held-out real images: the test split (folds: one fold each)
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
    latent_channels: int = 4           # channels of the latent grid
    layers_per_block: int = 1          # resnet blocks per level
    train_steps: int = 2000            # optimiser steps
    batch_size: int = 32               # images a step (per process)
    crop_size: Optional[int] = None    # train on random crops of this side (it is fully convolutional; None or >=
                                       # image_size: whole images); 64 at 128 px: a quarter of the pixels a step
    lr: float = 5e-4                   # AdamW learning rate
    kl_weight: float = 1e-6            # small: a near-deterministic autoencoder, as in latent diffusion
    ema_decay: float = 0.999           # decay of the weight average that is kept
    checkpoint_every: int = 250        # steps between atomic checkpoints (resume from the last)
    log_every: int = 100               # steps between history rows (mean loss)
    mixed_precision: Optional[str] = None  # no | fp16 | bf16; null: the launcher's


@dataclass
class DiffusionConfig:
    """The inpainting diffusion model and its training (generator/train.py)."""
    space: str = "pixel"               # pixel | latent (a UNet on an autoencoder's latents: more px per CPU-minute)
    vae: Optional[str] = None          # latent: a local pretrained autoencoder (AutoencoderKL, or TAESD files such as
                                       # ../shared/models/taef2); None: train one (autoencoder.*)
    latent_condition: str = "encode"   # latent: the masked image the UNet sees: encode (it, each step) | mask (the
                                       # image's latents, encoded once, masked on the latent grid: no encoder a step)
    pretrained: Optional[str] = None   # latent: a local diffusers SD-style inpainting pipeline folder to fine-tune
    finetune: str = "lora"             # pretrained: lora (needs peft) | full
    lora_rank: int = 8                 # pretrained + lora: rank of the LoRA adapters
    class_tokens: int = 4              # pretrained: learned cross-attention tokens per class (no text encoder)
    # UNet widths, one per level (each level halves the side)
    block_out_channels: list = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1          # resnet blocks per level
    attention: bool = False            # self-attention in the lowest-resolution blocks
    train_steps: int = 400             # optimiser steps (400: the CPU demo's, with Min-SNR and lr 1e-3)
    batch_size: int = 32               # images a step (per process)
    lr: float = 1e-3                   # AdamW learning rate
    ema_decay: float = 0.995           # decay of the weight average generation uses (generate.use_ema)
    cond_drop_prob: float = 0.1        # label dropout that trains the null class for guidance
    num_train_timesteps: int = 1000    # the DDPM noise schedule's length
    beta_schedule: str = "squaredcos_cap_v2"  # its beta schedule (a diffusers name)
    lesion_mask_prob: float = 0.8      # share of training masks that cover the lesion (rest: random shapes)
    mask_loss_weight: float = 4.0      # extra loss weight inside the mask, where the class must show
    class_sampling_power: float = 0.5  # draw class c with p ~ n_c**power: 1 natural, 0 balanced, 0.5 between
    snr_gamma: Optional[float] = 5.0   # Min-SNR-gamma loss weighting (Hang et al. 2023); None: plain epsilon MSE
    checkpoint_every: int = 250        # steps between atomic checkpoints (resume from the last)
    mixed_precision: Optional[str] = None  # no | fp16 | bf16; null: the launcher's (accelerate launch --mixed_precision)
    log_every: int = 100               # steps between history rows (mean loss)


@dataclass
class GenerateConfig:
    """Which classes get how many synthetic images, and how they are drawn (generator/generate.py)."""
    classes: Union[str, list] = "tail"  # "tail" (below the median count), "all", or a list of class names
    target: Union[str, int] = "median"  # fill each chosen class up to this many training images ("median"|"max"|int)
    oversample: float = 2.0            # draw this many times the deficit so selection has a choice
    sampler: str = "dpmsolver++"       # ddpm | ddim | dpmsolver++
    steps: int = 12                    # DPM-Solver++ needs few; 20-25 for ddim
    guidance_scale: float = 3.0        # classifier-free guidance: 1 plain conditional, higher more class-typical
    latent_clip: Optional[float] = 2.0  # latent space: clip each step's x0 estimate to +-this (latents have unit
                                        # variance; unclipped, a small UNet drifts into blobs); null for SD's UNet
    strength: Union[float, list] = 1.0  # <1: start from the context's own lesion noised this far (SDEdit), not pure
                                        # noise; a list: each image draws one (Diff-Mix: [0.5, 0.7, 0.9])
    mask_source: str = "auto"          # auto (segment the context's lesion) | user | random
    context_classes: Union[str, list] = "all"  # skin context from: "all" training images, the "same" class, or names
    mask_dilation: int = 2             # grow lesion masks (pixels) so the old lesion's rim is replaced too
    batch_size: int = 16               # images a sampling batch (16 suits a CPU; more on a GPU)
    shard_size: int = 64               # images per shard; finished shards are skipped on resume
    seed: int = 1234                   # seed of the plan and noise: each image reproducible on its own
    use_ema: bool = True               # sample with the weight average (false: the last weights)


@dataclass
class SelectConfig:
    """The OOD post-selection of synthetic images, calibrated on held-out real ones (selection/)."""
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
    """The classifier network, its optimiser and the long-tail methods it is trained with (classifier/train.py)."""
    backbone: str = "resnet18"         # any timm model name (lite0 = tf_efficientnet_lite0)
    pretrained: bool = False           # timm weights in the local cache, or lite0's from tailfill[lite0]
    input_size: Optional[int] = None   # side the network reads (None: data.image_size; 128: a 64 px cache at lite0's scale)
    epochs: int = 20                   # passes (or steps_per_epoch batches); the best validation epoch is kept
    steps_per_epoch: Optional[int] = None  # batches an epoch, drawn by the method's sampler (null: one pass; a fixed
                                       # budget keeps a fit's cost off the head class's size)
    batch_size: int = 64               # images a batch (per process)
    lr: float = 2e-3                   # AdamW peak learning rate (one-cycle schedule)
    weight_decay: float = 5e-4         # AdamW weight decay
    # the long-tail methods trained on real images, the baselines (docs/usage.md lists them)
    methods: list = field(default_factory=lambda: ["ce", "balanced_sampling", "logit_adjust"])
    seeds: list = field(default_factory=lambda: [0, 1])  # a fit per method and seed; tables give mean, sd, intervals
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
    """A run: where it lives, its seed and device, and one section per part of the pipeline."""
    run_dir: str = "runs/demo"         # where every stage reads and writes (config.yaml, markers, outputs)
    seed: int = 0                      # the data split's seed (and the generator's and the control's)
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

    def to_yaml(self, comments: bool = False) -> str:
        """The config as YAML; with ``comments``, each key followed by its field's comment (``show-config``)."""
        if not comments:
            return yaml.safe_dump(self.to_dict(), sort_keys=False)
        lines = []
        for top in dataclasses.fields(self):
            value = getattr(self, top.name)
            fields = dataclasses.fields(value) if dataclasses.is_dataclass(value) else [top]
            notes = field_comments(type(value) if dataclasses.is_dataclass(value) else Config)
            if dataclasses.is_dataclass(value):
                doc = (type(value).__doc__ or "").strip().split("\n")[0]  # every section has a docstring
                lines.append(f"{top.name}:" + (f"  # {doc}" if doc else ""))
            for f in fields:
                item = getattr(value, f.name) if dataclasses.is_dataclass(value) else value
                text = yaml.safe_dump(item, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()
                line = ("  " if dataclasses.is_dataclass(value) else "") + f"{f.name}: {text}"
                lines.append(line + (f"  # {notes[f.name]}" if notes.get(f.name) else ""))
        return "\n".join(lines) + "\n"


def field_comments(cls) -> dict[str, str]:
    """Each field of dataclass ``cls`` -> its comment in this file (the line's, with its continuation lines,
    or the line above when the field line has none)."""
    import inspect
    import io
    import tokenize

    out, last, pending = {}, None, []
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if last is not None and tok.start[0] == last[1]:        # on the field's line
                out[last[0]] = text
            elif last is not None and tok.start[0] == last[2] + 1 and tok.start[1] > 4 and last[0] in out:  # continued
                out[last[0]] += " " + text
                last = (last[0], last[1], tok.start[0])
            else:
                pending.append(text)
        elif tok.type == tokenize.NAME and tok.start[1] == 4:       # a field (or method) name in the class body
            last = (tok.string, tok.start[0], tok.start[0])
            if pending:
                out.setdefault(tok.string, " ".join(pending))
            pending = []
    return out
