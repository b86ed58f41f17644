"""A finished run's classifiers on new data: predict (ISIC submission files), evaluate on external sets, the official scorer."""
import json

import numpy as np
import pandas as pd
import pytest

from tailfill.cli import main
from tailfill.data.sources import ISIC2019_CLASSES


def test_predict_new_images_as_a_submission(finished_run, tmp_path, capsys):
    run, _ = finished_run
    folder = tmp_path / "new"
    folder.mkdir()
    src = sorted((run / "demo_data" / "ISIC_2019_Training_Input").glob("*.jpg"))[:5]
    for p in src:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "preds.csv"
    assert main(["predict", "--run-dir", str(run), "--images", str(folder), "--out", str(out), "--ensemble"]) == 0
    frame = pd.read_csv(out, dtype={"image": str})
    assert list(frame.columns) == ["image"] + ISIC2019_CLASSES  # the official test-set format, UNK included
    assert frame["image"].tolist() == [p.stem for p in src]
    np.testing.assert_allclose(frame[ISIC2019_CLASSES].sum(axis=1), 1, atol=1e-4)
    # the same images through the run's test pipeline give the same probabilities (same resize, normalisation)
    from tailfill.predict import predict_proba
    from tailfill.run import Run

    r = Run.open(run)
    test = r.data.split("test")
    _, direct = predict_proba(r, test.images[:3], "augmented", ensemble=False)
    saved = pd.read_csv(next(run.glob("classifier/augmented/*/seed_0/predictions_test.csv")), dtype={"image": str})
    np.testing.assert_allclose(direct, saved.set_index("image").loc[test.frame["image"][:3], r.data.classes], atol=1e-5)
    (folder / "broken.jpg").write_bytes(b"not an image")
    assert main(["predict", "--run-dir", str(run), "--images", str(folder), "--out", str(out)]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["predict", "--run-dir", str(run), "--images", str(folder), "--out", str(out),
                 "--model", "magic"]) == 2
    assert "no trained classifier baseline:magic" in capsys.readouterr().err


def test_evaluate_on_an_external_labelled_set(finished_run):
    run, _ = finished_run
    assert main(["evaluate", "--run-dir", str(run), "--data-root", str(run / "demo_data"), "--name", "ext"]) == 0
    out = run / "results" / "external" / "ext"
    summary = json.loads((out / "summary.json").read_text())
    augmented = "augmented:" + next((run / "classifier" / "augmented").iterdir()).name
    assert augmented in summary["models"] and len(summary["models"]) == 2  # and the best baseline
    for stats in summary["models"].values():
        ba = stats["balanced_accuracy"]
        assert 0 <= ba["low"] <= ba["mean"] <= ba["high"] <= 1
    assert (out / "confusion.png").stat().st_size > 1000 and (out / "results.csv").is_file()
    assert main(["report", "--run-dir", str(run), "--force"]) == 0
    assert "## External evaluation: ext" in (run / "report" / "report.md").read_text()


def test_evaluate_on_a_ham10000_layout_folder(finished_run):
    """A hospital's export in HAM10000's layout scores the same images to the same numbers as the ISIC one."""
    import shutil

    from tailfill.data.sources import ISIC2019_GT, ISIC2019_IMAGES

    run, _ = finished_run
    src, ham = run / "demo_data", run.parent / "ham_export"
    gt = pd.read_csv(src / ISIC2019_GT)
    shutil.copytree(src / ISIC2019_IMAGES, ham / "HAM10000_images_part_1")
    labels = np.array(ISIC2019_CLASSES)[gt[ISIC2019_CLASSES].to_numpy().argmax(1)]
    pd.DataFrame({"lesion_id": gt["image"], "image_id": gt["image"], "dx": "nv"}).to_csv(
        ham / "HAM10000_metadata.csv", index=False)
    pd.DataFrame({"image_id": gt["image"], "isic2019_label": labels}).to_csv(ham / "isic2019_labels.csv", index=False)
    assert main(["evaluate", "--run-dir", str(run), "--data-root", str(src), "--name", "as_isic"]) == 0
    assert main(["evaluate", "--run-dir", str(run), "--data-root", str(ham), "--data-kind", "ham10000",
                 "--name", "as_ham"]) == 0
    a, b = (json.loads((run / "results" / "external" / n / "summary.json").read_text()) for n in ("as_isic", "as_ham"))
    assert b["kind"] == "ham10000" and b["images"] == a["images"] == len(gt)
    assert {m: s["balanced_accuracy"]["mean"] for m, s in a["models"].items()} == \
        {m: s["balanced_accuracy"]["mean"] for m, s in b["models"].items()}


def test_official_scorer_agrees_with_tailfill(finished_run):
    scoring = pytest.importorskip("isic_challenge_scoring")
    if not hasattr(pd.DataFrame, "applymap"):  # the scorer still calls applymap, removed in pandas 3
        pd.DataFrame.applymap = pd.DataFrame.map
    run, _ = finished_run
    truth = run / "results" / "truth_test.csv"
    for pred in sorted(run.glob("classifier/*/*/seed_*/predictions_test.csv")):
        metrics = json.loads((pred.parent / "metrics.json").read_text())["test"]
        score = scoring.ClassificationScore.from_file(truth, pred, scoring.ClassificationMetric.BALANCED_ACCURACY)
        out = score.to_dict()
        assert abs(out["aggregate"]["balanced_accuracy"] - metrics["balanced_accuracy"]) < 1e-12
        for name, pc in metrics["per_class"].items():
            assert abs(out["per_category"]["auc"][name] - pc["auc"]) < 1e-12, name
