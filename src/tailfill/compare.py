"""``tailfill compare``: a sweep's tables, built from its runs' own results.

Every row is a model of the sweep: each distinct baseline (a baseline fit shared by several variants is one
row), each control variant (``mixing.fill_with: real``) and each synthetic variant, over its splits,
folds and seeds (pooled). A synthetic row is set against the strongest real-only row (baseline or control)
trained with the same classifier settings: the paired difference by (split, fold, seed), with a bootstrap
interval over those pairs.
Per pool (synthetic variant): the selection funnel, realism AUROC and class fidelity (how often the feature
classifier calls a synthetic image its own class, beside real validation images), over folds.

Writes ``<sweep>/compare.md`` and ``<sweep>/results.csv`` (``dataset, size, variant, model, role, split, fold,
seed, bacc, R_<class>, ...``).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .run import Run
from .utils.io import read_json, read_table, write_csv, write_text

log = logging.getLogger(__name__)


def _settings(cfg) -> str:
    """The classifier settings two rows must share to be compared (what the baselines read, bar method)."""
    from .sweep.keys import FIT_SETTINGS, _digest, _fields

    return _digest(_fields(cfg, FIT_SETTINGS))


def sweep_rows(spec) -> pd.DataFrame:
    """Every (variant, model, fold, seed) result of a sweep as one table."""
    from .sweep import baseline_keys

    rows, pending = [], []
    for name in spec.variants:
        for split, fold, cfg in spec.runs(name):
            run, settings = Run(cfg), _settings(cfg)
            if not run.paths.results.is_file():
                pending.append(str(run.dir.relative_to(spec.out)))
                continue
            results = read_table(run.paths.results)
            ensembles = {m: s["ensemble"]["balanced_accuracy"] for m, s in read_json(run.paths.summary).items()
                         if "ensemble" in s} if run.paths.summary.is_file() else {}
            fits = dict(zip([(m, s) for m in cfg.classifier.methods for s in cfg.classifier.seeds], baseline_keys(cfg)))
            for _, r in results.iterrows():
                augmented = r["kind"] == "augmented"
                role = ("control" if cfg.mixing.fill_with == "real" else "synthetic") if augmented else "baseline"
                rows.append({
                    "dataset": cfg.data.kind, "size": cfg.data.image_size, "variant": name if augmented else "",
                    "model": name if augmented else f"baseline:{r['method']}", "role": role, "method": r["method"],
                    "settings": settings, "split": -1 if split is None else split, "fold": fold,
                    "seed": int(r["seed"]), "ensemble_bacc": ensembles.get(r["model"]),
                    "fit": None if augmented else fits.get((r["method"], int(r["seed"]))),
                    "bacc": float(r["balanced_accuracy"]), "val_bacc": float(r["val_balanced_accuracy"]),
                    **{f"R_{c[len('recall_'):]}": float(r[c]) for c in results.columns if c.startswith("recall_")}})
    if pending:
        log.warning("compare: %d run(s) have no results yet and are left out: %s", len(pending),
                    ", ".join(pending[:6]) + (", ..." if len(pending) > 6 else ""))
    frame = pd.DataFrame(rows)
    if not len(frame):
        return frame
    # a baseline fit shared by several variants is one row of results, not several
    base = frame[frame["role"] == "baseline"].drop_duplicates(["fit"])
    frame = pd.concat([base, frame[frame["role"] != "baseline"]], ignore_index=True)
    if frame[frame["role"] == "baseline"].groupby("model")["settings"].nunique().max() > 1:
        tag = frame["settings"].str[:6]
        is_base = frame["role"] == "baseline"
        frame.loc[is_base, "model"] = frame.loc[is_base, "model"] + " [" + tag[is_base] + "]"
    return frame


def paired(a: pd.DataFrame, b: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a - b over the (split, fold, seed) pairs both have, a bootstrap interval over the pairs, and how
    many pairs went up."""
    keys = [k for k in ("split", "fold", "seed") if k in a and k in b]
    joined = a.set_index(keys)["bacc"].to_frame("a").join(b.set_index(keys)["bacc"].to_frame("b"), how="inner")
    d = (joined["a"] - joined["b"]).to_numpy()
    if not len(d):
        return {"pairs": 0}
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"pairs": len(d), "diff": float(d.mean()), "low": float(lo), "high": float(hi), "up": int((d > 0).sum())}


def comparison_table(frame: pd.DataFrame, tail: list[str]) -> pd.DataFrame:
    """One line per model: mean and sd over its runs, tail recalls, and for synthetic rows the paired
    difference against the strongest real-only row with the same classifier settings."""
    means = frame.groupby("model")["bacc"].mean()
    lines = []
    for model, g in frame.groupby("model", sort=False):
        ensemble = g["ensemble_bacc"].dropna() if "ensemble_bacc" in g else []
        line = {"model": model, "role": g["role"].iloc[0], "runs": len(g), "bacc": f"{g['bacc'].mean():.3f}",
                "sd": f"{g['bacc'].std(ddof=1):.3f}" if len(g) > 1 else "",
                "seed ensemble": f"{np.mean(ensemble):.3f}" if len(ensemble) else "",
                **{f"R_{c}": f"{g[f'R_{c}'].mean():.2f}" for c in tail if f"R_{c}" in g}}
        if line["role"] == "synthetic":
            real = frame[(frame["role"] != "synthetic") & (frame["settings"] == g["settings"].iloc[0])]
            if len(real):
                ref = means[real["model"].unique()].idxmax()
                p = paired(g, frame[frame["model"] == ref])
                line["reference"] = ref
                if p["pairs"]:
                    line["vs reference"] = f"{p['diff']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]"
                    line["up"] = f"{p['up']}/{p['pairs']}"
        lines.append(line)
    return pd.DataFrame(lines).astype(object).fillna("")


def fold_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Balanced accuracy of every model on each fold (mean over its seeds and splits) and over the folds; empty
    unless the runs have two folds or more. A fold a model has not run yet is blank and left out of its mean."""
    if frame["fold"].nunique() < 2:
        return pd.DataFrame()
    by_fold = frame.groupby(["model", "fold"], sort=False)["bacc"].mean().unstack("fold")
    by_fold = by_fold.reindex(index=frame["model"].unique(), columns=sorted(by_fold.columns))
    table = by_fold.map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    table.columns = [f"fold {f}" for f in by_fold.columns]
    table["folds run"] = by_fold.notna().sum(axis=1).astype(str)
    table["mean"] = by_fold.mean(axis=1).map(lambda v: f"{v:.3f}")
    return table.reset_index()


def pool_table(spec) -> pd.DataFrame:
    """The selection funnel and realism AUROC of every synthetic variant's pool, over its folds."""
    lines = []
    for name in spec.variants:
        if spec.config(name).mixing.fill_with == "real":
            continue
        runs = [Run(cfg) for _, _, cfg in spec.runs(name)]
        tables, auroc, real_fidelity = [], {}, {}
        for run in runs:
            if run.paths.selection.is_file():
                t = read_table(run.paths.selection)
                if len(t):
                    tables.append(t)
            if run.paths.marker("select").is_file():
                for cls, v in (read_json(run.paths.marker("select")).get("realism_auroc") or {}).items():
                    if v is not None:
                        auroc.setdefault(cls, []).append(v)
            if run.paths.calibration.is_file():
                for cls, v in (read_json(run.paths.calibration).get("fidelity") or {}).items():
                    if v.get("real_val") is not None:
                        real_fidelity.setdefault(cls, []).append(v["real_val"])
        if not tables:
            continue
        t = pd.concat(tables, ignore_index=True)
        for col in ("within_threshold", "near_copy", "eligible", "used"):
            t[col] = t[col].astype(str).str.lower().isin(["true", "1"])
        for cls, g in t.groupby("class"):
            lines.append({"pool": name, "class": cls, "generated": len(g), "within threshold": int(g["within_threshold"].sum()),
                          "not a near-copy": int((g["within_threshold"] & ~g["near_copy"]).sum()),
                          "eligible": int(g["eligible"].sum()), "used": int(g["used"].sum()),
                          "realism AUROC": f"{np.mean(auroc[cls]):.2f}" if cls in auroc else "",
                          # how often the feature classifier calls them their class; real validation images beside
                          "fidelity": f"{np.mean(g['predicted_class'] == cls):.2f}" if "predicted_class" in g else "",
                          "fidelity, real": f"{np.mean(real_fidelity[cls]):.2f}" if cls in real_fidelity else ""})
    return pd.DataFrame(lines)


def stage_times(spec) -> pd.DataFrame:
    """Seconds each stage took where it was computed (not linked from the store, not skipped), by the variant
    that computed it, over folds: a shared stage counts once. Classifier fits are timed one by one."""
    from .sweep.keys import STAGE_OUTPUTS

    rows, seen = [], set()
    for name in spec.variants:
        for split, fold, cfg in spec.runs(name):
            run = Run(cfg)
            for stage in STAGE_OUTPUTS:
                m = read_json(run.paths.marker(stage)) if run.paths.marker(stage).is_file() else {}
                unit = (stage, m.get("key"), split, fold)
                if m and not m.get("shared") and not m.get("skipped") and unit not in seen:
                    seen.add(unit)
                    rows.append({"stage": stage, "variant": name, "seconds": m["seconds"], "images": m.get("images")})
            for kind, method, seed, path in run.paths.fits(file="metrics.json"):
                m = read_json(path / "metrics.json")
                unit = (kind, method, seed, split, fold, "" if kind == "baseline" else name)
                if m.get("train_seconds") and unit not in seen:
                    seen.add(unit)
                    rows.append({"stage": f"{kind} fit: {method}", "variant": "" if kind == "baseline" else name,
                                 "seconds": m["train_seconds"], "images": None})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    lines = []
    for (stage, variant), g in frame.groupby(["stage", "variant"], sort=False):
        images = g["images"].dropna()
        lines.append({"stage": stage, "computed by": variant, "runs": len(g), "seconds": f"{g['seconds'].mean():.0f}",
                      "range": f"{g['seconds'].min():.0f}-{g['seconds'].max():.0f}" if len(g) > 1 else "",
                      "images": f"{images.mean():.0f}" if len(images) else ""})
    return pd.DataFrame(lines)


def compare(spec) -> str:
    """Write ``compare.md`` and ``results.csv`` in the sweep's directory; returns the Markdown."""
    from .evaluation.tables import to_markdown

    frame = sweep_rows(spec)
    if not len(frame):
        raise ValueError(f"no variant of the sweep in {spec.out} has results yet; run `tailfill sweep` first")
    recalls = [c[2:] for c in frame.columns if c.startswith("R_")]
    counts = frame.groupby("role").size().to_dict()
    tail = recalls[-4:] if len(recalls) > 4 else recalls
    train_counts = _train_counts(spec)
    if train_counts:
        tail = sorted(train_counts, key=train_counts.get)[:4]
    table = comparison_table(frame, tail)
    folds, pools, times = fold_table(frame), pool_table(spec), stage_times(spec)
    write_csv(spec.out / "results.csv", frame.drop(columns=["fit", "settings"]))
    lines = [f"# Sweep {spec.out.name}", "",
             f"{len(frame)} runs ({', '.join(f'{n} {r}' for r, n in counts.items())}); balanced accuracy on each "
             "run's test split, mean and sd over splits, folds and seeds (`seed ensemble`: each run's seeds scored "
             "as one model, averaged). A synthetic row's `vs reference` is its paired difference by (split, fold, "
             "seed) against the strongest real-only row (baseline or control) with the same "
             "classifier settings, with a 95 % bootstrap interval over those pairs; `up` counts the pairs it won. "
             f"Tail recalls: {', '.join(tail)}.", "", to_markdown(table), ""]
    if len(folds):
        lines += ["## By fold", "", "Balanced accuracy per fold (mean over seeds), and over the folds run.", "",
                  to_markdown(folds), ""]
    if len(pools):
        lines += ["## Pools: the selection funnel", "", to_markdown(pools), ""]
    if len(times):
        lines += ["## Stage times", "", "Seconds a stage took in the run that computed it (mean and range over "
                  "folds; a stage shared from the store counts once; `images`: images generated). Times are "
                  "the machine's and its load's at the time.", "", to_markdown(times), ""]
    lines += ["Every run is an ordinary run directory of the sweep (`<variant>/`, or `<variant>/fold_<i>/`); "
              "`results.csv` beside this page has one row per run.", ""]
    text = "\n".join(lines)
    write_text(spec.out / "compare.md", text)
    return text


def _train_counts(spec) -> dict:
    """Training images per class of the first prepared run (the tail is the classes with fewest)."""
    for name in spec.variants:
        for _, _, cfg in spec.runs(name):
            marker = Run(cfg).paths.marker("prepare")
            if marker.is_file():
                return (read_json(marker).get("counts") or {}).get("train", {})
    return {}
