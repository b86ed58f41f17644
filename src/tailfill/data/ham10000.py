"""HAM10000 as published: ``HAM10000_metadata.csv``, the image folders, the lesion segmentations, and its
labels as ISIC 2019's 8 classes or HAM's own 7 ``dx`` classes."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .sources import (IMAGE_SUFFIXES, ISIC2019_CLASSES, DataError, LabeledImages, _finish, _read_csv,
                      _resolve_missing)

log = logging.getLogger(__name__)

HAM_METADATA = "HAM10000_metadata.csv"
HAM_IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images")
HAM_ISIC_LABELS = "isic2019_labels.csv"    # image_id,isic2019_label (this project's shared copy ships it)
HAM_MASK_DIRS = ("HAM10000_segmentations_lesion_tschandl", "segmentations", "masks")
HAM_DX_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]  # HAM's own dx (akiec = AK and SCC)
HAM_LABELS = ("isic2019", "dx")


def _ham_isic_labels(root: Path, ground_truth: str | None) -> tuple[pd.Series, str]:
    """Each HAM image's ISIC 2019 class name, from ``ground_truth`` (an ISIC 2019 ground-truth CSV, one-hot,
    or a table image_id,isic2019_label) or ``root/isic2019_labels.csv``."""
    path = Path(ground_truth) if ground_truth else root / HAM_ISIC_LABELS
    if not path.is_file():
        what = f"{path}" if ground_truth else f"{root / HAM_ISIC_LABELS} or an ISIC 2019 ground truth in data.csv"
        raise DataError(f"HAM10000 with data.labels=isic2019 needs ISIC 2019 labels: {what} not found "
                        "(or set data.labels=dx for HAM's own 7 classes)")
    table = _read_csv(path)
    if {"image_id", "isic2019_label"} <= set(table.columns):
        names = table["isic2019_label"].astype(str).str.strip()
        unknown = ~names.isin(ISIC2019_CLASSES)
        if unknown.any():
            r = int(np.flatnonzero(unknown)[0])
            raise DataError(f"{path}: row {r + 2} has unknown ISIC 2019 label {names.iloc[r]!r}; known: "
                            + ", ".join(ISIC2019_CLASSES))
        return pd.Series(names.to_numpy(), index=table["image_id"].astype(str).str.strip()), str(path)
    if "image" in table.columns and set(ISIC2019_CLASSES[:-1]) <= set(table.columns):
        onehot = table[ISIC2019_CLASSES[:-1]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        bad = (onehot == 1.0).sum(axis=1) != 1
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: row {r + 2} ({table['image'].iloc[r]}) does not have exactly one label equal to 1")
        names = np.array(ISIC2019_CLASSES[:-1])[onehot.argmax(axis=1)]
        ids = table["image"].astype(str).str.strip().str.replace("_downsampled", "", regex=False)
        return pd.Series(names, index=ids), str(path)
    raise DataError(f"{path}: expected columns image_id,isic2019_label or an ISIC 2019 ground truth "
                    f"(image,{','.join(ISIC2019_CLASSES)}); found {','.join(map(str, table.columns))}")


def _ham_masks(root: Path):
    """The lesion masks shipped beside the images: a segmentation folder, or packed ``masks_*.npz``."""
    from .lesion_masks import MaskFolder, PackedMasks

    for name in HAM_MASK_DIRS:
        if (root / name).is_dir():
            return MaskFolder(root / name)
    packed = sorted(root.glob("masks_*.npz"))
    return PackedMasks(packed[0]) if packed else None


def load_ham10000(root: str | Path, on_bad_image: str = "error", labels: str = "isic2019",
                  ground_truth: str | None = None) -> LabeledImages:
    """Load HAM10000 as published: ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,...``) with the images in
    ``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/`` (or one ``images/`` folder).

    ``labels``: ``isic2019`` (ISIC 2019's 8 classes, UNK as an output column, from ``isic2019_labels.csv`` or
    the ISIC 2019 ground truth ``ground_truth``; ISIC splits HAM's akiec into AK and SCC) or ``dx`` (HAM's
    7 classes). Splits group by ``lesion_id``. The published lesion segmentations
    (``HAM10000_segmentations_lesion_tschandl/<id>_segmentation.png``) or packed ``masks_*.npz`` become the
    dataset's masks.
    """
    root = Path(root)
    meta_path = root / HAM_METADATA
    meta = _read_csv(meta_path)
    missing = [c for c in ("lesion_id", "image_id", "dx") if c not in meta.columns]
    if missing:
        raise DataError(f"{meta_path}: missing column(s) {', '.join(missing)}; expected "
                        f"lesion_id,image_id,dx,... (found {','.join(map(str, meta.columns))})")
    if labels not in HAM_LABELS:
        raise DataError(f"data.labels={labels!r}; choose from {', '.join(HAM_LABELS)}")
    for col in ("image_id", "lesion_id"):
        empty = meta[col].isna() | (meta[col].astype(str).str.strip() == "")
        if empty.any():
            raise DataError(f"{meta_path}: row {int(np.flatnonzero(empty)[0]) + 2} has no {col}")
    ids = meta["image_id"].astype(str).str.strip()
    dirs = [d for d in HAM_IMAGE_DIRS if (root / d).is_dir()]
    if not dirs:
        raise DataError(f"{root}: no image folder; expected one of {', '.join(HAM_IMAGE_DIRS)}")
    on_disk = {}
    for d in dirs:
        for p in (root / d).iterdir():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                on_disk.setdefault(p.stem, f"{d}/{p.name}")
    frame = pd.DataFrame({"image": ids, "lesion_id": meta["lesion_id"].astype(str).str.strip(),
                          "path": [on_disk.get(i, f"{dirs[0]}/{i}.jpg") for i in ids]})
    if labels == "dx":
        classes, names = list(HAM_DX_CLASSES), meta["dx"].astype(str).str.strip().str.lower()
        unknown = ~names.isin(classes)
        if unknown.any():
            r = int(np.flatnonzero(unknown)[0])
            raise DataError(f"{meta_path}: row {r + 2} ({ids.iloc[r]}) has unknown dx {names.iloc[r]!r}; known: "
                            + ", ".join(classes))
        what = str(meta_path)
    else:
        classes = list(ISIC2019_CLASSES)
        table, what = _ham_isic_labels(root, ground_truth)
        names = ids.map(table.groupby(level=0).first())
        unlabelled = names.isna().to_numpy()
        if unlabelled.any():
            msg = (f"{what}: {int(unlabelled.sum())} image(s) of {meta_path.name} have no ISIC 2019 label, e.g. "
                   + ", ".join(ids[unlabelled].head(3)))
            if on_bad_image != "skip":
                raise DataError(msg + " (set data.on_bad_image=skip to leave them out)")
            log.warning("%s; skipping them", msg)
            frame, names = frame[~unlabelled].reset_index(drop=True), names[~unlabelled].reset_index(drop=True)
    frame["label"] = names.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    frame = _resolve_missing(root, frame, on_bad_image, meta_path.name)
    # a subset (an external test set) may lack a class; ISIC's UNK never has images
    return _finish(root, frame, classes, what, drop_empty=tuple(classes), masks=_ham_masks(root))
