"""What every step shares: atomic files that follow the umask, progress as log lines, trackers."""
import os

import pytest

from tailfill.cli import main

from conftest import write_config

def test_written_files_follow_the_umask(tmp_path):
    from tailfill.utils.io import atomic_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_progress_becomes_log_lines_without_a_terminal(caplog):
    import logging

    from tailfill.utils.progress import progress

    with caplog.at_level(logging.INFO, logger="tailfill.progress"):
        with progress(total=50, desc="diffusion", unit="step") as bar:  # pytest's stderr is not a terminal
            for _ in range(50):
                bar.update(1)
                bar.set_postfix(loss="0.1234")
    lines = [r.getMessage() for r in caplog.records]
    assert 5 <= len(lines) <= 11 and lines[-1].startswith("diffusion: 50/50 step")
    assert "ETA" in lines[0] and "loss 0.1234" in lines[-1]
    with caplog.at_level(logging.INFO, logger="tailfill.progress"):
        caplog.clear()
        bar = progress(total=10, desc="quiet", disable=True)
        bar.update(10)
        bar.close()
    assert not caplog.records  # other processes stay silent


@pytest.mark.slow
def test_report_to_tensorboard_writes_curves_and_samples(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = write_config(tmp_path / "t.yaml", tmp_path / "run", classifier__methods=["ce"], classifier__epochs=2)
    assert main(["run", "--config", str(cfg), "--report-to", "tensorboard",
                 "--stages", "prepare,train-baseline,train-diffusion,generate"]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for events in (tmp_path / "run" / "tracking").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        tags[events.parent.name] = acc.Tags()
    assert "diffusion/loss" in tags["diffusion"]["scalars"]
    assert {"train/loss", "val/balanced_accuracy"} <= set(tags["classifier_ce_seed0"]["scalars"])
    assert any(t.startswith("synthetic/") for t in tags["synthetic_samples"]["images"])


def test_unknown_or_missing_tracker_fails_at_start(tmp_path, capsys):
    cfg = write_config(tmp_path / "t.yaml", tmp_path / "run")
    assert main(["run", "--config", str(cfg), "--set", "report_to=mlflow"]) == 2
    assert "unknown tracker 'mlflow'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
