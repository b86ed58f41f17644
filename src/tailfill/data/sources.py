"""Dataset loaders. Each returns a ``LabeledImages``: one row per image with its class and lesion.

- ``load_isic2019``: the official ISIC 2019 training layout
- ``load_image_folder``: ``root/<class name>/<image>``
- ``load_csv_dataset``: a CSV with ``image,label`` (and optional ``lesion_id``) columns
- ``load_ham10000`` (in :mod:`.ham10000`): HAM10000 as published (metadata, image folders, lesion masks)

Every loader confines its paths to the data root: ``..``, absolute paths and links that point outside it
are refused, naming the row or file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.io import read_table, safe_join

log = logging.getLogger(__name__)

ISIC2019_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
ISIC2019_GT = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_META = "ISIC_2019_Training_Metadata.csv"
ISIC2019_IMAGES = "ISIC_2019_Training_Input"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """The dataset on disk does not match what the loader expects; the message says where."""


@dataclass
class LabeledImages:
    """Images with one class each.

    ``frame`` columns: ``image`` (id), ``path`` (relative to ``root``), ``label`` (index into
    ``classes``) and ``lesion_id`` (images of one lesion share it; defaults to the image id).
    ``output_classes`` are the columns of a submission file (ISIC: the 9 official ones, UNK included).
    """

    root: Path
    frame: pd.DataFrame
    classes: list
    output_classes: list = field(default_factory=list)
    masks: object = None  # the dataset's own lesion masks (lesion_masks.MaskFolder / PackedMasks), if it ships them

    def __post_init__(self):
        if not self.output_classes:
            self.output_classes = list(self.classes)

    def __len__(self) -> int:
        return len(self.frame)

    def paths(self) -> list[Path]:
        return [self.root / p for p in self.frame["path"]]

    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=np.int64)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.labels(), minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, c)}

    def subset(self, mask) -> "LabeledImages":
        return LabeledImages(self.root, self.frame[np.asarray(mask)].reset_index(drop=True), self.classes,
                             self.output_classes, self.masks)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        return read_table(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse CSV: {e}") from None


def _resolve_missing(root: Path, frame: pd.DataFrame, on_bad_image: str, what: str) -> pd.DataFrame:
    _confine(root, frame, what)  # an escaping path is refused as such, whether or not its target exists
    exists = np.array([(root / p).is_file() for p in frame["path"]], dtype=bool)
    if exists.all():
        return frame
    missing = frame.loc[~exists, "path"].tolist()
    msg = (f"{len(missing)} image file(s) listed in {what} are missing under {root}, e.g. "
           + ", ".join(missing[:5]))
    if on_bad_image == "skip":
        log.warning("%s; skipping them (data.on_bad_image=skip)", msg)
        return frame[exists].reset_index(drop=True)
    raise DataError(msg + " (set data.on_bad_image=skip to leave them out)")


def _confine(root: Path, frame: pd.DataFrame, what: str) -> None:
    """Refuse any image path outside ``root``: ``..``, absolute, or a link (file or folder) pointing out."""
    for r, p in enumerate(frame["path"]):
        try:
            safe_join(root, p)
        except ValueError as e:
            raise DataError(f"{what}: image {frame['image'].iloc[r]!r}: {e}") from None


def _finish(root: Path, frame: pd.DataFrame, classes: list, what: str, drop_empty: tuple = (),
            masks=None) -> LabeledImages:
    counts = np.bincount(frame["label"].to_numpy(dtype=np.int64), minlength=len(classes))
    keep = [i for i, n in enumerate(counts) if n > 0 or classes[i] not in drop_empty]
    empty = [classes[i] for i in keep if counts[i] == 0]
    if empty:
        raise DataError(f"{what}: class(es) {', '.join(empty)} have no images; remove them from the class list "
                        "or add images")
    if len(keep) < 2:
        raise DataError(f"{what}: need at least two classes with images, found {len(keep)}")
    remap = {old: new for new, old in enumerate(keep)}
    frame = frame.assign(label=frame["label"].map(remap).astype(np.int64))
    if "lesion_id" not in frame:
        frame["lesion_id"] = frame["image"]
    frame["lesion_id"] = frame["lesion_id"].fillna(frame["image"]).astype(str)
    dup = frame["image"].duplicated()
    if dup.any():
        raise DataError(f"{what}: image id {frame.loc[dup, 'image'].iloc[0]!r} is listed more than once")
    return LabeledImages(root, frame[["image", "path", "label", "lesion_id"]].reset_index(drop=True),
                         [classes[i] for i in keep], list(classes), masks)


def load_isic2019(root: str | Path, on_bad_image: str = "error", ground_truth: str | None = None) -> LabeledImages:
    """Load ISIC 2019 training data from its official layout under ``root``.

    Reads ``ISIC_2019_Training_GroundTruth.csv`` (one-hot ``image,MEL,...,SCC,UNK``), the optional
    ``ISIC_2019_Training_Metadata.csv`` for ``lesion_id``, and finds each image in
    ``ISIC_2019_Training_Input/`` (also as ``<id>_downsampled.jpg`` or without that suffix).
    UNK, which has no training images, is kept as an output column only.
    """
    root = Path(root)
    gt_path = Path(ground_truth) if ground_truth else root / ISIC2019_GT
    gt = _read_csv(gt_path)
    needed = ["image"] + [c for c in ISIC2019_CLASSES if c != "UNK"]
    missing = [c for c in needed if c not in gt.columns]
    if missing:
        raise DataError(f"{gt_path}: missing column(s) {', '.join(missing)}; expected "
                        f"{','.join(['image'] + ISIC2019_CLASSES)} (found {','.join(map(str, gt.columns))})")
    classes = [c for c in ISIC2019_CLASSES if c in gt.columns]
    onehot = gt[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(onehot).all(axis=1) | ~np.isin(onehot, (0.0, 1.0)).all(axis=1)
    positives = (onehot == 1.0).sum(axis=1)
    bad |= positives != 1
    if bad.any():
        rows = np.flatnonzero(bad)
        details = [f"row {r + 2} ({gt['image'].iloc[r]}): {int(positives[r])} labels set" for r in rows[:5]]
        msg = f"{gt_path}: {len(rows)} row(s) do not have exactly one label equal to 1: " + "; ".join(details)
        if on_bad_image != "skip":
            raise DataError(msg + " (set data.on_bad_image=skip to leave them out)")
        log.warning("%s; skipping them", msg)
    gt = gt[~bad].reset_index(drop=True)
    onehot = onehot[~bad]
    if gt["image"].isna().any():
        raise DataError(f"{gt_path}: row {int(np.flatnonzero(gt['image'].isna())[0]) + 2} has no image id")
    frame = pd.DataFrame({"image": gt["image"].astype(str).str.strip(), "label": onehot.argmax(axis=1)})

    images_dir = root / ISIC2019_IMAGES
    if not images_dir.is_dir():
        raise DataError(f"image folder not found: {images_dir}")
    on_disk = {p.name for p in images_dir.iterdir()}

    def locate(image_id: str) -> str:
        stem = image_id[:-len("_downsampled")] if image_id.endswith("_downsampled") else image_id
        for name in (image_id + ".jpg", stem + ".jpg", stem + "_downsampled.jpg", image_id + ".png", image_id):
            if name in on_disk:
                return f"{ISIC2019_IMAGES}/{name}"
        return f"{ISIC2019_IMAGES}/{image_id}.jpg"

    frame["path"] = [locate(i) for i in frame["image"]]
    meta_path = root / ISIC2019_META
    if meta_path.is_file():
        meta = _read_csv(meta_path)
        if "image" not in meta.columns or "lesion_id" not in meta.columns:
            raise DataError(f"{meta_path}: needs columns image and lesion_id (found {','.join(meta.columns)})")
        frame = frame.merge(meta[["image", "lesion_id"]].drop_duplicates("image"), on="image", how="left")
    frame = _resolve_missing(root, frame, on_bad_image, gt_path.name)
    return _finish(root, frame, classes, str(gt_path), drop_empty=("UNK",))


def load_image_folder(root: str | Path, classes: list | None = None) -> LabeledImages:
    """Load ``root/<class>/<image>``; class order is ``classes`` or the sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = list(classes) if classes else folders
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise DataError(f"{root}: folder(s) {', '.join(unknown)} are not in the class list {classes}")
    rows = []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        # id = relative path without suffix: the same file name may appear in two class folders
        rows += [{"image": p.relative_to(root).with_suffix("").as_posix(), "path": str(p.relative_to(root)),
                  "label": label} for p in files]
    frame = pd.DataFrame(rows, columns=["image", "path", "label"])
    _confine(root, frame, str(root))  # files found by listing exist; a link among them may point outside
    return _finish(root, frame, classes, str(root))


def load_csv_dataset(csv: str | Path, root: str | Path | None = None, classes: list | None = None,
                     on_bad_image: str = "error") -> LabeledImages:
    """Load a CSV with ``image`` (path relative to ``root``) and ``label`` (class name) columns."""
    csv = Path(csv)
    root = Path(root) if root else csv.parent
    table = _read_csv(csv)
    missing = [c for c in ("image", "label") if c not in table.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {', '.join(missing)} (found {','.join(map(str, table.columns))})")
    # "NV " and "NV" are one class, " a.jpg" the file a.jpg: spreadsheets leave such spaces
    names = table["label"].astype(str).str.strip()
    empty = table["label"].isna().to_numpy() | (names == "").to_numpy()
    if empty.any():
        raise DataError(f"{csv}: row {int(np.flatnonzero(empty)[0]) + 2} has no label")
    classes = list(classes) if classes else sorted(names.unique())
    unknown = ~names.isin(classes)
    if unknown.any():
        r = int(np.flatnonzero(unknown)[0])
        raise DataError(f"{csv}: row {r + 2} has unknown label {names.iloc[r]!r}; known: {', '.join(classes)}")
    paths = []
    for r, (p, missing) in enumerate(zip(table["image"].astype(str).str.strip(), table["image"].isna())):
        if missing or not p:
            raise DataError(f"{csv}: row {r + 2} has no image")
        try:
            safe_join(root, p)
        except ValueError as e:
            raise DataError(f"{csv}: row {r + 2}: {e}") from None
        paths.append(p)
    frame = pd.DataFrame({"image": [Path(p).with_suffix("").as_posix() for p in paths], "path": paths,
                          "label": names.map({c: i for i, c in enumerate(classes)})})
    if "lesion_id" in table.columns:
        frame["lesion_id"] = table["lesion_id"].where(table["lesion_id"].isna(), table["lesion_id"].astype(str).str.strip())
    if "split" in table.columns:  # the user's own split: used as given (see data.prepare.apply_split_table)
        frame["split"] = table["split"].astype(str).str.strip().str.lower()
    frame = _resolve_missing(root, frame, on_bad_image, csv.name)
    out = _finish(root, frame, classes, str(csv))
    if "split" in frame.columns:
        out.frame["split"] = frame.set_index("image").loc[out.frame["image"], "split"].to_numpy()
    return out
