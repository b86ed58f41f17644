"""Lesion masks: automatic segmentation and random shapes for training (files: data.lesion_masks).

Masks are binary, 1 where the lesion is (the region to inpaint): float32 from the functions that make one
mask, uint8 for a whole dataset's (``segment_batch``, the prepared masks), converted per batch.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage



def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=128)
    p = hist.astype(np.float64) / max(1, hist.sum())
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centers)
    between = (m0[-1] * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(centers[int(np.argmax(between))])


def fallback_mask(size: int, radius: float = 0.3) -> np.ndarray:
    """A centred disc: where dermoscopy puts the lesion when segmentation fails."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    return (np.hypot(yy, xx) <= radius).astype(np.float32)


def segment_lesion(image: np.ndarray, dilation: int = 0) -> np.ndarray:
    """Segment the lesion in an (H, W, 3) uint8 dermoscopy image.

    Lesions differ from skin mostly by being darker and more saturated: threshold that
    contrast with Otsu inside the central field (away from the dark dermoscope vignette), clean
    up with morphology, keep the component nearest the centre, fill holes. Falls back to a
    centred disc when nothing plausible (1-70 % of the image) is found.
    """
    h, w = image.shape[:2]
    rgb = image.astype(np.float32) / 255.0
    # darkness + redness/saturation contrast; blurred so hair and texture don't fragment it
    feature = (1 - rgb.mean(axis=2)) + 0.5 * (rgb.max(axis=2) - rgb.min(axis=2))
    feature = ndimage.gaussian_filter(feature, sigma=max(0.5, h / 64))
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - (h - 1) / 2) / h, (xx - (w - 1) / 2) / w)
    field = r < 0.38
    if feature[field].std() < 0.01:  # no contrast: nothing to segment
        return fallback_mask(h)
    thr = _otsu(feature[field])
    mask = (feature > thr) & field
    mask = ndimage.binary_opening(mask, iterations=max(1, h // 64))
    mask = ndimage.binary_closing(mask, iterations=max(1, h // 32))
    labels, n = ndimage.label(mask)
    if n == 0:
        return fallback_mask(h)
    centres = ndimage.center_of_mass(mask, labels, range(1, n + 1))
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    score = [s / (1 + 20 * np.hypot((cy - h / 2) / h, (cx - w / 2) / w)) for (cy, cx), s in zip(centres, sizes)]
    mask = ndimage.binary_fill_holes(labels == (int(np.argmax(score)) + 1))
    frac = mask.mean()
    if not 0.01 <= frac <= 0.7:
        return fallback_mask(h)
    if dilation:
        mask = ndimage.binary_dilation(mask, iterations=dilation)
    return mask.astype(np.float32)


def segment_batch(images: np.ndarray, dilation: int = 0, chunk: int = 256) -> np.ndarray:
    """``segment_lesion`` over (N, H, W, 3) images (an ndarray or rows on disk, read ``chunk`` at a time);
    returns (N, H, W) uint8, 1 = lesion: a quarter of float32, and masks are binary anyway."""
    out = np.zeros(images.shape[:3], np.uint8)  # filled in place: no list of masks plus a stacked copy
    for start in range(0, len(images), chunk):
        for i, image in enumerate(np.asarray(images[start:start + chunk]), start):
            out[i] = segment_lesion(image, dilation)
    return out


def random_shape_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random blob, ellipse or brush stroke covering roughly 5-50 % of the image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(3)
    if kind == 0:  # irregular blob
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ang = np.arctan2(yy - cy, xx - cx)
        r = rng.uniform(0.12, 0.35) * (1 + sum(0.15 * rng.uniform() * np.cos(k * ang + rng.uniform(0, 6.3))
                                              for k in range(2, 6)))
        mask = np.hypot(yy - cy, xx - cx) < r
    elif kind == 1:  # rotated ellipse
        cy, cx = rng.uniform(0.25, 0.75, 2)
        a, b, t = rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.35), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        mask = (u / a) ** 2 + (v / b) ** 2 < 1
    else:  # brush stroke: thick random walk
        mask = np.zeros((size, size), bool)
        y, x = rng.uniform(0.2, 0.8, 2)
        width = rng.uniform(0.05, 0.12)
        for _ in range(rng.integers(4, 9)):
            ny, nx = np.clip([y, x] + rng.normal(0, 0.15, 2), 0.05, 0.95)
            for s in np.linspace(0, 1, 8):
                py, px = y + s * (ny - y), x + s * (nx - x)
                mask |= np.hypot(yy - py, xx - px) < width
            y, x = ny, nx
    return mask.astype(np.float32)
