"""The report's plots: gains, confusion matrices, OOD histograms, training curves, image grids (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.io import atomic_path


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_gains(gains: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    colors = ["tab:green" if g >= 0 else "tab:red" for g in gains["gain"]]
    ax.bar(gains["class"], gains["gain"], color=colors, yerr=gains.get("gain_sd"), capsize=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("class")
    ax.set_ylabel("test recall gain\n(augmented - baseline)")
    ax.set_title("per-class recall gain, mean over seeds (error bar: sd of the per-seed gain)", fontsize=8)
    ax.tick_params(axis="x", rotation=45)
    _savefig(fig, path)


def plot_confusions(matrices: dict, classes: list, path: Path) -> None:
    import matplotlib.pyplot as plt

    # constrained layout and one colour bar for all: a bar per matrix ran its label into the next matrix
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices) + 0.8, 4), layout="constrained",
                             squeeze=False)
    for ax, (title, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm, dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        for i in range(len(classes)):
            for j in range(len(classes)):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, pad=0.02, label="share of the true class")
    _savefig(fig, path)


def plot_ood_histograms(calibration: dict, selection: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = sorted(selection["class"].unique())
    fig, axes = plt.subplots(1, len(names), figsize=(3.5 * len(names), 3.0), squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names):
        s = selection[selection["class"] == name]
        real = np.asarray(calibration["val_scores"].get(name, []))
        bins = np.histogram_bin_edges(np.r_[real, s["score"]], bins=25)
        for values, label in ((real, "real (held-out)"), (s.loc[s["eligible"], "score"], "synthetic eligible"),
                              (s.loc[~s["eligible"], "score"], "synthetic rejected")):
            if len(values):
                ax.hist(values, bins=bins, alpha=0.6, density=True, label=label)
        ax.axvline(calibration["thresholds"][name], color="k", ls="--", lw=1, label="threshold (real quantile)")
        ax.set_xlabel("OOD score", fontsize=7)
        ax.set_ylabel("density", fontsize=7)
        ax.tick_params(labelsize=6)
        auroc = calibration["realism_auroc"].get(name, float("nan"))
        ax.set_title(f"{name}  (real-vs-synthetic AUROC {auroc:.2f})", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("OOD score: higher = less like the held-out real images of the class", fontsize=8)
    _savefig(fig, path)


def plot_training_curves(diffusion_history: list, classifier_histories: dict, path: Path) -> None:
    """Diffusion loss per step; classifier training loss and validation balanced accuracy per epoch."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    if diffusion_history:
        axes[0].plot([h["step"] for h in diffusion_history], [h["loss"] for h in diffusion_history])
    axes[0].set(title="inpainting diffusion", xlabel="training step", ylabel="loss (weighted eps MSE)")
    for name, hist in classifier_histories.items():
        epochs = [h for h in hist if isinstance(h.get("epoch"), int)]
        axes[1].plot([h["epoch"] for h in epochs], [h["loss"] for h in epochs], label=name)
        axes[2].plot([h["epoch"] for h in epochs], [h["val_balanced_accuracy"] for h in epochs], label=name)
    axes[1].set(title="classifiers (seed shown in legend)", xlabel="epoch", ylabel="training loss")
    axes[2].set(title="model selection", xlabel="epoch", ylabel="validation balanced accuracy")
    if classifier_histories:
        axes[2].legend(fontsize=6)
    _savefig(fig, path)


GRID_PANELS = ("real", "mask", "synthetic eligible", "synthetic rejected")


def image_grid(rows: list[tuple[str, list]], path: Path, per_row: int = 6, titles: tuple = GRID_PANELS) -> None:
    """One figure row per class: its panels (lists of HxWx3 uint8 images) side by side as strips, titled
    ``titles``."""
    import matplotlib.pyplot as plt

    first = next((im for _, panels in rows for imgs in panels for im in imgs), None)
    blank = np.full(first.shape if first is not None else (8, 8, 3), 255, np.uint8)

    factor = max(1, -(-96 // blank.shape[0]))  # upsampled (nearest) to at least 96 px: readable at a glance

    def strip(imgs):
        imgs = list(imgs)[:per_row] + [blank] * max(0, per_row - len(imgs))
        return np.concatenate(imgs, axis=1).repeat(factor, axis=0).repeat(factor, axis=1)

    n_panels = max(len(p) for _, p in rows)
    width = 4.0  # inches per panel; a strip is per_row images wide and one tall, plus its title
    fig, axes = plt.subplots(len(rows), n_panels, figsize=(n_panels * width, len(rows) * (width / per_row + 0.3)),
                             squeeze=False)
    for axrow, (name, panels) in zip(axes, rows):
        for ax, title, imgs in zip(axrow, titles, panels):
            ax.imshow(strip(imgs))
            ax.set_title(f"{name}: {title}", fontsize=7)
            ax.axis("off")
    _savefig(fig, path)


def mask_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat((np.asarray(mask, np.float32)[..., None] > 0.5).astype(np.uint8) * 255, 3, axis=2)


def sample_grid(run, selection: pd.DataFrame, path: Path, per_row: int = 6) -> None:
    """Per generated class, one row each: real | synthetic masks | synthetic eligible | synthetic rejected."""
    from PIL import Image

    from ..utils.io import safe_join

    d = run.data
    frame = d.frame

    def load(files):
        return [np.asarray(Image.open(safe_join(run.paths.synthetic, f)).convert("RGB")) for f in files]

    rows = []
    for name in sorted(selection["class"].unique()):
        real = d.images[np.flatnonzero(((frame["class"] == name) & (frame["split"] == "train")).to_numpy())[:per_row]]
        s = selection[selection["class"] == name]
        kept, rejected = s[s["eligible"]].sort_values("score"), s[~s["eligible"]].sort_values("score", ascending=False)
        rows.append((name, [real, load(s["mask_file"].head(per_row)), load(kept["file"].head(per_row)),
                            load(rejected["file"].head(per_row))]))
    image_grid(rows, path, per_row)
