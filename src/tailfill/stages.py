"""The pipeline's stages: each a short function over the library that reads what earlier stages wrote
in the run directory and writes its own outputs atomically, then its marker. ``run_all`` runs them in
order and, on resume, skips the finished ones; inside a stage, training checkpoints and generation
shards resume too.

To add a stage: write ``def my_stage(run: Run) -> None`` ending in ``run.mark(...)``, registered with
``@STAGES.register("my-stage")`` where it falls in the pipeline (order matters) and, if only the main
process may run it, added to ``MAIN_ONLY``.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import pandas as pd

from .baselines import best_baseline, feature_model, feature_model_quality
from .registry import Registry
from .run import Run, RunDirError
from .utils.io import read_json, read_table, write_csv, write_json
from .utils.training import process_info

log = logging.getLogger(__name__)


# the stages, registered in pipeline order (the order `tailfill run` runs them)
STAGES = Registry("stage")


@STAGES.register("prepare")
def prepare(run: Run) -> None:
    from .data import prepare_dataset

    t0 = time.time()
    data = prepare_dataset(run.cfg.data, run.dir, run.cfg.seed)
    counts = run.save_data(data)
    log.info("prepare: %d images, %d classes; train counts %s", len(data.frame), len(data.classes), counts["train"])
    run.mark("prepare", t0, counts=counts)


def _val_test(run: Run):
    val, test = run.data.split("val"), run.data.split("test")
    return (val.images, val.labels), (test.images, test.labels), test.frame


def _train_and_save(run: Run, kind: str, method: str, seed: int, train, extra: dict) -> None:
    """Train one classifier on ``train`` (a TrainingSet) and write model, predictions and metrics."""
    from .classifier.train import fit_and_score
    from .evaluation.metrics import metrics_record, submission_frame

    out = run.paths.classifier(kind, method, seed)
    if (out / "metrics.json").is_file():
        return  # done in an earlier, interrupted run
    d = run.data
    val, test, test_frame = _val_test(run)
    fit = fit_and_score(train, val, test, d.classes, method, run.cfg, seed, run.device,
                        run.tracking)
    if not process_info().is_main:
        return
    fit.model.save(out, run.cfg.classifier.backbone)
    # the classes that have training images: what the official scorer accepts against a split's truth file
    write_csv(out / "predictions_test.csv", submission_frame(test_frame["image"], fit.test_proba, d.classes,
                                                              d.classes))
    write_json(out / "metrics.json", metrics_record(kind, method, seed, fit, train.labels, d.classes, **extra))
    log.info("%s %s seed %d: val bacc %.3f, test bacc %.3f (%.0f s)", kind, method, seed,
             fit.val["balanced_accuracy"], fit.test["balanced_accuracy"], fit.seconds)


@STAGES.register("train-baseline")
def train_baseline(run: Run) -> None:
    from .classifier.mixing import TrainingSet

    t0 = time.time()
    train = run.data.split("train")
    for method in run.cfg.classifier.methods:
        for seed in run.cfg.classifier.seeds:
            _train_and_save(run, "baseline", method, seed, TrainingSet.real(train.images, train.labels),
                            {"synthetic_images": 0})
    run.mark("train-baseline", t0)


@STAGES.register("train-autoencoder")
def train_autoencoder(run: Run) -> None:
    """Latent diffusion only: train the autoencoder on the training split (or take diffusion.vae), then
    measure its reconstruction PSNR on the validation split and keep a few reconstructions."""
    from .evaluation.plots import image_grid
    from .generator.autoencoder import decode, encode, pretrained_autoencoder, reconstruction_psnr
    from .generator.autoencoder import train_autoencoder as train
    from .utils.training import to_model_range, to_uint8

    t0 = time.time()
    if run.cfg.diffusion.space != "latent":
        run.mark("train-autoencoder", t0, skipped="pixel-space diffusion")
        return
    if run.cfg.diffusion.vae or run.cfg.diffusion.pretrained:
        vae = pretrained_autoencoder(run.cfg.diffusion.vae or run.cfg.diffusion.pretrained,
                                     run.data.split("train").images, run.paths.autoencoder / "vae", run.cfg.seed,
                                     run.device, process_info().is_main)
    else:
        vae = train(run.data.split("train").images, run.cfg.autoencoder, run.paths.autoencoder, run.cfg.seed,
                    run.device, resume=True, tracking=run.tracking)
    if not process_info().is_main:
        return
    val = run.data.split("val").images
    value = reconstruction_psnr(vae, val)
    write_json(run.paths.autoencoder / "metrics.json", {"val_psnr_db": value,
                                                        "pretrained": run.cfg.diffusion.vae or run.cfg.diffusion.pretrained,
                                                        "scaling_factor": vae.config.scaling_factor})
    x = to_model_range(val[:8]).to(vae.device)
    image_grid([("validation", [val[:8], to_uint8(decode(vae, encode(vae, x)))])],
               run.paths.autoencoder / "reconstructions.png", 8, titles=("real", "reconstructed"))
    log.info("autoencoder: validation PSNR %.2f dB", value)
    run.mark("train-autoencoder", t0, val_psnr_db=value)


def _autoencoder(run: Run):
    from .generator.autoencoder import load_vae

    if run.cfg.diffusion.space != "latent":
        return None
    kept = run.paths.autoencoder / "vae"  # trained here, or a TAESD autoencoder with the scale fitted here
    if kept.is_dir() and not run.cfg.diffusion.pretrained:
        return load_vae(kept, run.device)
    return load_vae(run.cfg.diffusion.vae or run.cfg.diffusion.pretrained, run.device)


@STAGES.register("train-diffusion")
def train_diffusion(run: Run) -> None:
    from .generator.train import train_diffusion as train

    t0 = time.time()
    tr = run.data.split("train")
    train(tr.images, tr.labels, tr.masks, len(run.data.classes), run.cfg.diffusion, run.paths.diffusion,
          run.cfg.seed, run.device, resume=True, tracking=run.tracking, vae=_autoencoder(run),
          latent_cache=run.cfg.data.cache_dir or run.paths.cache)  # folds share the data cache, and so the latents
    run.mark("train-diffusion", t0)


def deficits(run: Run) -> dict[int, int]:
    from .generator.generate import class_deficits

    return class_deficits(run.data.split("train").labels, run.data.classes, run.cfg.generate)


@STAGES.register("generate")
def generate(run: Run) -> None:
    from .generator.generate import collect_shards, make_plan
    from .generator.generate import generate as make

    t0 = time.time()
    proc = process_info()
    tr = run.data.split("train")
    if proc.is_main and not run.paths.plan.is_file():
        write_csv(run.paths.plan, make_plan(tr.frame, run.data.classes, deficits(run), run.cfg.generate))
    proc.barrier()
    plan = read_table(run.paths.plan)
    if len(plan) == 0:  # the augmented row then trains on the real images alone
        log.warning("generate: no class of generate.classes (%s) is under its target (generate.target: %s): "
                    "nothing to generate", run.cfg.generate.classes, run.cfg.generate.target)
    log.info("generate: %d images for %s", len(plan), {k: int(v) for k, v in plan["class"].value_counts().items()})
    make(plan, tr.images, tr.masks, run.paths.checkpoint, run.paths.synthetic, run.cfg.generate, run.device,
         proc.rank, proc.world)
    proc.barrier()
    if proc.is_main:
        if not run.paths.manifest.is_file():  # the last shard was another process's, or the plan is empty
            shards = collect_shards(run.paths.synthetic, math.ceil(len(plan) / run.cfg.generate.shard_size))
            write_csv(run.paths.manifest, shards if shards is not None and len(shards) else plan)
        log_samples(run, read_table(run.paths.manifest))
        run.mark("generate", t0, images=len(plan))


def log_samples(run: Run, manifest: pd.DataFrame, per_class: int = 16) -> None:
    """A few synthetic images of each class to the tracker (``--report-to``), if any."""
    from .generator.generate import load_synthetic
    from .utils.training import log_images

    if run.cfg.report_to and len(manifest):
        log_images(run.tracking, "synthetic_samples",
                   {f"synthetic/{c}": load_synthetic(run.paths.synthetic, g.head(per_class))
                    for c, g in manifest.groupby("class")})


@STAGES.register("select")
def select(run: Run) -> None:
    from .generator.generate import load_synthetic
    from .selection.judge import class_fidelity
    from .selection.selector import select_synthetic

    t0 = time.time()
    manifest = read_table(run.paths.manifest)
    if len(manifest) == 0:
        write_csv(run.paths.selection, manifest.assign(score=[], eligible=[], used=[], reason=[]))
        run.mark("select", t0, eligible=0, used=0)
        return
    tr, va = run.data.split("train"), run.data.split("val")
    model, synthetic, labels = feature_model(run), load_synthetic(run.paths.synthetic, manifest), manifest["label"].to_numpy()
    table, calibration = select_synthetic(
        model, (tr.images, tr.labels), (va.images, va.labels), synthetic, labels,
        manifest["context_index"].to_numpy(), deficits(run), run.cfg.select, run.data.classes,
        run.cfg.experimental)
    table["predicted_class"], calibration["fidelity"] = class_fidelity(model, synthetic, labels, va, run.data.classes)
    calibration["feature_model"] = feature_model_quality(run)
    write_json(run.paths.calibration, calibration)
    table = pd.concat([manifest, table], axis=1)
    write_csv(run.paths.selection, table)
    funnel = table.groupby("class").agg(generated=("eligible", "size"), eligible=("eligible", "sum"),
                                        used=("used", "sum"))
    log.info("select: %s", funnel.to_dict("index"))
    run.mark("select", t0, eligible=int(table["eligible"].sum()), used=int(table["used"].sum()),
             realism_auroc=calibration.get("realism_auroc", {}))


@STAGES.register("train-augmented")
def train_augmented(run: Run) -> None:
    from .classifier.mixing import synthetic_labels, with_repeated_real, with_synthetic
    from .generator.generate import load_synthetic

    t0 = time.time()
    mix = run.cfg.mixing
    method = best_baseline(run) if mix.method == "best" else mix.method
    tr = run.data.split("train")
    if mix.fill_with == "real":  # the control: each class's deficit filled with its own real images, repeated
        train = with_repeated_real(tr.images, tr.labels, deficits(run), run.cfg.seed)
        added = {"synthetic_images": 0, "repeated_real": len(train.labels) - len(tr.labels)}
    else:
        table = read_table(run.paths.selection)
        used = table[table["used"].astype(bool)].reset_index(drop=True) if len(table) else table
        train = with_synthetic(tr.images, tr.labels, load_synthetic(run.paths.synthetic, used) if len(used) else None,
                               used["label"].to_numpy() if len(used) else np.zeros(0, int),
                               run.cfg.experimental.synthetic_max_ratio,
                               **synthetic_labels(used, run.data.classes, run.cfg.experimental))
        added = {"synthetic_images": int(train.synthetic.sum())}
    for seed in run.cfg.classifier.seeds:
        _train_and_save(run, "augmented", method, seed, train, added)
    run.mark("train-augmented", t0, method=method, **added)


@STAGES.register("evaluate")
def evaluate(run: Run) -> None:
    from .evaluation.metrics import results_table, summarise, truth_frame

    t0 = time.time()
    records = [read_json(fit / "metrics.json") for *_, fit in run.paths.fits(file="metrics.json")]
    if not records:
        raise RunDirError("no trained classifiers to evaluate")
    results = results_table(records)
    write_csv(run.paths.results, results)
    test = run.data.split("test")
    write_csv(run.paths.results.parent / "truth_test.csv", truth_frame(test.frame["image"], test.labels,
                                                                       run.data.classes))
    predictions = {}
    for _, row in results.iterrows():  # per model, the test probabilities of each seed, in the class order
        frame = read_table(run.paths.classifier(row["kind"], row["method"], row["seed"]) / "predictions_test.csv")
        frame = frame.set_index("image").loc[test.frame["image"]]
        predictions.setdefault(row["model"], []).append(frame[run.data.classes].to_numpy())
    write_json(run.paths.summary, summarise(results, predictions=predictions, y_true=test.labels,
                                            classes=run.data.classes))
    run.mark("evaluate", t0)


@STAGES.register("report")
def report(run: Run) -> None:
    from .evaluation.report import write_report

    t0 = time.time()
    path = write_report(run, STAGES.names())
    run.mark("report", t0, report=str(path))


# stages that only the main process runs under `accelerate launch`; the others share the work
MAIN_ONLY = {"prepare", "select", "evaluate", "report"}
# what the real-oversampling control (mixing.fill_with: real) skips: it needs no generator
GENERATOR_STAGES = ("train-autoencoder", "train-diffusion", "generate", "select")


def run_stage(run: Run, stage: str, force: bool = False) -> None:
    proc = process_info()
    if run.is_done(stage) and not force:
        log.info("stage %s: already done, skipping", stage)
        return
    log.info("stage %s ...", stage)
    if stage in GENERATOR_STAGES and run.cfg.mixing.fill_with == "real":
        if proc.is_main:
            run.mark(stage, time.time(), skipped="mixing.fill_with: real (the control needs no generator)")
        proc.barrier()
        return
    if stage in MAIN_ONLY:
        if proc.is_main:
            STAGES.get(stage)(run)
        proc.barrier()
        run.forget_data()  # re-read what the main process wrote
    else:
        STAGES.get(stage)(run)
        proc.barrier()


def run_all(run: Run, stages: list[str] | None = None) -> None:
    for stage in stages or list(STAGES):
        run_stage(run, stage)
