"""Report: the results table (baselines vs augmented, per-class gains) and plots, as Markdown + PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, read_json, read_table, write_text


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


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_gains(gains: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    colors = ["tab:green" if g >= 0 else "tab:red" for g in gains["gain"]]
    ax.bar(gains["class"], gains["gain"], color=colors, yerr=gains.get("gain_sd"), capsize=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("class")
    ax.set_ylabel("test recall gain\n(augmented - baseline)")
    ax.set_title("per-class recall gain, mean over seeds (error bar: sd of the per-seed gain)", fontsize=8)
    ax.tick_params(axis="x", rotation=45)
    _savefig(fig, path)


def plot_confusions(matrices: dict, classes: list, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4))
    for ax, (title, cm) in zip(np.atleast_1d(axes), matrices.items()):
        cm = np.asarray(cm, dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        for i in range(len(classes)):
            for j in range(len(classes)):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    _savefig(fig, path)


def plot_ood_histograms(calibration: dict, selection: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = sorted(selection["class"].unique())
    fig, axes = plt.subplots(1, len(names), figsize=(3.5 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        s = selection[selection["class"] == name]
        real = np.asarray(calibration["val_scores"].get(name, []))
        bins = np.histogram_bin_edges(np.r_[real, s["score"]], bins=25)
        for values, label in ((real, "real (held-out)"), (s.loc[s["eligible"], "score"], "synthetic eligible"),
                              (s.loc[~s["eligible"], "score"], "synthetic rejected")):
            if len(values):
                ax.hist(values, bins=bins, alpha=0.6, density=True, label=label)
        ax.axvline(calibration["thresholds"][name], color="k", ls="--", lw=1, label="threshold (real quantile)")
        ax.set_xlabel("OOD score (higher = less like real images of the class)", fontsize=7)
        ax.set_ylabel("density", fontsize=7)
        auroc = calibration["realism_auroc"].get(name, float("nan"))
        ax.set_title(f"{name}  (real-vs-synthetic AUROC {auroc:.2f})", fontsize=8)
    axes[0][0].legend(fontsize=6)
    _savefig(fig, path)


def plot_training_curves(diffusion_history: list, classifier_histories: dict, path: Path) -> None:
    """Diffusion loss per step; classifier training loss and validation balanced accuracy per epoch."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    if diffusion_history:
        axes[0].plot([h["step"] for h in diffusion_history], [h["loss"] for h in diffusion_history])
    axes[0].set(title="inpainting diffusion", xlabel="training step", ylabel="loss (weighted eps MSE)")
    for name, hist in classifier_histories.items():
        epochs = [h for h in hist if isinstance(h.get("epoch"), int)]
        axes[1].plot([h["epoch"] for h in epochs], [h["loss"] for h in epochs], label=name)
        axes[2].plot([h["epoch"] for h in epochs], [h["val_balanced_accuracy"] for h in epochs], label=name)
    axes[1].set(title="classifiers (seed shown in legend)", xlabel="epoch", ylabel="training loss")
    axes[2].set(title="model selection", xlabel="epoch", ylabel="validation balanced accuracy")
    if classifier_histories:
        axes[2].legend(fontsize=6)
    _savefig(fig, path)


def markdown_to_html(markdown: str, image_dir: Path, title: str) -> str:
    """The report's Markdown (headings, paragraphs, tables, images) as one self-contained HTML page: images
    are inlined as base64, so the file can be mailed or attached as it is."""
    import base64
    import html as _html
    import re

    def inline(text: str) -> str:
        text = _html.escape(text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)

    body, table = [], []

    def flush_table():
        if table:
            head, rows = table[0], table[2:]
            cells = lambda r: [c.strip() for c in r.strip().strip("|").split("|")]  # noqa: E731
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells(head)) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(r)) + "</tr>" for r in rows)
                        + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        m = re.match(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())
        if m:
            data = base64.b64encode((image_dir / m.group(2)).read_bytes()).decode()
            body.append(f'<figure><img alt="{_html.escape(m.group(1))}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{inline(m.group(1))}</figcaption></figure>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#666}"
             ".warning{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")


GRID_PANELS = ("real", "mask", "synthetic eligible", "synthetic rejected")


def image_grid(rows: list[tuple[str, list]], path: Path, per_row: int = 6, titles: tuple = GRID_PANELS) -> None:
    """One figure row per class: its panels (lists of HxWx3 uint8 images) side by side as strips, titled
    ``titles``."""
    import matplotlib.pyplot as plt

    first = next((im for _, panels in rows for imgs in panels for im in imgs), None)
    blank = np.full(first.shape if first is not None else (8, 8, 3), 255, np.uint8)

    factor = max(1, -(-96 // blank.shape[0]))  # upsampled (nearest) to at least 96 px: readable at a glance

    def strip(imgs):
        imgs = list(imgs)[:per_row] + [blank] * max(0, per_row - len(imgs))
        return np.concatenate(imgs, axis=1).repeat(factor, axis=0).repeat(factor, axis=1)

    n_panels = max(len(p) for _, p in rows)
    width = 4.0  # inches per panel; a strip is per_row images wide and one tall, plus its title
    fig, axes = plt.subplots(len(rows), n_panels, figsize=(n_panels * width, len(rows) * (width / per_row + 0.3)),
                             squeeze=False)
    for axrow, (name, panels) in zip(axes, rows):
        for ax, title, imgs in zip(axrow, titles, panels):
            ax.imshow(strip(imgs))
            ax.set_title(f"{name}: {title}", fontsize=7)
            ax.axis("off")
    _savefig(fig, path)


def mask_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat((np.asarray(mask, np.float32)[..., None] > 0.5).astype(np.uint8) * 255, 3, axis=2)


def sample_grid(run, selection: pd.DataFrame, path: Path, per_row: int = 6) -> None:
    """Per generated class, one row each: real | synthetic masks | synthetic eligible | synthetic rejected."""
    from PIL import Image

    from .io import safe_join

    d = run.data
    frame = d.frame

    def load(files):
        return [np.asarray(Image.open(safe_join(run.paths.synthetic, f)).convert("RGB")) for f in files]

    rows = []
    for name in sorted(selection["class"].unique()):
        real = d.images[np.flatnonzero(((frame["class"] == name) & (frame["split"] == "train")).to_numpy())[:per_row]]
        s = selection[selection["class"] == name]
        kept, rejected = s[s["eligible"]].sort_values("score"), s[~s["eligible"]].sort_values("score", ascending=False)
        rows.append((name, [real, load(s["mask_file"].head(per_row)), load(kept["file"].head(per_row)),
                            load(rejected["file"].head(per_row))]))
    image_grid(rows, path, per_row)


def fidelity_text(fidelity: dict) -> str:
    """``DF 0.62 (0.80), ...``: synthetic images called their class, and (in brackets) real validation ones."""
    def share(v):
        return "-" if v is None else f"{v:.2f}"

    return ", ".join(f"{c} {share(v['synthetic'])} ({share(v['real_val'])})" for c, v in fidelity.items())


def write_report(run) -> Path:
    """Write ``report/report.md`` with tables and plots, and the same as one self-contained
    ``report/report.html``; returns the Markdown's path."""
    paths = run.paths
    out = paths.report_dir
    out.mkdir(parents=True, exist_ok=True)
    classes = run.data.classes
    results = read_table(paths.results)
    summary = read_json(paths.summary)
    info = read_json(paths.dataset_info)
    stages = {p.stem: read_json(p) for p in paths.stages.glob("*.json")}
    lines = [f"# tailfill report: `{run.dir}`", "",
             "Balanced accuracy is ISIC 2019's official metric (mean per-class recall, argmax predictions) on "
             "the test split; [low, high] is the " + next(iter(summary.values())).get("interval", "interval")
             + ". Per-class recall is argmax-based (the official scorer's \"sensitivity\" thresholds each class "
             "at 0.5 instead). `ensemble_balanced_acc` scores a model's seeds as one (their mean probability, "
             "what `tailfill predict --ensemble` predicts). Model selection used the validation split only.", "",
             "## Data", "", to_markdown(pd.DataFrame(info["counts"]).T.reset_index(names="split")), ""]
    lines += ["## Results", "", to_markdown(summary_table(summary, classes)), ""]
    augmented = [m for m in summary if m.startswith("augmented:")]
    if augmented:
        method = augmented[0].split(":", 1)[1]
        base = f"baseline:{method}"
        gains = gains_table(results, base, augmented[0], classes)
        added = "its real tail images repeated: the control" if run.cfg.classifier.fill_with == "real" \
            else "the used synthetic images"
        lines += [f"## Per-class recall: `{base}` vs `{augmented[0]}` (same method, + {added})", "",
                  to_markdown(gains), "", "![per-class gains](gains.png)", ""]
        plot_gains(gains[gains["class"] != "balanced accuracy"], out / "gains.png")
        cms = {}
        for model in (base, augmented[0]):
            kind, meth = model.split(":")
            seed = sorted(results.loc[results["model"] == model, "seed"])[0]
            cms[f"{model} (seed {seed})"] = read_json(paths.classifier(kind, meth, seed) / "metrics.json")["test"]["confusion_matrix"]
        plot_confusions(cms, classes, out / "confusion.png")
        lines += ["## Confusion matrices (test)", "", "![confusion matrices](confusion.png)", ""]
    selection = read_table(paths.selection) if paths.selection.is_file() else pd.DataFrame()
    if len(selection):
        for col in ("within_threshold", "near_copy", "eligible", "used"):
            selection[col] = selection[col].astype(bool)
        # the selection funnel: generated -> within the OOD threshold -> not a near-copy -> eligible -> used
        table = selection.assign(not_a_copy=selection["within_threshold"] & ~selection["near_copy"]).groupby(
            "class").agg(generated=("eligible", "size"), within_threshold=("within_threshold", "sum"),
                         not_a_copy=("not_a_copy", "sum"), eligible=("eligible", "sum"),
                         used=("used", "sum")).reset_index()
        reasons = selection["reason"].value_counts().to_dict()
        lines += ["## Synthetic data and OOD selection", "", to_markdown(table), "",
                  "Decisions: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items()), ""]
        if paths.calibration.is_file():
            cal = read_json(paths.calibration)
            fm = cal.get("feature_model", {})
            if fm.get("near_chance"):
                lines += [f"**Warning:** the classifier giving the OOD features (`{fm['method']}`) is near chance on "
                          f"validation (balanced accuracy {fm['val_balanced_accuracy']:.3f}, chance "
                          f"{1 / len(classes):.3f}): its scores say little, and a realism AUROC near 0.5 then "
                          "means nothing.", ""]
            if cal.get("fidelity"):
                lines += ["Class fidelity: how often the feature classifier calls a synthetic image its own class "
                          "(real validation images in brackets): " + fidelity_text(cal["fidelity"]), ""]
            if "thresholds" in cal:  # select.method: none has no OOD scores
                plot_ood_histograms(cal, selection, out / "ood_scores.png")
                lines += ["Realism diagnostic: AUROC of telling synthetic from held-out real images by OOD score "
                          "(0.5 = indistinguishable): " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                      cal["realism_auroc"].items()),
                          "", "![OOD scores](ood_scores.png)", ""]
        sample_grid(run, selection, out / "samples.png")
        lines += ["![real vs synthetic samples](samples.png)", ""]
    ae = paths.autoencoder / "metrics.json"
    if ae.is_file():
        m = read_json(ae)
        lines += ["## Autoencoder (latent diffusion)", "",
                  f"{'Pretrained, from `' + m['pretrained'] + '`' if m['pretrained'] else 'Trained on the training split'}"
                  f"; reconstruction PSNR on the validation split {m['val_psnr_db']:.2f} dB (the ceiling of what "
                  "latent generation can keep of an image).", "",
                  "![real and reconstructed](../autoencoder/reconstructions.png)", ""]
    for ext in sorted((paths.results.parent / "external").glob("*/summary.json")):
        e = read_json(ext)
        lines += [f"## External evaluation: {e['name']}", "",
                  f"{e['images']} images from `{e['source']}` ({e['kind']} layout); per class: "
                  + ", ".join(f"{c} {n}" for c, n in e["counts"].items()) + ". " + next(iter(e["models"].values()))
                  .get("interval", ""), "", to_markdown(summary_table(e["models"], classes)), "",
                  f"![confusion matrices, {e['name']}](../results/external/{ext.parent.name}/confusion.png)", ""]
    diffusion_info = paths.diffusion / "train_info.json"
    histories = {}
    for cfg_path in sorted(paths.classifiers.glob("*/*/seed_*/config.json")):
        kind, method, seed = cfg_path.parts[-4:-1]
        if seed == sorted(p.name for p in cfg_path.parent.parent.glob("seed_*"))[0]:
            histories[f"{kind}:{method} ({seed})"] = read_json(cfg_path)["tailfill"]["history"]
    plot_training_curves(read_json(diffusion_info)["history"] if diffusion_info.is_file() else [], histories,
                         out / "training.png")
    lines += ["## Training curves", "", "![training curves](training.png)", ""]
    lines += ["## Stage timings", "", to_markdown(pd.DataFrame(
        [{"stage": k, "seconds": v.get("seconds", float("nan"))} for k, v in stages.items()]), "{:.1f}"), ""]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    write_text(out / "report.html", markdown_to_html("\n".join(lines), out, f"tailfill report: {run.dir}"))
    return path
