"""k-fold cross-validation: ``data.folds: 5`` runs the whole pipeline once per fold.

Fold i's run lives in ``run_dir/fold_<i>/``: its test split is fold i of one stratified, lesion-grouped
partition (the same partition in every fold), its validation split comes from the other folds, and it
trains its own generator, selection and classifiers. Each fold is an ordinary, resumable run. When all
folds are done, ``run_dir/results/cv_results.csv`` holds every (fold, model, seed) row and
``cv_summary.json`` the mean and a bootstrap interval over folds and seeds, per model and per class;
``run_dir/report/report.md`` (and ``.html``) shows them, as papers that report k-fold CV do.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import pandas as pd

from .config import Config
from .utils.io import read_table, write_csv, write_json, write_text
from .run import Run

log = logging.getLogger(__name__)


def fold_config(cfg: Config, fold: int) -> Config:
    """The config of fold ``fold``'s run: its own directory; the parent's image cache and demo data."""
    out = copy.deepcopy(cfg)
    parent = Run(cfg).paths
    out.run_dir = str(parent.root / f"fold_{fold}")
    out.data.fold = fold
    out.data.cache_dir = cfg.data.cache_dir or str(parent.cache)
    if cfg.data.kind == "demo" and not cfg.data.root:
        out.data.root = str(parent.demo_data)
    return out


def run_folds(run: Run, stages: list[str] | None = None) -> None:
    """Run (or resume) every fold, then write the cross-validation results and report."""
    from .stages import run_all

    for fold in range(run.cfg.data.folds):
        log.info("fold %d of %d", fold + 1, run.cfg.data.folds)
        sub = Run(fold_config(run.cfg, fold))
        sub.initialise(resume=True)  # a finished or half-done fold continues where it stopped
        run_all(sub, stages)
    if all((Run(fold_config(run.cfg, f)).paths.results).is_file() for f in range(run.cfg.data.folds)):
        summarise_folds(run)


def fold_interval(values: list[np.ndarray], n_boot: int = 2000, seed: int = 0, confidence: float = 0.95):
    """Mean and a hierarchical bootstrap interval: folds drawn with replacement, then seeds within each drawn
    fold; ``values[f]`` are fold f's per-seed values. Clipped to [0, 1]."""
    values = [np.asarray(v, float) for v in values if len(v)]
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        folds = rng.integers(len(values), size=len(values))
        boots[b] = np.mean([values[f][rng.integers(len(values[f]), size=len(values[f]))].mean() for f in folds])
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    mean = float(np.mean([v.mean() for v in values]))
    return mean, float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))


def summarise_folds(run: Run) -> dict:
    from .evaluation.report import markdown_to_html
    from .evaluation.tables import summary_table, to_markdown

    frames = []
    for fold in range(run.cfg.data.folds):
        frames.append(read_table(Run(fold_config(run.cfg, fold)).paths.results).assign(fold=fold))
    results = pd.concat(frames, ignore_index=True)
    write_csv(run.paths.root / "results" / "cv_results.csv", results)
    interval = "95 % hierarchical bootstrap interval over folds and seeds"
    summary = {}
    for model, g in results.groupby("model", sort=False):
        entry = {"folds": int(g["fold"].nunique()), "seeds": int(g["seed"].nunique()), "interval": interval}
        for col in g.columns:
            if col.startswith(("balanced_accuracy", "recall_", "macro_f1")):
                m, lo, hi = fold_interval([f[col].to_numpy() for _, f in g.groupby("fold")])
                entry[col] = {"mean": m, "low": lo, "high": hi}
        summary[model] = entry
    write_json(run.paths.root / "results" / "cv_summary.json", summary)
    classes = Run(fold_config(run.cfg, 0)).data.classes
    lines = [f"# tailfill cross-validation report: `{run.dir}`", "",
             f"{run.cfg.data.folds}-fold cross-validation (stratified, grouped by lesion): each fold's run has its "
             f"own generator, selection and classifiers; [low, high] is the {interval}. Balanced accuracy is "
             "ISIC 2019's metric on each fold's test split; per-class recall is argmax-based.", "",
             to_markdown(summary_table(summary, classes).rename(columns={"seeds": "seeds per fold"})), "",
             "Each fold's own report: " + ", ".join(f"[fold {f}](../fold_{f}/report/report.md)"
                                                    for f in range(run.cfg.data.folds)), ""]
    out = run.paths.report_dir
    write_text(out / "report.md", "\n".join(lines))
    write_text(out / "report.html", markdown_to_html("\n".join(lines), out, f"tailfill CV report: {run.dir}"))
    log.info("cross-validation: %s", {m: round(s["balanced_accuracy"]["mean"], 3) for m, s in summary.items()})
    return summary
