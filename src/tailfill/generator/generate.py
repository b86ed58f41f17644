"""Generation: inpaint new lesions of chosen classes into real skin contexts, with provenance.

The work is a *plan* (one row per image to make: class, context image, mask source, seed),
fixed before any sampling and cut into shards. Each shard's images and manifest part are written
atomically, so an interrupted run resumes by skipping finished shards, and several processes
(``accelerate launch``) share the shards between them.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage

from ..data.masks import random_shape_mask
from ..utils.io import atomic_path, read_table, write_csv
from ..utils.progress import progress
from ..utils.training import to_model_range, to_uint8
from .pipeline import InpaintPipeline

log = logging.getLogger(__name__)


def choose_classes(counts: np.ndarray, classes: list, spec) -> list[int]:
    """Class indices to generate: "tail" (below the median training count), "all", or names."""
    if spec == "tail":
        return [c for c in range(len(classes)) if counts[c] < np.median(counts)]
    if spec == "all":
        return list(range(len(classes)))
    unknown = [n for n in spec if n not in classes]
    if unknown:
        raise ValueError(f"generate.classes: unknown class(es) {', '.join(unknown)}; known: {', '.join(classes)}")
    return [classes.index(n) for n in spec]


def fill_targets(counts: np.ndarray, chosen: list[int], target) -> dict[int, int]:
    """How many synthetic images each chosen class needs to reach ``target`` training images."""
    goal = {"median": int(np.median(counts)), "max": int(counts.max())}.get(target, target)
    if not isinstance(goal, (int, np.integer)) or goal <= 0:
        raise ValueError(f"generate.target must be median, max or a positive integer, got {target!r}")
    return {c: int(goal - counts[c]) for c in chosen if goal > counts[c]}


def class_deficits(train_labels: np.ndarray, classes: list, cfg) -> dict[int, int]:
    """{class index: synthetic images it needs}: the classes ``cfg.classes`` names, filled to ``cfg.target``."""
    counts = np.bincount(np.asarray(train_labels), minlength=len(classes))
    return fill_targets(counts, choose_classes(counts, classes, cfg.classes), cfg.target)


PLAN_COLUMNS = ["file", "mask_file", "class", "label", "context_index", "source_image", "source_class",
                "mask_source", "strength", "seed"]


def make_plan(train_frame: pd.DataFrame, classes: list, deficits: dict[int, int], cfg) -> pd.DataFrame:
    """One row per image to generate (``PLAN_COLUMNS``; none when no class is short of its target);
    deterministic in ``cfg.seed``.

    ``cfg.context_classes``: "all" (any training image gives the skin), "same" (only images of the
    class being generated: the new lesion keeps that class's body sites and skin), or class names.
    """
    rng = np.random.default_rng(cfg.seed)
    labels = train_frame["label"].to_numpy()
    if cfg.context_classes in ("all", "same"):
        pool = np.arange(len(train_frame))
    else:
        unknown = [n for n in cfg.context_classes if n not in classes]
        if unknown:
            raise ValueError(f"generate.context_classes: unknown class(es) {', '.join(unknown)}")
        pool = np.flatnonzero(np.isin(labels, [classes.index(n) for n in cfg.context_classes]))
    if len(pool) == 0:
        raise ValueError("generate: no training images to use as skin context")
    # a list of strengths: each image draws one (Diff-Mix); a single value draws nothing, so its plans stay as they were
    strengths = [float(v) for v in cfg.strength] if isinstance(cfg.strength, list) else None
    rows = []
    for c, deficit in sorted(deficits.items()):
        own = np.flatnonzero(labels == c) if cfg.context_classes == "same" else pool
        if len(own) == 0:
            raise ValueError(f"generate: context_classes=same but class {classes[c]} has no training images")
        n = int(math.ceil(deficit * cfg.oversample))
        for i in range(n):
            ctx = int(rng.choice(own))
            rows.append({"file": f"images/{classes[c]}/syn_{classes[c]}_{i:05d}.png",
                         "mask_file": f"masks/{classes[c]}/syn_{classes[c]}_{i:05d}.png",
                         "class": classes[c], "label": c, "context_index": ctx,
                         "source_image": train_frame["image"].iloc[ctx], "source_class": classes[labels[ctx]],
                         "mask_source": cfg.mask_source,
                         "strength": float(cfg.strength) if strengths is None else strengths[rng.integers(len(strengths))],
                         "seed": int(rng.integers(2**31))})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def plan_masks(plan: pd.DataFrame, context_masks: np.ndarray | None, size: int, cfg) -> np.ndarray:
    """The (N, H, W) float mask of each planned image: 1 where the new lesion is drawn. ``context_masks`` are
    the prepared lesion masks (segmented, the dataset's ground truth, or ``data.masks_dir``'s files, all made
    square as the images were); ``user`` takes them as they are, ``auto`` dilates them."""
    masks = []
    for row in plan.itertuples():
        if row.mask_source == "auto":
            m = context_masks[row.context_index]
            m = ndimage.binary_dilation(m > 0.5, iterations=cfg.mask_dilation) if cfg.mask_dilation else m > 0.5
        elif row.mask_source == "user":
            m = context_masks[row.context_index] > 0.5
        else:
            m = random_shape_mask(size, np.random.default_rng(row.seed))
        masks.append(np.asarray(m, dtype=np.float32))
    return np.stack(masks) if masks else np.zeros((0, size, size), np.float32)


def synthesize(pipe: InpaintPipeline, plan: pd.DataFrame, context_images: np.ndarray, masks: np.ndarray,
               cfg) -> np.ndarray:
    """Inpaint every row of ``plan`` in memory; (N, H, W, 3) uint8.

    Each image's starting noise comes from its own row seed, so an image does not depend on the
    batch (or shard, or process) it was drawn in.
    """
    size = context_images.shape[1]
    result = np.zeros((len(plan), size, size, 3), np.uint8)
    strengths = plan["strength"].to_numpy(float) if "strength" in plan else np.full(len(plan), float(cfg.strength))
    for b in range(0, len(plan), cfg.batch_size):
        # one pipeline call per strength in the batch (each image's own strength, from its plan row)
        for s in np.unique(strengths[b:b + cfg.batch_size]):
            at = b + np.flatnonzero(strengths[b:b + cfg.batch_size] == s)
            rows = plan.iloc[at]
            images = to_model_range(context_images[rows["context_index"].to_numpy()])
            noise = torch.stack([torch.randn(pipe.noise_shape(images.shape[1:]),
                                             generator=torch.Generator().manual_seed(int(v))) for v in rows["seed"]])
            gen = torch.Generator().manual_seed(int(rows["seed"].iloc[0]))
            labels = torch.as_tensor(rows["label"].to_numpy(dtype=np.int64).copy())
            out = pipe(images, torch.from_numpy(masks[at])[:, None], labels,
                       guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.steps, strength=float(s),
                       noise=noise, generator=gen)
            result[at] = to_uint8(out)
    return result


def unet_subfolder(cfg) -> str:
    return "unet_ema" if cfg.use_ema else "unet"


def load_pipeline(ckpt_dir: Path, cfg, device: str = "cpu") -> InpaintPipeline:
    """The trained inpainter with the sampler ``cfg`` (a :class:`~tailfill.config.GenerateConfig`) asks for."""
    return InpaintPipeline.from_pretrained(ckpt_dir, unet_subfolder=unet_subfolder(cfg), scheduler=cfg.sampler,
                                           device=device, latent_clip=cfg.latent_clip)


def generate_in_memory(ckpt_dir: Path, train_frame: pd.DataFrame, train_images: np.ndarray,
                       train_masks: np.ndarray, classes: list, deficits: dict[int, int], cfg,
                       device: str = "cpu") -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Plan, masks and images of a whole pool without writing files: (plan, images, masks)."""
    plan = make_plan(train_frame, classes, deficits, cfg)
    masks = plan_masks(plan, train_masks, train_images.shape[1], cfg)
    return plan, synthesize(load_pipeline(ckpt_dir, cfg, device), plan, train_images, masks, cfg), masks


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / "shards" / f"shard_{k:05d}.csv"


def generate(plan: pd.DataFrame, context_images: np.ndarray, context_masks: np.ndarray | None, ckpt_dir: Path,
             out_dir: Path, cfg, device: str = "cpu", rank: int = 0,
             world: int = 1) -> pd.DataFrame:
    """Make every planned image not made yet; returns the full manifest once all shards exist.

    ``context_masks``: lesion masks of the context images (mask_source=auto). Shards are
    ``out_dir/shards/shard_NNNNN.csv``; shard k belongs to process ``k % world``.
    """
    out_dir = Path(out_dir)
    pipe = load_pipeline(ckpt_dir, cfg, device)
    weights = ckpt_dir / unet_subfolder(cfg) / "diffusion_pytorch_model.safetensors"
    provenance = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
                  "checkpoint": str(weights.relative_to(out_dir.parent)) if out_dir.parent in weights.parents
                  else str(weights), "weights_sha256": _file_digest(weights),
                  "space": "pixel" if pipe.vae is None else "latent"}
    if pipe.vae is not None:  # latent diffusion: the autoencoder is part of what made the image
        provenance["autoencoder_sha256"] = _file_digest(ckpt_dir / "vae" / "diffusion_pytorch_model.safetensors")
    size = context_images.shape[1]
    n_shards = math.ceil(len(plan) / cfg.shard_size)
    mine = list(range(rank, n_shards, world))
    bar = progress(len(mine), "generate", "shard", disable=rank != 0)
    for k in mine:
        shard_csv = shard_path(out_dir, k)
        bar.update(1)
        if shard_csv.is_file():
            continue
        t0 = time.time()
        part = plan.iloc[k * cfg.shard_size:(k + 1) * cfg.shard_size].reset_index(drop=True)
        masks = plan_masks(part, context_masks, size, cfg)
        outputs = synthesize(pipe, part, context_images, masks, cfg)
        for row, img, m in zip(part.itertuples(), outputs, masks):
            _save_png(out_dir / row.file, img)
            _save_png(out_dir / row.mask_file, (m * 255).astype(np.uint8))
        part = part.assign(**provenance)
        write_csv(shard_csv, part)  # last: marks the shard done
        log.debug("generate: shard %d/%d (%d images, %.1f s)", k + 1, n_shards, len(part), time.time() - t0)
    bar.close()
    manifest = collect_shards(out_dir, n_shards)
    if manifest is None:
        return pd.DataFrame()  # other processes still working
    if not n_shards:
        manifest = plan.assign(**provenance)
    if rank == 0:
        write_csv(out_dir / "manifest.csv", manifest)
    return manifest


def collect_shards(out_dir: Path, n_shards: int) -> pd.DataFrame | None:
    """The manifest from all ``n_shards`` shard tables, or None while any is missing."""
    parts = [shard_path(Path(out_dir), k) for k in range(n_shards)]
    if not all(p.is_file() for p in parts):
        return None
    return pd.concat([read_table(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def load_synthetic(out_dir: Path, manifest: pd.DataFrame) -> np.ndarray:
    """Read the generated images listed in ``manifest`` as an (N, H, W, 3) uint8 array."""
    from ..data.images import read_image
    from ..utils.io import safe_join

    return np.stack([read_image(safe_join(out_dir, f)) for f in manifest["file"]]) if len(manifest) else None
