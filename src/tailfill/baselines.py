"""A run's baseline fits as later stages read them: their results, the best on validation (the augmented
method and the OOD features when the config says ``best``), the OOD feature model and its quality."""
from __future__ import annotations

import logging

import pandas as pd

from .run import Run, RunDirError
from .utils.io import read_json

log = logging.getLogger(__name__)


def baseline_results(run: Run) -> pd.DataFrame:
    """The results table of the baselines trained so far, in config order."""
    from .evaluation.metrics import results_table

    records = [read_json(fit / "metrics.json") for method in run.cfg.classifier.methods
               for *_, fit in run.paths.fits("baseline", method, "metrics.json")]
    return results_table(records)


def best_baseline(run: Run) -> str:
    """The baseline method with the best mean *validation* balanced accuracy (never test)."""
    from .evaluation.metrics import best_method

    results = baseline_results(run)
    if not len(results):
        raise RunDirError("no baseline results to choose the augmented method from; run train-baseline first")
    return best_method(results)


def feature_method(run: Run) -> str:
    """The baseline whose features select scores (``select.feature_method``, or the best on validation)."""
    return run.cfg.select.feature_method or best_baseline(run)


def feature_model(run: Run):
    """The classifier whose features the OOD selector scores: select.feature_method, or the best baseline."""
    from .classifier.model import TrainedClassifier

    method = feature_method(run)
    path = run.paths.classifier("baseline", method, run.cfg.classifier.seeds[0])
    if not (path / "model.safetensors").is_file():
        raise RunDirError(f"no baseline classifier at {path} for OOD features; check select.feature_method")
    return TrainedClassifier.load(path, run.device)


def feature_model_quality(run: Run) -> dict:
    """How well the OOD feature classifier does on validation; near chance, its OOD scores mean little."""
    method = feature_method(run)
    metrics = read_json(run.paths.classifier("baseline", method, run.cfg.classifier.seeds[0]) / "metrics.json")
    bacc, chance = metrics["val"]["balanced_accuracy"], 1 / len(run.data.classes)
    near = bool(bacc < 1.5 * chance)
    if near:
        log.warning("the OOD feature classifier %s is near chance on validation (balanced accuracy %.3f, chance "
                    "%.3f): selection and realism AUROC say little", method, bacc, chance)
    return {"method": method, "val_balanced_accuracy": bacc, "near_chance": near}
