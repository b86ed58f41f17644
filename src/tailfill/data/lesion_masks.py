"""Lesion masks a dataset ships (ground truth), read with the same geometry as its images.

- ``MaskFolder``: ``<image>.png``, ``<image>_segmentation.png`` (ISIC task 1, HAM10000's published
  segmentations) or ``<image>_mask.png`` in one folder
- ``PackedMasks``: an ``.npz`` with ``image_id`` (N,), ``masks_packed`` (N, H, ceil(W/8)) =
  ``np.packbits(mask, axis=-1)`` and ``shape`` (N, H, W), as ``../shared/data/ham10000`` packs them

Both return ``(masks, found)``: (N, size, size) uint8 masks (1 = lesion) made square by the same
``data.resize`` rule as the images, and which images had one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .images import ImageError, fit_square, open_image

MASK_NAMES = ("{}.png", "{}_segmentation.png", "{}_mask.png")


def square_mask(mask: np.ndarray | Image.Image, size: int, resize: str = "crop") -> np.ndarray:
    """A full-resolution binary mask as a (size, size) uint8 mask, by the images' resize rule."""
    img = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask, np.uint8) * 255)
    return (np.asarray(fit_square(img.convert("L"), size, resize, Image.Resampling.NEAREST)) > 127).astype(np.uint8)


class MaskFolder:
    """Mask files in one folder, one per image, found by name."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ImageError(f"mask folder not found: {self.folder}")
        self._names = {p.name for p in self.folder.iterdir()}

    def path(self, image_id: str) -> Path | None:
        for pattern in MASK_NAMES:
            if pattern.format(image_id) in self._names:
                return self.folder / pattern.format(image_id)
        return None

    def read(self, image_id: str, size: int, resize: str = "crop") -> np.ndarray:
        path = self.path(image_id)
        if path is None:
            raise ImageError(f"no mask for image {image_id} in {self.folder} (looked for "
                             + ", ".join(p.format(image_id) for p in MASK_NAMES) + ")")
        try:
            with open_image(path) as m:
                m.load()
                return square_mask(m, size, resize)
        except (OSError, SyntaxError) as e:
            raise ImageError(f"cannot read mask {path}: {e}") from None

    def load(self, image_ids, size: int, resize: str = "crop") -> tuple[np.ndarray, np.ndarray]:
        ids = list(image_ids)
        found = np.array([self.path(i) is not None for i in ids], bool)
        masks = np.zeros((len(ids), size, size), np.uint8)
        for k in np.flatnonzero(found):
            masks[k] = self.read(ids[k], size, resize)
        return masks, found


class PackedMasks:
    """Bit-packed masks in one ``.npz`` (see the module docstring); unpacked one image at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as z:
                missing = [k for k in ("image_id", "masks_packed", "shape") if k not in z.files]
                if missing:
                    raise ImageError(f"{self.path}: missing array(s) {', '.join(missing)}")
                self._ids = {str(i): k for k, i in enumerate(z["image_id"])}
                self._packed = z["masks_packed"]
                self._width = int(z["shape"][-1])
        except (OSError, ValueError) as e:
            raise ImageError(f"cannot read packed masks {self.path}: {e}") from None
        if self._packed.ndim != 3 or len(self._packed) != len(self._ids) or \
                self._packed.shape[2] * 8 < self._width:
            raise ImageError(f"{self.path}: masks_packed has shape {self._packed.shape}, expected "
                             f"({len(self._ids)}, H, {(self._width + 7) // 8})")

    def load(self, image_ids, size: int, resize: str = "crop") -> tuple[np.ndarray, np.ndarray]:
        ids = list(image_ids)
        found = np.array([i in self._ids for i in ids], bool)
        masks = np.zeros((len(ids), size, size), np.uint8)
        for k in np.flatnonzero(found):
            masks[k] = square_mask(self.full(ids[k]), size, resize)
        return masks, found

    def full(self, image_id: str) -> np.ndarray:
        """One image's mask at the packed resolution, (H, W) uint8."""
        return np.unpackbits(self._packed[self._ids[image_id]], axis=-1)[:, :self._width]
