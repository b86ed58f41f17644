"""A small imbalanced, dermoscopy-like dataset drawn from scratch, so the demo needs no download.

The whole set is mildly imbalanced (4:1 by default) so that validation and test splits keep enough
tail images to measure; the demo run then thins its *training* split to a 20:1 long tail.

Each image is skin (tone, texture, hairs, a dermoscope vignette) with one lesion whose shape,
colours and texture depend on the class, loosely after the ISIC 2019 classes. Nuisance factors
are shared by all classes, so telling classes apart takes looking at the lesion.
The set is written in the official ISIC 2019 layout, so the demo exercises the real loader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..utils.io import atomic_path, write_csv
from .splits import geometric_weights
from .sources import ISIC2019_CLASSES, ISIC2019_GT, ISIC2019_IMAGES, ISIC2019_META

# head to tail, as in ISIC 2019 (NV 12,875 ... DF 239)
DEMO_ORDER = ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF"]

# per class: base lesion colour (RGB 0-1), radius range (fraction of image), border irregularity
STYLE = {
    "NV": ((0.45, 0.28, 0.17), (0.16, 0.24), 0.05),
    "MEL": ((0.30, 0.18, 0.12), (0.20, 0.30), 0.22),
    "BCC": ((0.80, 0.52, 0.52), (0.15, 0.24), 0.10),
    "BKL": ((0.58, 0.42, 0.28), (0.17, 0.27), 0.08),
    "AK": ((0.78, 0.45, 0.40), (0.15, 0.26), 0.16),
    "SCC": ((0.85, 0.62, 0.58), (0.16, 0.26), 0.18),
    "VASC": ((0.62, 0.16, 0.28), (0.12, 0.20), 0.08),
    "DF": ((0.58, 0.40, 0.30), (0.10, 0.17), 0.05),
}


def _smooth_noise(rng, size, scale):
    """Low-frequency noise: coarse random grid upsampled bilinearly."""
    coarse = rng.standard_normal((scale, scale)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


def draw_lesion_image(cls: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Draw one (size, size, 3) uint8 image of class ``cls``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tone = rng.uniform(0, 1)
    skin = np.array([0.92, 0.74, 0.64]) * (1 - 0.35 * tone) + np.array([0.05, 0.02, 0.0]) * tone
    img = skin[None, None, :] * (1 + 0.05 * _smooth_noise(rng, size, 6)[..., None])
    img += 0.015 * rng.standard_normal((size, size, 3))

    # lesion support: a blob with a Fourier-perturbed border
    cy, cx = 0.5 + rng.uniform(-0.1, 0.1, 2)
    base_col, (rmin, rmax), irregular = STYLE[cls]
    r0 = rng.uniform(rmin, rmax)
    ang = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot((yy - cy) / rng.uniform(0.8, 1.2), xx - cx)
    border = r0 * (1 + sum(irregular * rng.uniform(0, 1) / k * np.cos(k * ang + rng.uniform(0, 6.3)) for k in range(2, 7)))
    inside = np.clip((border - dist) / 0.02, 0, 1)  # soft edge
    rel = np.clip(dist / np.maximum(border, 1e-3), 0, 1.5)
    # how typical this lesion is: atypical ones drift to a plain brown blob, so classes overlap
    strength = rng.uniform(0.2, 1.0)
    col = (strength * np.array(base_col) + (1 - strength) * np.array(STYLE["NV"][0])) * rng.uniform(0.85, 1.15)
    lesion = np.broadcast_to(col, img.shape).copy()
    plain = lesion * (1 + 0.08 * _smooth_noise(rng, size, 10)[..., None])
    tex = _smooth_noise(rng, size, 10)[..., None]

    if cls == "NV":  # regular, uniform brown, faint network
        lesion *= 1 + 0.08 * tex
    elif cls == "MEL":  # several colours: black, blue-grey, brown patches; irregular
        patches = _smooth_noise(rng, size, 5)
        lesion = np.where((patches > 0.3)[..., None], np.array([0.12, 0.08, 0.08]), lesion)
        lesion = np.where((patches < -0.6)[..., None], np.array([0.35, 0.40, 0.50]), lesion)
        lesion *= 1 + 0.15 * tex
    elif cls == "BCC":  # pink, pearly, branching red vessels
        lesion = lesion * (1 + 0.1 * tex) + 0.1 * (1 - rel[..., None])
        for _ in range(rng.integers(3, 6)):
            a, off = rng.uniform(0, np.pi), rng.uniform(-0.1, 0.1)
            line = np.abs((xx - cx) * np.sin(a) - (yy - cy) * np.cos(a) - off) < 0.012
            lesion[line] = [0.70, 0.10, 0.12]
    elif cls == "BKL":  # waxy light brown with bright milia-like dots
        lesion *= 1 + 0.12 * tex
        dots = rng.uniform(0, 1, (size, size)) > 0.975
        lesion[dots] = [0.90, 0.85, 0.70]
    elif cls == "AK":  # red, rough white scale, ill-defined border
        lesion *= 1 + 0.1 * tex
        scale_ = _smooth_noise(rng, size, 16) > 0.8
        lesion[scale_] = [0.92, 0.88, 0.85]
        inside = np.clip((border - dist) / 0.06, 0, 1)
    elif cls == "SCC":  # pink-white, yellow keratin centre, red rim
        lesion = np.where((rel < 0.45)[..., None], np.array([0.92, 0.85, 0.55]), lesion)
        lesion = np.where(((rel > 0.8) & (rel < 1.0))[..., None], np.array([0.75, 0.25, 0.25]), lesion)
        lesion *= 1 + 0.08 * tex
    elif cls == "VASC":  # red-purple lacunae
        lesion *= 1 + 0.1 * tex
        for _ in range(rng.integers(3, 7)):
            ly, lx = cy + rng.uniform(-0.6, 0.6) * r0, cx + rng.uniform(-0.6, 0.6) * r0
            lac = np.hypot(yy - ly, xx - lx) < rng.uniform(0.03, 0.06)
            lesion[lac] = [0.40, 0.05, 0.20]
    elif cls == "DF":  # light brown ring with a white scar-like centre
        lesion = np.where((rel < 0.45)[..., None], np.array([0.93, 0.88, 0.82]), lesion)
        lesion *= 1 + 0.06 * tex
    lesion = plain + strength * (lesion - plain)
    img = img * (1 - inside[..., None]) + lesion * inside[..., None]

    for _ in range(rng.poisson(1.2)):  # hairs: dark thin arcs across everything
        a, off = rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5)
        curve = (xx - 0.5) * np.sin(a) - (yy - 0.5) * np.cos(a) - off + 0.3 * rng.uniform(-1, 1) * (xx - 0.5) ** 2
        img[np.abs(curve) < 0.008] = [0.15, 0.10, 0.08]
    if rng.uniform() < 0.4:  # dermoscope vignette
        img *= np.clip(1.6 - 1.3 * np.hypot(yy - 0.5, xx - 0.5) / 0.5, 0, 1)[..., None]
    img *= rng.uniform(0.9, 1.1)  # exposure
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def demo_counts(total: int, imbalance: float) -> dict[str, int]:
    """Geometric class counts from NV (head) to DF (tail) with head/tail = ``imbalance``."""
    w = geometric_weights(imbalance, len(DEMO_ORDER))
    floor = np.zeros(len(w), bool)  # classes held at the minimum of 6 images; the rest share what is left
    while True:
        exact = np.where(floor, 6.0, (total - 6 * floor.sum()) * w * ~floor / (w * ~floor).sum())
        if not (exact < 6).any():
            break
        floor |= exact < 6
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: total - counts.sum()]] += 1  # largest remainders: the counts sum to total
    return dict(zip(DEMO_ORDER, counts.tolist()))


def make_demo_dataset(root: str | Path, total: int = 1000, imbalance: float = 4.0, size: int = 64,
                      seed: int = 0, repeat_fraction: float = 0.1) -> Path:
    """Write the demo set under ``root`` in ISIC 2019 layout and return ``root``.

    About ``repeat_fraction`` of lesions get a second, shifted photo with the same ``lesion_id``,
    as in ISIC, so grouped splitting matters. Skips the work if the set is already complete.
    """
    if total < 6 * len(DEMO_ORDER):
        raise ValueError(f"the demo set needs at least {6 * len(DEMO_ORDER)} images (6 per class), got {total}")
    root = Path(root)
    gt_path = root / ISIC2019_GT
    if gt_path.is_file():
        return root
    rng = np.random.default_rng(seed)
    (root / ISIC2019_IMAGES).mkdir(parents=True, exist_ok=True)
    rows, meta = [], []
    n = 0
    for cls, count in demo_counts(total, imbalance).items():
        made = 0
        while made < count:
            lesion_seed = int(rng.integers(2**31))
            photos = 2 if (rng.uniform() < repeat_fraction and count - made >= 2) else 1
            for k in range(photos):
                img = draw_lesion_image(cls, np.random.default_rng(lesion_seed), size)
                if k:  # a second photo of the same lesion: shifted and flipped
                    img = np.roll(img[:, ::-1], int(rng.integers(-4, 5)), axis=1)
                image_id = f"ISIC_{n:07d}"
                with atomic_path(root / ISIC2019_IMAGES / f"{image_id}.jpg") as tmp:
                    Image.fromarray(img).save(tmp, format="JPEG", quality=92)
                rows.append({"image": image_id, **{c: float(c == cls) for c in ISIC2019_CLASSES}})
                meta.append({"image": image_id, "lesion_id": f"IL_{lesion_seed:010d}"})
                n += 1
                made += 1
    write_csv(root / ISIC2019_META, pd.DataFrame(meta))
    write_csv(gt_path, pd.DataFrame(rows))  # written last: its presence marks a complete set
    return root
