"""The stages wired together in a run directory.

Each stage reads what earlier stages wrote under ``run_dir`` and writes its own outputs
atomically, then a marker ``stages/<stage>.json``. ``run`` executes the stages in order and, on
``resume``, skips those already marked done; inside a stage, training checkpoints and generation
shards resume too.

    run_dir/
      config.yaml                 the exact configuration of this run
      data/splits.csv             every image, its class, lesion and split (train/val/test/unused)
      cache/                      resized uint8 images and lesion masks
      classifier/baseline/<method>/seed_<s>/   model, metrics, ISIC-format predictions
      diffusion/checkpoint/       inpainting UNet (+ EMA) in safetensors, optimizer state
      synthetic/                  plan.csv, shards/, images/, masks/, manifest.csv (provenance)
      selection/selection.csv     OOD scores and keep/reject decisions
      classifier/augmented/<method>/seed_<s>/
      results/                    results.csv (one row per model and seed), summary.json
      report/                     report.md and plots
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config, config_from_dict
from .io import read_json, read_table, save_npy, write_csv, write_json, write_text

log = logging.getLogger(__name__)

DEMO_TRAIN_IMBALANCE = 20.0  # the demo's training split: NV to DF
STAGES = ["prepare", "train-baseline", "train-diffusion", "generate", "select", "train-augmented", "evaluate",
          "report"]


class RunDirError(RuntimeError):
    pass


def _dist():
    """(rank, world, barrier) under ``accelerate launch``; (0, 1, no-op) otherwise."""
    try:
        from accelerate import PartialState

        state = PartialState()
        return state.process_index, state.num_processes, state.wait_for_everyone
    except Exception:  # accelerate missing or not initialisable: single process
        return 0, 1, lambda: None


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class Run:
    """A run directory and lazy access to what its stages have written."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.device = resolve_device(cfg.device)
        self._data = None

    # ---------- bookkeeping
    def stage_marker(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def is_done(self, stage: str) -> bool:
        return self.stage_marker(stage).is_file()

    def require(self, stage: str) -> None:
        if not self.is_done(stage):
            raise RunDirError(f"stage {stage!r} has not finished in {self.dir}; run `tailfill {stage} "
                              f"--run-dir {self.dir}` (or `tailfill run --resume`) first")

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise RunDirError(f"{run_dir} is not a tailfill run directory (no config.yaml); start one with "
                              "`tailfill run` or `tailfill prepare --config FILE`")
        import yaml

        cfg = config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
        cfg.run_dir = str(run_dir)
        return cls(cfg)

    def initialise(self, resume: bool = False, overwrite: bool = False) -> None:
        """Create the run directory, or check that an existing one belongs to this config."""
        started = self.dir.is_dir() and (self.dir / "config.yaml").is_file()
        if started and overwrite:
            shutil.rmtree(self.dir)
        elif started and not resume:
            raise RunDirError(f"run directory {self.dir} already holds a run; pass --resume to continue it "
                              "or --overwrite to start again")
        elif started:
            import yaml

            saved = yaml.safe_load((self.dir / "config.yaml").read_text(encoding="utf-8"))
            saved["run_dir"] = self.cfg.run_dir
            if saved != self.cfg.to_dict():
                diff = sorted(k for k in set(saved) | set(self.cfg.to_dict())
                              if saved.get(k) != self.cfg.to_dict().get(k))
                raise RunDirError(f"cannot resume {self.dir}: its config differs in {', '.join(diff)}; "
                                  "use the same config, another --run-dir, or --overwrite")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir / "config.yaml", self.cfg.to_yaml())

    # ---------- data access
    @property
    def data(self) -> dict:
        """Splits table, classes, cached images and masks (after ``prepare``)."""
        if self._data is None:
            self.require("prepare")
            info = read_json(self.dir / "data" / "dataset.json")
            frame = read_table(self.dir / "data" / "splits.csv")
            images = np.load(self.dir / "cache" / info["images_file"])
            masks = np.load(self.dir / "cache" / info["masks_file"])
            self._data = {"frame": frame, "classes": info["classes"], "output_classes": info["output_classes"],
                          "images": images, "masks": masks}
        return self._data

    def split(self, name: str):
        d = self.data
        sel = (d["frame"]["split"] == name).to_numpy()
        return d["images"][sel], d["frame"]["label"].to_numpy()[sel], d["frame"][sel].reset_index(drop=True), sel


def _mark(run: Run, stage: str, t0: float, **info) -> None:
    if _dist()[0] != 0:
        return
    write_json(run.stage_marker(stage), {"stage": stage, "seconds": round(time.time() - t0, 2), **info})


# ---------------------------------------------------------------- stages
def stage_prepare(run: Run) -> None:
    from .data import (build_cache, load_csv_dataset, load_image_folder, load_isic2019, long_tail_subsample,
                       make_demo_dataset, make_splits)
    from .masks import load_user_mask, segment_batch

    cfg, d = run.cfg, run.cfg.data
    t0 = time.time()
    if d.kind == "demo":
        root = Path(d.root) if d.root else run.dir / "demo_data"
        make_demo_dataset(root, total=d.demo_images, imbalance=d.demo_imbalance, seed=cfg.seed)
        dataset = load_isic2019(root, d.on_bad_image)
    elif d.kind == "isic2019":
        dataset = load_isic2019(d.root, d.on_bad_image, d.csv)
    elif d.kind == "folder":
        dataset = load_image_folder(d.root)
    else:
        dataset = load_csv_dataset(d.csv, d.root, on_bad_image=d.on_bad_image)
    frame = dataset.frame.copy()
    if d.max_per_class:
        rng = np.random.default_rng(cfg.seed)
        keep = np.zeros(len(frame), bool)
        for c in range(len(dataset.classes)):
            idx = np.flatnonzero(frame["label"].to_numpy() == c)
            keep[rng.permutation(idx)[: d.max_per_class]] = True
        frame = frame[keep].reset_index(drop=True)
    images, ok = build_cache([dataset.root / p for p in frame["path"]], d.image_size,
                             Path(d.cache_dir) if d.cache_dir else run.dir / "cache", d.workers, d.on_bad_image)
    frame, images = frame[ok].reset_index(drop=True), images[ok]
    labels = frame["label"].to_numpy()
    split = make_splits(labels, frame["lesion_id"].to_numpy(), d.val_fraction, d.test_fraction, cfg.seed)
    ratio = d.imbalance_ratio if d.imbalance_ratio is not None else (DEMO_TRAIN_IMBALANCE if d.kind == "demo" else None)
    if ratio:
        keep = long_tail_subsample(labels, split, ratio, cfg.seed, groups=frame["lesion_id"].to_numpy())
        split = np.where(keep, split, "unused")
    if d.masks_dir:
        masks = np.stack([load_user_mask(d.masks_dir, i, d.image_size) for i in frame["image"]])
    else:
        masks = segment_batch(images)
    frame["class"] = [dataset.classes[i] for i in labels]
    frame["split"] = split
    key = f"{len(frame)}_{d.image_size}px"
    save_npy(run.dir / "cache" / f"prepared_images_{key}.npy", images)
    save_npy(run.dir / "cache" / f"prepared_masks_{key}.npy", masks.astype(np.float32))
    write_csv(run.dir / "data" / "splits.csv", frame)
    counts = {s: {c: int(((frame["split"] == s) & (frame["class"] == c)).sum()) for c in dataset.classes}
              for s in ("train", "val", "test")}
    write_json(run.dir / "data" / "dataset.json", {
        "root": str(dataset.root), "classes": dataset.classes, "output_classes": dataset.output_classes,
        "images_file": f"prepared_images_{key}.npy", "masks_file": f"prepared_masks_{key}.npy", "counts": counts})
    log.info("prepare: %d images, %d classes; train counts %s", len(frame), len(dataset.classes), counts["train"])
    _mark(run, "prepare", t0, counts=counts)


def _train_and_save(run: Run, kind: str, method: str, seed: int, x, y, extra: dict) -> None:
    from .classify import train_classifier
    from .evaluate import classification_metrics, submission_frame

    d = run.data
    out = run.dir / "classifier" / kind / method / f"seed_{seed}"
    if (out / "metrics.json").is_file():
        return  # done in an earlier, interrupted run
    t0 = time.time()
    val_x, val_y, _, _ = run.split("val")
    test_x, test_y, test_frame, _ = run.split("test")
    model = train_classifier(x, y, val_x, val_y, d["classes"], method, run.cfg.classifier, seed, run.device)
    rank, _, _ = _dist()
    if rank != 0:
        return
    model.save(out, run.cfg.classifier.backbone)
    proba = model.predict_proba(test_x)
    write_csv(out / "predictions_test.csv", submission_frame(test_frame["image"], proba, d["classes"],
                                                              d["output_classes"]))
    val_metrics = classification_metrics(val_y, model.predict_proba(val_x), d["classes"])
    metrics = classification_metrics(test_y, proba, d["classes"])
    write_json(out / "metrics.json", {"kind": kind, "method": method, "seed": seed, "test": metrics,
                                      "val": val_metrics, "train_seconds": round(time.time() - t0, 2),
                                      "train_counts": np.bincount(y, minlength=len(d["classes"])).tolist(), **extra})
    log.info("%s %s seed %d: val bacc %.3f, test bacc %.3f (%.0f s)", kind, method, seed,
             val_metrics["balanced_accuracy"], metrics["balanced_accuracy"], time.time() - t0)


def stage_train_baseline(run: Run) -> None:
    t0 = time.time()
    x, y, _, _ = run.split("train")
    for method in run.cfg.classifier.methods:
        for seed in run.cfg.classifier.seeds:
            _train_and_save(run, "baseline", method, seed, x, y, {"synthetic_images": 0})
    _mark(run, "train-baseline", t0)


def stage_train_diffusion(run: Run) -> None:
    from .diffusion import train_diffusion

    t0 = time.time()
    x, y, _, sel = run.split("train")
    train_diffusion(x, y, run.data["masks"][sel], len(run.data["classes"]), run.cfg.diffusion,
                    run.dir / "diffusion", run.cfg.seed, run.device, resume=True)
    _mark(run, "train-diffusion", t0)


def _deficits(run: Run) -> dict[int, int]:
    from .generate import choose_classes, fill_targets

    _, y, _, _ = run.split("train")
    counts = np.bincount(y, minlength=len(run.data["classes"]))
    return fill_targets(counts, choose_classes(counts, run.data["classes"], run.cfg.generate.classes),
                        run.cfg.generate.target)


def stage_generate(run: Run) -> None:
    from .generate import generate, make_plan

    t0 = time.time()
    rank, world, barrier = _dist()
    x, _, train_frame, sel = run.split("train")
    out = run.dir / "synthetic"
    plan_path = out / "plan.csv"
    if rank == 0 and not plan_path.is_file():
        write_csv(plan_path, make_plan(train_frame, run.data["classes"], _deficits(run), run.cfg.generate))
    barrier()
    plan = read_table(plan_path)
    log.info("generate: %d images for %s", len(plan), {k: int(v) for k, v in plan["class"].value_counts().items()})
    generate(plan, x, run.data["masks"][sel], run.dir / "diffusion" / "checkpoint", out, run.cfg.generate,
             run.cfg.data.masks_dir, run.device, rank, world)
    barrier()
    if rank == 0:
        if not (out / "manifest.csv").is_file():  # e.g. an empty plan
            write_csv(out / "manifest.csv", plan)
        _mark(run, "generate", t0, images=len(plan))


def feature_model(run: Run):
    from .classify import TrainedClassifier

    method = run.cfg.select.feature_method or best_baseline(run)
    seed = run.cfg.classifier.seeds[0]
    path = run.dir / "classifier" / "baseline" / method / f"seed_{seed}"
    if not (path / "model.safetensors").is_file():
        raise RunDirError(f"no baseline classifier at {path} for OOD features; check select.feature_method")
    return TrainedClassifier.load(path, run.device)


def stage_select(run: Run) -> None:
    from .generate import load_synthetic
    from .select import OODSelector, make_scorer, realism_auroc

    t0 = time.time()
    cfg = run.cfg.select
    manifest = read_table(run.dir / "synthetic" / "manifest.csv")
    out = run.dir / "selection"
    if len(manifest) == 0:
        write_csv(out / "selection.csv", manifest.assign(score=[], kept=[], used=[], reason=[]))
        _mark(run, "select", t0, kept=0, used=0)
        return
    synth = load_synthetic(run.dir / "synthetic", manifest)
    model = feature_model(run)
    tr_x, tr_y, _, _ = run.split("train")
    va_x, va_y, _, _ = run.split("val")
    s_y = manifest["label"].to_numpy()
    if cfg.method == "none":
        table = pd.DataFrame({"score": np.zeros(len(manifest)), "threshold": np.inf, "train_similarity": np.nan,
                              "kept": True, "reason": "kept"})
        auroc = {}
    else:
        selector = OODSelector(make_scorer(cfg.method, cfg.k), cfg.real_quantile, cfg.keep_fraction,
                               cfg.near_duplicate_similarity)
        tr_f, va_f, s_f = model.features(tr_x), model.features(va_x), model.features(synth)
        selector.fit(tr_f, tr_y).calibrate(va_f, va_y)
        table = selector.select(s_f, s_y, source_index=manifest["context_index"].to_numpy())
        val_scores = selector.score(va_f, va_y)
        auroc = {run.data["classes"][c]: realism_auroc(val_scores[va_y == c], table["score"].to_numpy()[s_y == c])
                 for c in np.unique(s_y)}
        write_json(out / "calibration.json", {
            "thresholds": {run.data["classes"][c]: t for c, t in selector.thresholds_.items()},
            "val_scores": {run.data["classes"][c]: s.tolist() for c, s in selector.calibration_scores_.items()},
            "realism_auroc": auroc})
    # use at most the deficit of each class: the best-scoring kept images
    table = pd.concat([manifest, table], axis=1)
    table["used"] = False
    for c, deficit in _deficits(run).items():
        kept = table[(table["label"] == c) & table["kept"]].sort_values("score")
        table.loc[kept.index[:deficit], "used"] = True
    write_csv(out / "selection.csv", table)
    summary = table.groupby("class").agg(generated=("kept", "size"), kept=("kept", "sum"), used=("used", "sum"))
    log.info("select: %s", summary.to_dict("index"))
    _mark(run, "select", t0, kept=int(table["kept"].sum()), used=int(table["used"].sum()), realism_auroc=auroc)


def best_baseline(run: Run) -> str:
    """The baseline method with the best mean *validation* balanced accuracy (never test)."""
    scores = {}
    for method in run.cfg.classifier.methods:
        vals = [read_json(p)["val"]["balanced_accuracy"]
                for p in (run.dir / "classifier" / "baseline" / method).glob("seed_*/metrics.json")]
        if vals:
            scores[method] = float(np.mean(vals))
    if not scores:
        raise RunDirError("no baseline results to choose the augmented method from; run train-baseline first")
    return max(scores, key=scores.get)


def stage_train_augmented(run: Run) -> None:
    from .generate import load_synthetic

    t0 = time.time()
    method = run.cfg.classifier.augmented_method
    method = best_baseline(run) if method == "best" else method
    x, y, _, _ = run.split("train")
    table = read_table(run.dir / "selection" / "selection.csv")
    used = table[table["used"].astype(bool)].reset_index(drop=True) if len(table) else table
    ratio = run.cfg.classifier.synthetic_max_ratio
    if ratio is not None and len(used):
        counts = np.bincount(y, minlength=len(run.data["classes"]))
        used = used.groupby("label", group_keys=False).apply(
            lambda g: g.head(int(ratio * counts[g.name]))).reset_index(drop=True)
    if len(used):
        x = np.concatenate([x, load_synthetic(run.dir / "synthetic", used)])
        y = np.concatenate([y, used["label"].to_numpy()])
    for seed in run.cfg.classifier.seeds:
        _train_and_save(run, "augmented", method, seed, x, y, {"synthetic_images": int(len(used))})
    _mark(run, "train-augmented", t0, method=method, synthetic_images=int(len(used)))


def stage_evaluate(run: Run) -> None:
    from .evaluate import mean_ci

    t0 = time.time()
    rows = []
    for path in sorted((run.dir / "classifier").glob("*/*/seed_*/metrics.json")):
        m = read_json(path)
        row = {"model": f"{m['kind']}:{m['method']}", "kind": m["kind"], "method": m["method"], "seed": m["seed"],
               "balanced_accuracy": m["test"]["balanced_accuracy"], "accuracy": m["test"]["accuracy"],
               "macro_f1": m["test"]["macro_f1"], "val_balanced_accuracy": m["val"]["balanced_accuracy"],
               "synthetic_images": m.get("synthetic_images", 0), "train_seconds": m["train_seconds"]}
        for name, pc in m["test"]["per_class"].items():
            row.update({f"recall_{name}": pc["recall"], f"precision_{name}": pc["precision"],
                        f"f1_{name}": pc["f1"], f"auc_{name}": pc["auc"]})
        rows.append(row)
    if not rows:
        raise RunDirError("no trained classifiers to evaluate")
    results = pd.DataFrame(rows)
    write_csv(run.dir / "results" / "results.csv", results)
    summary = {}
    for model, g in results.groupby("model", sort=False):
        summary[model] = {col: dict(zip(("mean", "low", "high"), mean_ci(g[col])))
                          for col in results.columns if col.startswith(("balanced_accuracy", "recall_", "macro_f1"))}
        summary[model]["seeds"] = len(g)
    write_json(run.dir / "results" / "summary.json", summary)
    _mark(run, "evaluate", t0)


def stage_report(run: Run) -> None:
    from .report import write_report

    t0 = time.time()
    path = write_report(run)
    _mark(run, "report", t0, report=str(path))


STAGE_FUNCTIONS = {"prepare": stage_prepare, "train-baseline": stage_train_baseline,
                   "train-diffusion": stage_train_diffusion, "generate": stage_generate, "select": stage_select,
                   "train-augmented": stage_train_augmented, "evaluate": stage_evaluate, "report": stage_report}
# stages that only the main process runs under `accelerate launch`; the others share the work
MAIN_ONLY = {"prepare", "select", "evaluate", "report"}


def run_stage(run: Run, stage: str, force: bool = False) -> None:
    rank, _, barrier = _dist()
    if run.is_done(stage) and not force:
        log.info("stage %s: already done, skipping", stage)
        return
    log.info("stage %s ...", stage)
    if stage in MAIN_ONLY:
        if rank == 0:
            STAGE_FUNCTIONS[stage](run)
        barrier()
        run._data = None  # re-read what the main process wrote
    else:
        STAGE_FUNCTIONS[stage](run)
        barrier()


def run_all(run: Run, stages: list[str] | None = None) -> None:
    for stage in stages or STAGES:
        run_stage(run, stage)
