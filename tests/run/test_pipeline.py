"""The whole pipeline end to end: every stage, resume, protection of the run directory, cross-validation, processes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from tailfill.cli import main
from tailfill.data.sources import ISIC2019_CLASSES
from tailfill.stages import STAGES

from conftest import write_config

def test_every_stage_ran_and_wrote_its_artefacts(finished_run):
    run, _ = finished_run
    for stage in STAGES:
        assert (run / "stages" / f"{stage}.json").is_file(), stage
    for rel in ("config.yaml", "data/splits.csv", "report/report.html", "report/training.png", "synthetic/manifest.csv", "selection/selection.csv",
                "results/results.csv", "results/summary.json", "report/report.md", "report/gains.png",
                "report/confusion.png", "report/samples.png", "report/ood_scores.png",
                "diffusion/checkpoint/unet_ema/diffusion_pytorch_model.safetensors"):
        assert (run / rel).is_file(), rel
    report = (run / "report" / "report.md").read_text()
    assert "## Results" in report and "augmented:" in report and "## Training curves" in report
    page = (run / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == report.count("![")  # every plot inline: one file to share
    assert "<table>" in page and "src=\"gains.png\"" not in page
    assert (run / "report" / "training.png").stat().st_size > 1000


def test_select_records_class_fidelity_beside_real_images(finished_run):
    run, _ = finished_run
    selection = pd.read_csv(run / "selection" / "selection.csv")
    classes = set(json.loads((run / "data" / "dataset.json").read_text())["classes"])
    assert set(selection["predicted_class"]) <= classes
    fidelity = json.loads((run / "selection" / "calibration.json").read_text())["fidelity"]
    assert set(fidelity) == set(selection["class"])
    for cls, v in fidelity.items():  # the share of that class's synthetic images read as the class
        share = (selection.loc[selection["class"] == cls, "predicted_class"] == cls).mean()
        assert v["synthetic"] == pytest.approx(share) and 0 <= v["real_val"] <= 1
    assert "Class fidelity" in (run / "report" / "report.md").read_text()


def test_prepared_splits_stay_on_disk(finished_run):
    """Every stage after prepare reads the saved cache batch by batch: a split is an index into it, not a
    copy, and its masks are binary uint8 (a quarter of float32)."""
    from tailfill.data.rows import NpyRows
    from tailfill.run import Run
    from tailfill.config import load_config

    run_dir, cfg = finished_run
    cfg = load_config(cfg)
    data = Run(cfg).data
    images, masks = np.asarray(data.images), np.asarray(data.masks)
    assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1} and masks.any()
    train = data.split("train")
    assert isinstance(train.images, NpyRows) and isinstance(train.masks, NpyRows)
    np.testing.assert_array_equal(np.asarray(train.images), images[train.selector])
    np.testing.assert_array_equal(train.masks[[0, -1]], masks[train.selector][[0, -1]])


def test_metrics_are_sane(finished_run):
    run, _ = finished_run
    results = pd.read_csv(run / "results" / "results.csv")
    assert set(results["kind"]) == {"baseline", "augmented"}
    assert results["balanced_accuracy"].between(0, 1).all()
    # better than guessing: the demo classes are learnable even in 3 tiny epochs
    assert results.loc[results["kind"] == "baseline", "balanced_accuracy"].max() > 1.5 / 8
    # and each figure is what the saved predictions give: argmax against the truth file, per class
    truth = pd.read_csv(run / "results" / "truth_test.csv").set_index("image")
    for _, row in results.iterrows():
        pred = pd.read_csv(run / "classifier" / row["kind"] / row["method"] / f"seed_{row['seed']}"
                           / "predictions_test.csv").set_index("image").loc[truth.index]
        classes = list(truth.columns)
        y, p = truth.to_numpy().argmax(1), pred[classes].to_numpy().argmax(1)
        recalls = [np.mean(p[y == c] == c) for c in range(len(classes)) if (y == c).any()]
        assert row["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-9)
        for c, name in enumerate(classes):
            if (y == c).any():
                assert row[f"recall_{name}"] == pytest.approx(np.mean(p[y == c] == c), abs=1e-9)


def test_provenance_and_leakage_guards(finished_run):
    run, _ = finished_run
    splits = pd.read_csv(run / "data" / "splits.csv", dtype={"image": str, "lesion_id": str})
    assert (splits.groupby("lesion_id")["split"].nunique() == 1).all(), "a lesion spans splits"
    manifest = pd.read_csv(run / "synthetic" / "manifest.csv")
    assert len(manifest) > 0
    for col in ("file", "mask_file", "class", "source_image", "seed", "sampler", "steps", "guidance_scale",
                "strength", "checkpoint", "weights_sha256", "mask_source"):
        assert col in manifest.columns and manifest[col].notna().all(), col
    train_ids = set(splits.loc[splits["split"] == "train", "image"])
    assert set(manifest["source_image"]) <= train_ids  # contexts come from training images only
    assert all((run / "synthetic" / f).is_file() for f in manifest["file"])
    # synthetic images reach training only: predictions cover exactly the real test images
    test_ids = set(splits.loc[splits["split"] == "test", "image"])
    for pred in run.glob("classifier/*/*/seed_*/predictions_test.csv"):
        frame = pd.read_csv(pred, dtype={"image": str})
        trained = [c for c in ISIC2019_CLASSES if c != "UNK"]  # a split of training data has no UNK
        assert list(frame.columns) == ["image"] + trained
        assert set(frame["image"]) == test_ids
        np.testing.assert_allclose(frame[trained].sum(axis=1), 1, atol=1e-4)
    selection = pd.read_csv(run / "selection" / "selection.csv")
    assert not (selection["used"] & ~selection["eligible"]).any()
    # eligible = every filter passed; used = at most each class's deficit of them
    assert (selection["eligible"] == (selection["within_threshold"] & ~selection["too_typical"]
                                      & selection["within_keep_fraction"] & ~selection["near_copy"])).all()
    aug = json.loads(next(run.glob("classifier/augmented/*/seed_0/metrics.json")).read_text())
    real = json.loads(next(run.glob("classifier/baseline/ce/seed_0/metrics.json")).read_text())
    extra = np.array(aug["train_counts"]) - np.array(real["train_counts"])
    classes = json.loads((run / "data" / "dataset.json").read_text())["classes"]
    used = selection[selection["used"]]["class"].value_counts()
    assert extra.tolist() == [int(used.get(c, 0)) for c in classes]
    # the OOD threshold was calibrated on the validation split, never on test
    cal = json.loads((run / "selection" / "calibration.json").read_text())
    val_counts = splits[splits["split"] == "val"]["class"].value_counts()
    assert {k: len(v) for k, v in cal["val_scores"].items()} == {k: int(v) for k, v in val_counts.items()}


def test_run_dir_is_protected_and_resume_checks_config(finished_run, capsys):
    run, cfg = finished_run
    assert main(["run", "--config", str(cfg)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", "--config", str(cfg), "--resume"]) == 0  # all done: nothing to redo
    assert main(["run", "--config", str(cfg), "--resume", "--set", "diffusion.lr=0.1"]) == 2
    assert "config differs in diffusion" in capsys.readouterr().err


def test_generation_skips_finished_shards(finished_run):
    run, _ = finished_run
    shards = sorted((run / "synthetic" / "shards").glob("shard_*.csv"))
    assert len(shards) >= 2
    manifest = pd.read_csv(run / "synthetic" / "manifest.csv")
    first = pd.read_csv(shards[0])
    kept_file = run / "synthetic" / first["file"].iloc[0]
    mtime = kept_file.stat().st_mtime_ns
    redo = pd.read_csv(shards[-1])
    lost = run / "synthetic" / redo["file"].iloc[0]
    before = lost.read_bytes()
    shards[-1].unlink()  # as if killed while writing the last shard
    lost.unlink()
    assert main(["generate", "--run-dir", str(run), "--force"]) == 0
    assert kept_file.stat().st_mtime_ns == mtime  # finished shards were not redone
    assert lost.read_bytes() == before  # the redone image is the same image: seeds are per image
    pd.testing.assert_frame_equal(pd.read_csv(run / "synthetic" / "manifest.csv"), manifest)


def test_stage_commands_need_a_run(tmp_path, capsys):
    assert main(["select", "--run-dir", str(tmp_path / "none")]) == 2
    assert "not a tailfill run directory" in capsys.readouterr().err


def test_bad_dataset_gives_one_clear_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "r"), "data": {"kind": "isic2019",
                                                                         "root": str(tmp_path / "nowhere")}}))
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "ISIC_2019_Training_GroundTruth.csv" in err and "Traceback" not in err


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tailfill", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    extra = {"diffusion__train_steps": 150, "diffusion__checkpoint_every": 10}
    straight = write_config(tmp_path / "a.yaml", tmp_path / "a", **extra)
    interrupted = write_config(tmp_path / "b.yaml", tmp_path / "b", **extra)
    p = _cli("run", "--config", str(straight))
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out

    p = _cli("run", "--config", str(interrupted))
    state = tmp_path / "b" / "diffusion" / "checkpoint" / "state.pt"
    deadline = time.time() + 300
    while not state.is_file() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # no chance to clean up
    p.wait()
    assert not (tmp_path / "b" / "stages" / "train-diffusion.json").is_file(), "killed too late to test resume"
    p = _cli("run", "--config", str(interrupted), "--resume")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert "resuming from step" in out

    from tailfill.utils.io import load_tensors

    for sub in ("unet", "unet_ema"):
        a = load_tensors(tmp_path / "a" / "diffusion/checkpoint" / sub / "diffusion_pytorch_model.safetensors")
        b = load_tensors(tmp_path / "b" / "diffusion/checkpoint" / sub / "diffusion_pytorch_model.safetensors")
        for k in a:
            np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-4, atol=1e-5)
    ma = pd.read_csv(tmp_path / "a" / "synthetic" / "manifest.csv").drop(columns=["checkpoint", "weights_sha256"])
    mb = pd.read_csv(tmp_path / "b" / "synthetic" / "manifest.csv").drop(columns=["checkpoint", "weights_sha256"])
    pd.testing.assert_frame_equal(ma, mb)
    sa = pd.read_csv(tmp_path / "a" / "selection" / "selection.csv")
    sb = pd.read_csv(tmp_path / "b" / "selection" / "selection.csv")
    assert sa["used"].sum() == sb["used"].sum()


def test_generation_shards_split_across_processes(finished_run, tmp_path):
    """Under `accelerate launch` process r makes shards r, r+world, ...; together they make the same set."""
    from tailfill.generator.generate import generate
    from tailfill.utils.io import read_table
    from tailfill.run import Run

    run = Run.open(finished_run[0])
    train = run.data.split("train")
    plan = read_table(run.paths.plan)
    args = (plan, train.images, train.masks, run.paths.checkpoint, tmp_path, run.cfg.generate)
    assert len(generate(*args, rank=1, world=2)) == 0  # rank 0's shards are still missing
    done = sorted(p.name for p in (tmp_path / "shards").glob("*.csv"))
    assert done and all(int(n[6:11]) % 2 == 1 for n in done)
    manifest = generate(*args, rank=0, world=2)
    reference = read_table(run.dir / "synthetic" / "manifest.csv")
    assert manifest["file"].tolist() == reference["file"].tolist()
    for f in reference["file"]:
        assert (tmp_path / f).read_bytes() == (run.dir / "synthetic" / f).read_bytes()


def test_augmented_training_caps_synthetic_images_per_class(finished_run, tmp_path):
    """experimental.synthetic_max_ratio (this broke with pandas 3, whose groupby.apply drops the key column)."""
    import shutil

    from tailfill.utils.io import write_text
    from tailfill.run import Run
    from tailfill.stages import train_augmented

    copy = tmp_path / "run"
    shutil.copytree(finished_run[0], copy)
    run = Run.open(copy)
    run.cfg.experimental.synthetic_max_ratio = 0.5
    run.cfg.classifier.epochs = 1
    write_text(run.paths.config, run.cfg.to_yaml())
    shutil.rmtree(run.paths.classifiers / "augmented")
    train_augmented(run)
    counts = np.array(json.loads(next((copy / "classifier" / "augmented").glob("*/seed_0/metrics.json"))
                                 .read_text())["train_counts"])
    real = np.bincount(run.data.split("train").labels, minlength=len(counts))
    used = pd.read_csv(copy / "selection" / "selection.csv").query("used")["label"].value_counts()
    for c in range(len(counts)):
        assert counts[c] - real[c] == min(int(used.get(c, 0)), int(0.5 * real[c]))


@pytest.mark.slow
def test_two_fold_cross_validation(tmp_path, capsys):
    cfg = write_config(tmp_path / "cv.yaml", tmp_path / "cv", data__folds=2, classifier__methods=["ce"],
                       classifier__epochs=2, diffusion__train_steps=10)
    assert main(["run", "--config", str(cfg)]) == 0
    assert "cross-validation finished" in capsys.readouterr().out
    root = tmp_path / "cv"
    tests = []
    for fold in (0, 1):
        splits = pd.read_csv(root / f"fold_{fold}" / "data" / "splits.csv", dtype={"image": str, "lesion_id": str})
        assert (splits.groupby("lesion_id")["split"].nunique() == 1).all()
        tests.append(set(splits.loc[splits["split"] == "test", "image"]))
        assert (root / f"fold_{fold}" / "diffusion" / "checkpoint").is_dir()  # its own generator
    assert not tests[0] & tests[1]  # the folds' test splits are disjoint
    results = pd.read_csv(root / "results" / "cv_results.csv")
    assert set(results["fold"]) == {0, 1} and set(results["kind"]) == {"baseline", "augmented"}
    summary = json.loads((root / "results" / "cv_summary.json").read_text())
    for stats in summary.values():
        assert stats["folds"] == 2
        ba = stats["balanced_accuracy"]
        assert 0 <= ba["low"] <= ba["mean"] <= ba["high"] <= 1
    assert "cross-validation" in (root / "report" / "report.md").read_text()
    # resumable per fold: a finished fold is not redone
    marker = root / "fold_0" / "stages" / "train-baseline.json"
    mtime = marker.stat().st_mtime_ns
    assert main(["run", "--config", str(cfg), "--resume"]) == 0
    assert marker.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_two_processes_share_the_work_and_stay_in_sync(finished_run, tmp_path):
    """`torchrun --nproc-per-node 2 -m tailfill run` on CPU: one run directory, each stage once, DDP in sync."""
    cfg = write_config(tmp_path / "ddp.yaml", tmp_path / "ddp")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "-m", "tailfill", "run", "--config", str(cfg)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "ddp"
    assert done.stdout.count("run finished in") == 1  # one final table, from the main process
    log = (run / "log.txt").read_text()
    for stage in STAGES:
        assert (run / "stages" / f"{stage}.json").is_file()
        assert log.count(f"stage {stage} ...") == 1, stage
    info = json.loads((run / "diffusion" / "train_info.json").read_text())
    assert info["processes"] == 2 and len(set(info["weights_digest_per_rank"])) == 1
    assert len(info["weights_digest_per_rank"]) == 2
    for path in run.glob("classifier/*/*/seed_*/config.json"):
        digests = json.loads(path.read_text())["tailfill"]["weights_digest_per_rank"]
        assert len(digests) == 2 and len(set(digests)) == 1, path
    plan = pd.read_csv(run / "synthetic" / "plan.csv")
    shards = sorted((run / "synthetic" / "shards").glob("shard_*.csv"))
    assert len(shards) == -(-len(plan) // 8)  # every shard once (shard_size 8), made by one rank or the other
    manifest = pd.read_csv(run / "synthetic" / "manifest.csv")
    assert manifest["file"].tolist() == plan["file"].tolist()
    one = pd.read_csv(finished_run[0] / "synthetic" / "plan.csv")
    pd.testing.assert_frame_equal(plan, one)  # the same plan as a 1-process run (same split, same seeds)


def test_nothing_to_generate_leaves_the_augmented_row_on_real_images(finished_run, tmp_path, caplog):
    """A target every class already meets plans no image: generate, select and train-augmented still run
    (an empty plan once wrote a CSV without a header, which generate could not read back)."""
    import shutil

    from tailfill.run import Run
    from tailfill.stages import generate, select, train_augmented
    from tailfill.utils.io import read_table, write_text

    copy = tmp_path / "run"
    shutil.copytree(finished_run[0], copy)
    run = Run.open(copy)
    run.cfg.generate.target, run.cfg.classifier.epochs = 1, 1
    write_text(run.paths.config, run.cfg.to_yaml())
    for folder in (run.paths.synthetic, run.paths.selection.parent, run.paths.classifiers / "augmented"):
        shutil.rmtree(folder)
    generate(run)
    assert "nothing to generate" in caplog.text
    assert len(read_table(run.paths.plan)) == 0 and "class" in read_table(run.paths.plan).columns
    select(run)
    train_augmented(run)
    counts = json.loads(next((copy / "classifier" / "augmented").glob("*/seed_0/metrics.json")).read_text())["train_counts"]
    assert counts == np.bincount(run.data.split("train").labels, minlength=len(counts)).tolist()
