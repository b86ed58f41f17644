"""Wall time of the demo (`tailfill run`, every stage, default config) for this tree against another
tailfill source tree, runs alternated (A B A B ...) on one machine in one sitting; medians compared.

    git worktree add /tmp/tailfill-old 871963f          # the version to compare with
    python benchmarks/demo_speed.py --compare before=/tmp/tailfill-old/src --rounds 2

Absolute times vary several-fold between machines of one kind, so only the ratio of medians measured
in the same sitting says anything. The table also gives each run's stage times and its final table
(best baseline and augmented balanced accuracy), so a speed-up that cost quality would show.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run_demo(src: str, run_dir: Path) -> dict:
    """One demo run with tailfill imported from ``src``: wall seconds, stage seconds, final balanced accuracy."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "tailfill", "run", "--run-dir", str(run_dir), "--overwrite"],
                         env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True)
    wall = time.time() - t0
    if out.returncode:
        sys.exit(f"demo with {src} failed:\n{out.stderr[-3000:]}")
    row = {"wall s": round(wall)}
    for f in sorted((run_dir / "stages").glob("*.json")):
        row[f.stem + " s"] = round(json.loads(f.read_text()).get("seconds", float("nan")))
    summary = json.loads((run_dir / "results" / "summary.json").read_text())
    for kind in ("baseline", "augmented"):
        scores = {k: v["balanced_accuracy"]["mean"] for k, v in summary.items() if k.startswith(kind + ":")}
        if scores:
            best = max(scores, key=scores.get)
            row[f"{kind} bacc"] = round(scores[best], 3)
            row[kind] = best.split(":", 1)[1]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", required=True, metavar="NAME=SRC", help="the other tailfill source folder")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each, alternated")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "demo_speed")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance" / "demo_cpu.md")
    args = ap.parse_args()
    name, src = args.compare.split("=", 1)
    trees = [(name, src), ("this tree", str(ROOT / "src"))]  # the other first: any warm-up favours this tree less
    rows = []
    for r in range(args.rounds):
        for tree, path in trees:
            row = {"tailfill": tree, "round": r + 1, **run_demo(path, args.work / f"{tree.replace(' ', '_')}_{r}")}
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    medians = table.groupby("tailfill", sort=False)["wall s"].median()
    from tailfill.evaluation.tables import to_markdown

    text = (f"Produced by `python benchmarks/demo_speed.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')} "
            f"({os.cpu_count()} cores): `tailfill run` (the built-in demo, every stage), runs alternated.\n\n"
            + to_markdown(table.fillna("")) + "\n\n"
            + f"Median wall time: {name} {medians[name]:.0f} s, this tree {medians['this tree']:.0f} s; "
            + f"speed-up **{medians[name] / medians['this tree']:.2f}x**.\n")
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
