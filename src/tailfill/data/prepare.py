"""From ``cfg.data`` to prepared data: load (a registry of dataset kinds), cache, split, segment.

    data = prepare_dataset(cfg.data, work_dir, seed)   # PreparedData
    x, y = data.split("train").images, data.split("train").labels

The pipeline's ``prepare`` stage saves what this returns; the benchmark uses it directly, so both
split, thin and segment the same way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..registry import Registry
from .cache import build_cache
from .demo import make_demo_dataset
from .rows import NpyRows, take_rows
from .ham10000 import load_ham10000
from .sources import LabeledImages, load_csv_dataset, load_image_folder, load_isic2019
from .splits import long_tail_subsample, make_splits

log = logging.getLogger(__name__)

DEMO_TRAIN_IMBALANCE = 20.0  # the demo's training split: NV to DF


def _demo(d, work_dir: Path, seed: int) -> LabeledImages:
    root = Path(d.root) if d.root else work_dir / "demo_data"
    make_demo_dataset(root, total=d.demo_images, imbalance=d.demo_imbalance, seed=seed)
    return load_isic2019(root, d.on_bad_image)


# data.kind -> loader(cfg.data, work_dir, seed) -> LabeledImages; register a dataset kind and data.kind accepts it
DATASETS = Registry("data.kind")
DATASETS.register("demo", _demo)
DATASETS.register("isic2019", lambda d, work_dir, seed: load_isic2019(d.root, d.on_bad_image, d.csv))
DATASETS.register("ham10000", lambda d, work_dir, seed: load_ham10000(d.root, d.on_bad_image, d.labels, d.csv))
DATASETS.register("folder", lambda d, work_dir, seed: load_image_folder(d.root))
DATASETS.register("csv", lambda d, work_dir, seed: load_csv_dataset(d.csv, d.root, on_bad_image=d.on_bad_image))


def load_dataset(d, work_dir: str | Path, seed: int = 0) -> LabeledImages:
    """The dataset ``d`` (a DataConfig) describes."""
    return DATASETS.get(d.kind)(d, Path(work_dir), seed)


@dataclass
class Split:
    """One split's cached images (N, H, W, 3 uint8), labels, rows of the table, and lesion masks (N, H, W
    uint8, 1 = lesion). Images and masks are ndarrays or :class:`~tailfill.data.rows.NpyRows` (on disk)."""

    images: np.ndarray | NpyRows
    labels: np.ndarray
    frame: pd.DataFrame
    masks: np.ndarray | NpyRows
    selector: np.ndarray  # boolean over all prepared images


@dataclass
class PreparedData:
    """Every image with its class, lesion and split (``frame``), the resized cache and lesion masks (uint8)."""

    frame: pd.DataFrame
    classes: list
    output_classes: list
    images: np.ndarray | NpyRows
    masks: np.ndarray | NpyRows
    root: str = ""  # where the dataset was read from

    def split(self, name: str) -> Split:
        """One split; its images and masks stay on disk when the prepared ones are (an index, not a copy)."""
        sel = (self.frame["split"] == name).to_numpy()
        return Split(take_rows(self.images, sel), self.frame["label"].to_numpy()[sel],
                     self.frame[sel].reset_index(drop=True), take_rows(self.masks, sel), sel)

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {c: int(((self.frame["split"] == s) & (self.frame["class"] == c)).sum()) for c in self.classes}
                for s in ("train", "val", "test")}


SPLITS = ("train", "val", "test", "unused")


def read_split_file(path: str | Path) -> pd.DataFrame:
    from ..utils.io import read_table
    from .sources import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.split_file not found: {path}")
    table = read_table(path)
    missing = [c for c in ("image", "split") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected image,split")
    return table.assign(split=table["split"].astype(str).str.strip().str.lower())


def apply_split_table(frame: pd.DataFrame, table: pd.DataFrame, classes: list, what) -> np.ndarray:
    """The split of every image of ``frame`` from a table (image, split), checked: known images, known split
    names, no lesion on two sides, every class in train and val. Images it does not list are unused."""
    from .sources import DataError

    bad = table[~table["split"].isin(SPLITS)]
    if len(bad):
        r = bad.index[0]
        raise DataError(f"{what}: row {r + 2} has split {bad['split'].iloc[0]!r}; use train, val, test or unused")
    dup = table["image"].duplicated()
    if dup.any():
        raise DataError(f"{what}: image {table['image'][dup].iloc[0]!r} is listed more than once")
    unknown = sorted(set(table["image"]) - set(frame["image"]))
    if unknown:
        raise DataError(f"{what}: {len(unknown)} image(s) are not in the dataset, e.g. {', '.join(unknown[:3])}")
    split = frame["image"].map(dict(zip(table["image"], table["split"]))).fillna("unused").to_numpy().astype(str)
    if (split == "unused").any():
        log.warning("%s: %d image(s) of the dataset are not listed; they are left unused", what,
                    int((split == "unused").sum()))
    used = split != "unused"
    sides = pd.DataFrame({"lesion": frame["lesion_id"].astype(str), "split": split})[used].groupby("lesion")["split"]
    mixed = sides.nunique()
    if (mixed > 1).any():
        lesion = mixed[mixed > 1].index[0]
        raise DataError(f"{what}: lesion {lesion} is on both sides ({', '.join(sorted(sides.unique()[lesion]))}); "
                        "a lesion's images must share a split")
    labels = frame["label"].to_numpy()
    for name in ("train", "val"):
        missing = [classes[c] for c in range(len(classes)) if not np.any((labels == c) & (split == name))]
        if missing:
            raise DataError(f"{what}: class(es) {', '.join(missing)} have no image in the {name} split")
    return split


def check_folds(frame: pd.DataFrame, classes: list, folds: int) -> None:
    """k-fold CV needs at least k lesions of every class: each fold's test split then holds one of each."""
    from .sources import DataError

    lesions = frame.groupby("label")["lesion_id"].nunique().reindex(range(len(classes)), fill_value=0)
    fewest = int(lesions.idxmin())
    if lesions[fewest] < folds:
        raise DataError(f"data.folds={folds}: class {classes[fewest]} has only {int(lesions[fewest])} lesion(s), and "
                        f"every fold needs one of each class; use data.folds <= {max(2, int(lesions[fewest]))}")


def lesion_masks(d, dataset: LabeledImages, frame: pd.DataFrame, images, segment) -> np.ndarray:
    """Every image's lesion mask (N, H, W uint8): ``data.masks_dir``'s files (one per image), else the masks
    the dataset ships (``data.dataset_masks``; an image without one is segmented), else ``segment(images)``."""
    from .lesion_masks import MaskFolder

    if d.masks_dir:
        folder = MaskFolder(d.masks_dir)
        return np.stack([folder.read(i, d.image_size, d.resize) for i in frame["image"]])
    if not (d.dataset_masks and dataset.masks is not None):
        return segment(images)
    masks, found = dataset.masks.load(frame["image"], d.image_size, d.resize)
    log.info("lesion masks: the dataset's own for %d of %d images%s", int(found.sum()), len(found),
             "" if found.all() else "; the rest segmented")
    if not found.all():
        masks[~found] = segment(take_rows(images, ~found))
    return masks


def prepare_dataset(d, work_dir: str | Path, seed: int = 0) -> PreparedData:
    """Load, cap, cache, split (grouped by lesion), thin the training split, and find the lesion masks."""
    from .masks import segment_batch

    work_dir = Path(work_dir)
    dataset = load_dataset(d, work_dir, seed)
    frame = dataset.frame.copy()
    if d.max_per_class:
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(frame), bool)
        for c in range(len(dataset.classes)):
            idx = np.flatnonzero(frame["label"].to_numpy() == c)
            keep[rng.permutation(idx)[: d.max_per_class]] = True
        frame = frame[keep].reset_index(drop=True)
    images, ok = build_cache([dataset.root / p for p in frame["path"]], d.image_size,
                             Path(d.cache_dir) if d.cache_dir else work_dir / "cache", d.workers, d.on_bad_image,
                             d.resize)
    if not ok.all():
        frame, images = frame[ok].reset_index(drop=True), take_rows(images, ok)
    labels, groups = frame["label"].to_numpy(), frame["lesion_id"].to_numpy()
    if d.split_file:
        split = apply_split_table(frame, read_split_file(d.split_file), dataset.classes, d.split_file)
    elif "split" in frame.columns:
        log.info("using the split column of the dataset CSV (train/val/test)")
        split = apply_split_table(frame, frame[["image", "split"]], dataset.classes, "the dataset CSV's split column")
    else:
        if d.folds:
            check_folds(frame, dataset.classes, d.folds)
        split = make_splits(labels, groups, d.val_fraction, d.test_fraction, seed, d.val_per_class, d.test_per_class,
                            d.folds, d.fold)
        for c, name in enumerate(dataset.classes):
            for side in ("train", "val", "test"):
                if not np.any((labels == c) & (split == side)):
                    log.warning("class %s has no image in the %s split", name, side)
    ratio = d.imbalance_ratio if d.imbalance_ratio is not None else (DEMO_TRAIN_IMBALANCE if d.kind == "demo" else None)
    if ratio:
        keep = long_tail_subsample(labels, split, ratio, seed, groups=groups)
        split = np.where(keep, split, "unused")
    masks = lesion_masks(d, dataset, frame, images, segment_batch)
    frame["class"] = [dataset.classes[i] for i in labels]
    frame["split"] = split
    return PreparedData(frame, list(dataset.classes), list(dataset.output_classes), images, masks, str(dataset.root))
