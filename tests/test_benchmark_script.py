"""The real-data benchmark script runs end to end (tiny settings, generated images in ISIC layout)."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tailfill.data.demo import make_demo_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "longtail_isic.py"


@pytest.mark.slow
def test_benchmark_writes_its_tables_and_grid(tmp_path):
    root = make_demo_dataset(tmp_path / "isic", total=240, imbalance=2.0, size=32)
    out = tmp_path / "docs" / "benchmarks.md"
    cmd = [sys.executable, str(SCRIPT), "--root", str(root), "--sizes", "16", "--seeds", "0", "1",
           "--methods", "ce", "balanced_sampling", "--epochs", "1", "--diffusion-steps", "2", "--sample-steps", "2",
           "--oversample", "1.5", "--keep-fractions", "0.5", "1", "--test-per-class", "3", "--val-per-class", "3",
           "--imbalance", "5", "--ablations", "context=same,strength=0.5", "fill=0.5", "class_power=0",
           "--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for variant in ("| ce |", "| real_oversample |", "| synth_threshold |", "| synth_keep0.5 |", "| synth_keep1 |",
                    "| synth_threshold [context=same,strength=0.5] |", "| synth_threshold [fill=0.5] |",
                    "| synth_threshold [class_power=0] |"):
        assert variant in text, variant
    assert "realism AUROC" in text and "class fidelity" in text and "peak memory" in text
    assert (out.parent / "benchmarks" / "grid_16px.png").stat().st_size > 1000
    results = pd.read_csv(out.parent / "benchmarks" / "results.csv")
    assert set(results["seed"]) == {0, 1} and results["bacc"].between(0, 1).all()
    half = results[results["variant"] == "synth_threshold [fill=0.5]"]["synthetic"]
    full = results[results["variant"] == "synth_threshold"]["synthetic"]
    assert 0 < half.max() < full.min()  # fill=0.5 adds about half the images
    # the hand-written findings go on top when the doc is rebuilt from the saved sections
    (out.parent / "benchmarks" / "findings.md").write_text("## Findings\n\nhand-written\n")
    out.unlink()
    rebuilt = subprocess.run([sys.executable, str(SCRIPT), "--assemble-only", "--root", str(tmp_path / "nowhere"),
                              "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    text = out.read_text()
    assert text.index("hand-written") < text.index("## 16 px") < text.index("| synth_keep1 |")
