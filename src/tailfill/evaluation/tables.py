"""The report's tables: results with intervals, per-class gains, class fidelity, as Markdown."""
from __future__ import annotations

import numpy as np
import pandas as pd


def _fmt(stat: dict) -> str:
    if not stat or not np.isfinite(stat.get("mean", np.nan)):
        return "n/a"
    if np.isfinite(stat.get("low", np.nan)):
        return f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"
    return f"{stat['mean']:.3f}"


def summary_table(summary: dict, classes: list) -> pd.DataFrame:
    """One row per model: balanced accuracy (mean [95 % CI over seeds]), that of the seeds' ensemble (the
    mean probability, ``tailfill predict --ensemble``) when there is one, and per-class recall."""
    rows = []
    for model, s in summary.items():
        row = {"model": model, "seeds": s["seeds"], "balanced_acc": _fmt(s["balanced_accuracy"]),
               "macro_f1": _fmt(s["macro_f1"])}
        if "ensemble" in s:
            row["ensemble_balanced_acc"] = f"{s['ensemble']['balanced_accuracy']:.3f}"
        row.update({f"R_{c}": f"{s[f'recall_{c}']['mean']:.2f}" for c in classes if f"recall_{c}" in s})
        rows.append(row)
    return pd.DataFrame(rows)


def gains_table(results: pd.DataFrame, baseline: str, augmented: str, classes: list) -> pd.DataFrame:
    """Per-class recall of a baseline vs the augmented model (means over seeds), the gain and its sd over
    seeds (the two models paired by seed)."""
    b = results[results["model"] == baseline].set_index("seed")
    a = results[results["model"] == augmented].set_index("seed")
    seeds = b.index.intersection(a.index)
    rows = []
    for c in classes + ["balanced_accuracy"]:
        col = c if c == "balanced_accuracy" else f"recall_{c}"
        paired = (a.loc[seeds, col] - b.loc[seeds, col]) if len(seeds) else pd.Series(dtype=float)
        rows.append({"class": c if c != "balanced_accuracy" else "balanced accuracy",
                     "baseline": b[col].mean(), "augmented": a[col].mean(), "gain": a[col].mean() - b[col].mean(),
                     "gain_sd": float(paired.std(ddof=1)) if len(paired) > 1 else 0.0})
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)
                                        for v in r) + " |")
    return "\n".join(lines)


def fidelity_text(fidelity: dict) -> str:
    """``DF 0.62 (0.80), ...``: synthetic images called their class, and (in brackets) real validation ones."""
    def share(v):
        return "-" if v is None else f"{v:.2f}"

    return ", ".join(f"{c} {share(v['synthetic'])} ({share(v['real_val'])})" for c, v in fidelity.items())
