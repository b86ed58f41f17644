"""Decode one image file into a square uint8 RGB array, whatever its mode or size."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# larger images are refused as bad images before they are decoded (a decompression bomb, or a scan that would
# take gigabytes): 64 megapixels is over twice the largest ISIC archive image (6,688 x 4,439)
MAX_IMAGE_PIXELS = 64_000_000
# PIL's own warning fires above 89 megapixels, which tailfill refuses first with a named error
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """An image file is missing, corrupt or unreadable; the message names the file."""


# how a non-square image becomes the square cache (``data.resize``); its lesion mask goes the same way
RESIZE_MODES = ("crop", "squash", "pad")


def fit_square(img: Image.Image, size: int, resize: str = "crop",
               resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """``img`` as a ``size`` x ``size`` image: ``crop`` keeps the centre square (the long side loses its
    ends), ``squash`` scales each side on its own (the lesion's aspect changes), ``pad`` fits the long side
    and fills the short side's ends with black, as a dermoscope's vignette is."""
    if resize == "crop":
        return ImageOps.fit(img, (size, size), resample)
    if resize == "squash":
        return img.resize((size, size), resample)
    if resize == "pad":
        fitted = ImageOps.contain(img, (size, size), resample)
        canvas = Image.new(img.mode, (size, size), 0)
        canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
        return canvas
    raise ValueError(f"unknown resize mode {resize!r}; choose from {', '.join(RESIZE_MODES)}")


def open_image(path: Path) -> Image.Image:
    """``Image.open`` (lazy: only the header is read) that refuses an image over ``MAX_IMAGE_PIXELS``."""
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError(f"cannot read image {path}: over tailfill's limit of {MAX_IMAGE_PIXELS:,} pixels "
                         f"(a decompression bomb?): {e}") from None
    if img.width * img.height > MAX_IMAGE_PIXELS:
        img.close()
        raise ImageError(f"cannot read image {path}: {img.width} x {img.height} pixels is over tailfill's limit "
                         f"of {MAX_IMAGE_PIXELS:,} (a decompression bomb?); resize it first")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float greyscale: stretch the real range to 8 bits instead of clipping at 255
        a = np.asarray(img, dtype=np.float64)
        lo, hi = np.nanmin(a), np.nanmax(a)
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def read_image(path: str | Path, size: int | None = None, resize: str = "crop") -> np.ndarray:
    """Read ``path`` as an (H, W, 3) uint8 array; with ``size``, make it size x size by ``resize``
    (:func:`fit_square`: centre crop by default).

    Raises ImageError naming the file for a missing, truncated or non-image file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with open_image(path) as img:
            if size is not None and img.format == "JPEG":
                img.draft("RGB", (2 * size, 2 * size))  # decode big JPEGs at reduced scale: much faster
            img = ImageOps.exif_transpose(img)
            img.load()
            img = _to_rgb(img)
            if size is not None:
                img = fit_square(img, size, resize)
            return np.asarray(img, dtype=np.uint8).copy()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None
