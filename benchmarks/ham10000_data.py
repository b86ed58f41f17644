"""Two data facts behind the HAM10000 benchmark, printed as tables (seconds on a CPU; no training).

1. How each ``data.resize`` rule treats HAM10000's 192x144 images, measured on its ground-truth lesion
   masks: lesion pixels cut off (crop), frame spent on padding (pad), lesion aspect change (squash).
2. What lesion grouping does to the isic2019-mini splits: the mini benchmark's protocol (10 validation and
   25 test images per class, training thinned to 50:1, data seeds 0-2) with the official ``lesion_id`` and
   with every image its own lesion (what every figure measured before the metadata file existed saw).

    python benchmarks/ham10000_data.py [--shared ../shared/data]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tailfill.data import load_isic2019, long_tail_subsample, make_splits
from tailfill.data.lesion_masks import PackedMasks, square_mask
from tailfill.data.ham10000 import load_ham10000
from tailfill.evaluation.tables import to_markdown

ROOT = Path(__file__).resolve().parents[1]


def resize_table(ham: Path, size: int = 64) -> pd.DataFrame:
    d = load_ham10000(ham)
    masks = d.masks
    assert isinstance(masks, PackedMasks)
    full = [masks.full(i) for i in d.frame["image"]]
    rows = []
    for mode in ("crop", "squash", "pad"):
        lost, share, aspect = [], [], []
        for m in full:
            sq = square_mask(m, size, mode).astype(bool)
            h, w = m.shape
            if mode == "crop":  # the centre h x h square of an h x w image
                inner = m[:, (w - h) // 2:(w - h) // 2 + h].sum()
                lost.append(1 - inner / max(m.sum(), 1))
            ys, xs = np.nonzero(m)
            sys_, sxs = np.nonzero(sq)
            if len(ys) and len(sys_):
                aspect.append(((np.ptp(sxs) + 1) / (np.ptp(sys_) + 1)) / ((np.ptp(xs) + 1) / (np.ptp(ys) + 1)))
            share.append(sq.mean())
        lost = np.array(lost) if lost else np.zeros(1)
        rows.append({"resize": mode, "images": len(full),
                     "lesion pixels cut off, mean": round(float(lost.mean()), 4),
                     "images losing >10 %": round(float((lost > 0.10).mean()), 3),
                     "images losing >25 %": round(float((lost > 0.25).mean()), 3),
                     "lesion share of the square": round(float(np.mean(share)), 3),
                     "frame that is padding": 0.25 if mode == "pad" else 0.0,
                     "lesion aspect (w/h) change, median": round(float(np.median(aspect)), 3)})
    return pd.DataFrame(rows)


def grouping_table(mini: Path) -> pd.DataFrame:
    """The mini benchmark's protocol (benchmarks/longtail_isic_base.yaml: 10 validation and 25 test images per class,
    the training split thinned to 50:1), split by lesion and by image, for the three data seeds used."""
    d = load_isic2019(mini)
    labels, lesions, images = d.labels(), d.frame["lesion_id"].to_numpy(), d.frame["image"].to_numpy()
    multi = pd.Series(lesions).value_counts()

    def protocol(groups, seed):
        split = make_splits(labels, groups, 0.15, 0.2, seed, 10, 25)
        keep = long_tail_subsample(labels, split, 50, seed, groups=groups)
        return np.where(keep, split, "unused")

    rows = []
    for seed in (0, 1, 2):
        grouped, by_image = protocol(lesions, seed), protocol(images, seed)
        used = by_image != "unused"
        sides = pd.DataFrame({"lesion": lesions[used], "split": by_image[used]}).groupby("lesion")["split"].nunique()
        rows.append({"data seed": seed, "lesions with >= 2 images": int((multi >= 2).sum()),
                     "lesions on two sides, by image": int((sides > 1).sum()),
                     "lesions on two sides, by lesion": int((pd.DataFrame({"l": lesions[grouped != "unused"],
                                                                            "s": grouped[grouped != "unused"]})
                                                             .groupby("l")["s"].nunique() > 1).sum()),
                     "test images that changed": int(((grouped == "test") != (by_image == "test")).sum() // 2),
                     "images whose split moved": int((grouped != by_image).sum())})
    return pd.DataFrame(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    print("## data.resize on HAM10000 (192x144 -> 64x64, ground-truth lesion masks)\n")
    print(to_markdown(resize_table(args.shared / "ham10000")))
    print("\n## isic2019-mini: the benchmark's splits by lesion and by image (10 / 25 per class, 50:1)\n")
    print(to_markdown(grouping_table(args.shared / "isic2019-mini")))


if __name__ == "__main__":
    main()
