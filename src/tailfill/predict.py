"""After a run: apply its classifiers to new images, and score them on an external labelled set.

    tailfill predict  --run-dir R --images DIR --out preds.csv [--model augmented] [--ensemble]
    tailfill evaluate --run-dir R --data-kind isic2019 --data-root ROOT [--name hospital_a]

Images are read and resized exactly as the run's cache was (``data.image_size``, same decoder), and
normalised as the classifier was trained (its saved ``pretrained_cfg``).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .classifier.model import TrainedClassifier
from .data import DataError, build_cache, load_dataset
from .data.rows import take_rows
from .data.sources import IMAGE_SUFFIXES, LabeledImages
from .evaluation.metrics import classification_metrics, seed_ensemble, submission_frame
from .utils.io import read_table, write_csv, write_json
from .run import Run, RunDirError

log = logging.getLogger(__name__)


def model_dirs(run: Run, model: str = "augmented") -> tuple[str, list[Path]]:
    """The seed folders of the chosen classifier: ``augmented`` (the default), ``baseline`` (the best baseline
    on validation), a baseline method name, or ``kind:method``."""
    from .baselines import best_baseline

    if model == "augmented":
        kinds = sorted((run.paths.classifiers / "augmented").glob("*"))
        if not kinds:
            raise RunDirError(f"{run.dir} has no augmented classifier; run train-augmented, or pass --model baseline")
        kind, method = "augmented", kinds[0].name
    elif model == "baseline":
        kind, method = "baseline", best_baseline(run)
    elif ":" in model:
        kind, method = model.split(":", 1)
    else:
        kind, method = "baseline", model
    seeds = [fit for *_, fit in run.paths.fits(kind, method, "model.safetensors")]
    if not seeds:
        known = sorted({f"{k}:{m}" for k, m, *_ in run.paths.fits()})
        raise RunDirError(f"no trained classifier {kind}:{method} in {run.dir}; known: {', '.join(known)}")
    return f"{kind}:{method}", seeds


def predict_proba(run: Run, images: np.ndarray, model: str = "augmented", ensemble: bool = False,
                  seed: int | None = None) -> tuple[str, np.ndarray]:
    """(model name, (N, K) probabilities in the run's class order): one seed's (the first, or ``seed``), or the
    mean over seeds with ``ensemble``."""
    name, dirs = model_dirs(run, model)
    if seed is not None:
        dirs = [d for d in dirs if d.name == f"seed_{seed}"]
        if not dirs:
            raise RunDirError(f"{name} has no seed {seed}")
    dirs = dirs if ensemble else dirs[:1]
    probas = [TrainedClassifier.load(d, run.device).predict_proba(images) for d in dirs]
    return name + (f" (mean of {len(dirs)} seeds)" if len(dirs) > 1 else f" ({dirs[0].name})"), seed_ensemble(probas)


def images_in(folder: str | Path) -> pd.DataFrame:
    """Every image file under ``folder``: id (relative path without suffix) and path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return pd.DataFrame({"image": [p.relative_to(folder).with_suffix("").as_posix() for p in files],
                         "path": [str(p) for p in files]})


def images_from_csv(csv: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """The ``image`` column of a CSV (paths relative to ``root``, default the CSV's folder)."""
    from .utils.io import safe_join

    csv = Path(csv)
    table = read_table(csv)
    if "image" not in table.columns:
        raise DataError(f"{csv}: needs an image column (found {','.join(map(str, table.columns))})")
    root = Path(root) if root else csv.parent
    paths = []
    for r, p in enumerate(table["image"].astype(str)):
        try:
            paths.append(str(safe_join(root, p)))
        except ValueError as e:
            raise DataError(f"{csv}: row {r + 2}: {e}") from None
    return pd.DataFrame({"image": [Path(p).with_suffix("").as_posix() for p in table["image"].astype(str)],
                         "path": paths})


def load_images(run: Run, frame: pd.DataFrame, cache_name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Decode and resize as the run's own cache did; bad images raise or, with data.on_bad_image=skip, drop."""
    d = run.cfg.data
    images, ok = build_cache([Path(p) for p in frame["path"]], d.image_size, run.paths.cache / cache_name,
                             d.workers, d.on_bad_image, d.resize)
    return frame[ok].reset_index(drop=True), take_rows(images, ok)  # still on disk: predicted batch by batch


def predict_files(run: Run, frame: pd.DataFrame, out: str | Path, model: str = "augmented",
                  ensemble: bool = False, seed: int | None = None) -> pd.DataFrame:
    """Predict every image of ``frame`` (image, path) and write the ISIC submission file ``out`` (all the
    official columns, UNK included, as the ISIC 2019 test set is scored)."""
    model_dirs(run, model)  # an unknown model fails before any image is decoded
    frame, images = load_images(run, frame, "predict")
    name, proba = predict_proba(run, images, model, ensemble, seed)
    data = run.data
    submission = submission_frame(frame["image"], proba, data.classes, data.output_classes)
    write_csv(out, submission)
    log.info("predict: %d images with %s -> %s", len(frame), name, out)
    return submission


def external_dataset(run: Run, kind: str, root: str | None, csv: str | None) -> LabeledImages:
    """An external labelled set in any supported layout, its classes checked against the run's."""
    d = replace(run.cfg.data, kind=kind, root=root, csv=csv)
    dataset = load_dataset(d, run.dir, run.cfg.seed)
    unknown = [c for c in dataset.classes if c not in run.data.classes]
    if unknown:
        raise DataError(f"external set {root or csv}: class(es) {', '.join(unknown)} are not classes of this run "
                        f"({', '.join(run.data.classes)})")
    return dataset


def evaluate_external(run: Run, name: str, kind: str, root: str | None = None, csv: str | None = None,
                      models: list[str] | None = None) -> Path:
    """Score the run's classifiers (every seed of each of ``models``, default augmented and the best baseline)
    on an external labelled set; writes ``results/external/<name>/`` and returns that folder."""
    from .evaluation.metrics import results_table, summarise
    from .evaluation.plots import plot_confusions

    dataset = external_dataset(run, kind, root, csv)
    frame = dataset.frame.assign(path=[str(p) for p in dataset.paths()])
    frame, images = load_images(run, frame, f"external_{name}")
    classes = run.data.classes
    labels = np.array([classes.index(dataset.classes[i]) for i in frame["label"]])
    out = run.paths.results.parent / "external" / name
    records, predictions, confusions = [], {}, {}
    for model in models or (["augmented", "baseline"] if (run.paths.classifiers / "augmented").is_dir()
                            else ["baseline"]):
        model_name, dirs = model_dirs(run, model)
        kind_, method = model_name.split(":")
        for d in dirs:
            clf = TrainedClassifier.load(d, run.device)
            proba = clf.predict_proba(images)
            metrics = classification_metrics(labels, proba, classes)
            seed = int(d.name[5:])
            write_csv(out / f"predictions_{kind_}_{method}_seed{seed}.csv",
                      submission_frame(frame["image"], proba, classes, classes))
            records.append({"kind": kind_, "method": method, "seed": seed, "test": metrics, "val": metrics,
                            "train_seconds": 0.0})
            predictions.setdefault(model_name, []).append(proba)
            confusions.setdefault(model_name, metrics["confusion_matrix"])
    results = results_table(records).drop(columns=["val_balanced_accuracy"])
    write_csv(out / "results.csv", results)
    summary = summarise(results, predictions=predictions, y_true=labels, classes=classes)
    write_json(out / "summary.json", {"name": name, "kind": kind, "source": str(root or csv), "images": len(frame),
                                      "counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
                                      "models": summary})
    plot_confusions({f"{m} (first seed)": cm for m, cm in confusions.items()}, classes, out / "confusion.png")
    log.info("external evaluation %s: %d images; %s", name, len(frame),
             {m: round(s["balanced_accuracy"]["mean"], 3) for m, s in summary.items()})
    return out
