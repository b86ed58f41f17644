"""The run's report: report.md and a self-contained report.html, from the run's own results."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..utils.io import read_json, read_table, write_text
from .plots import plot_confusions, plot_gains, plot_ood_histograms, plot_training_curves, sample_grid
from .tables import fidelity_text, gains_table, summary_table, to_markdown


def markdown_to_html(text: str, image_dir: Path, title: str) -> str:
    """The report's Markdown as one self-contained HTML page (Python-Markdown, with tables): every image is
    inlined as base64 with its alt text as caption, so the file can be mailed or attached as it is."""
    import base64
    import html
    import re

    import markdown

    def inline(m: re.Match) -> str:
        alt, src = html.unescape(m.group(1)), html.unescape(m.group(2))
        data = base64.b64encode((image_dir / src).read_bytes()).decode()
        return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(alt)}</figcaption></figure>")

    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    body = re.sub(r'<p><img alt="([^"]*)" src="([^"]+)"\s*/?></p>', inline, body)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#666}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")


def _intro(run, summary: dict, info: dict) -> list[str]:
    return [f"# tailfill report: `{run.dir}`", "",
            "Balanced accuracy is ISIC 2019's official metric (mean per-class recall, argmax predictions) on "
            "the test split; [low, high] is the " + next(iter(summary.values())).get("interval", "interval")
            + ". Per-class recall is argmax-based (the official scorer's \"sensitivity\" thresholds each class "
            "at 0.5 instead). `ensemble_balanced_acc` scores a model's seeds as one (their mean probability, "
            "what `tailfill predict --ensemble` predicts). Model selection used the validation split only.", "",
            "## Data", "", to_markdown(pd.DataFrame(info["counts"]).T.reset_index(names="split")), ""]


def _augmented(run, results: pd.DataFrame, summary: dict, classes: list, out: Path) -> list[str]:
    """Per-class recall of the augmented model against its baseline (same method), and both confusions."""
    augmented = [m for m in summary if m.startswith("augmented:")]
    if not augmented:
        return []
    method = augmented[0].split(":", 1)[1]
    base = f"baseline:{method}"
    gains = gains_table(results, base, augmented[0], classes)
    added = "its real tail images repeated: the control" if run.cfg.mixing.fill_with == "real" \
        else "the used synthetic images"
    plot_gains(gains[gains["class"] != "balanced accuracy"], out / "gains.png")
    cms = {}
    for model in (base, augmented[0]):
        kind, meth = model.split(":")
        seed = sorted(results.loc[results["model"] == model, "seed"])[0]
        cms[f"{model} (seed {seed})"] = read_json(run.paths.classifier(kind, meth, seed) / "metrics.json")["test"]["confusion_matrix"]
    plot_confusions(cms, classes, out / "confusion.png")
    return [f"## Per-class recall: `{base}` vs `{augmented[0]}` (same method, + {added})", "",
            to_markdown(gains), "", "![per-class gains](gains.png)", "",
            "## Confusion matrices (test)", "", "![confusion matrices](confusion.png)", ""]


def _selection(run, classes: list, out: Path) -> list[str]:
    """The selection funnel, what each rejected image failed, fidelity, realism and sample images."""
    paths = run.paths
    selection = read_table(paths.selection) if paths.selection.is_file() else pd.DataFrame()
    if not len(selection):
        return []
    for col in ("within_threshold", "near_copy", "eligible", "used"):
        selection[col] = selection[col].astype(bool)
    # the selection funnel: generated -> within the OOD threshold -> not a near-copy -> eligible -> used
    table = selection.assign(not_a_copy=selection["within_threshold"] & ~selection["near_copy"]).groupby(
        "class").agg(generated=("eligible", "size"), within_threshold=("within_threshold", "sum"),
                     not_a_copy=("not_a_copy", "sum"), eligible=("eligible", "sum"),
                     used=("used", "sum")).reset_index()
    reasons = selection["reason"].value_counts().rename_axis("decision").reset_index(name="images")
    lines = ["## Synthetic data and OOD selection", "", to_markdown(table), "", "Decisions:", "",
             to_markdown(reasons), ""]
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
                      "(0.5 = indistinguishable): " + ", ".join(f"{k} {v:.2f}" for k, v in cal["realism_auroc"].items()),
                      "", "![OOD scores](ood_scores.png)", ""]
    sample_grid(run, selection, out / "samples.png")
    return lines + ["![real vs synthetic samples](samples.png)", ""]


def _autoencoder(run) -> list[str]:
    ae = run.paths.autoencoder / "metrics.json"
    if not ae.is_file():
        return []
    m = read_json(ae)
    source = "Pretrained, from `" + m["pretrained"] + "`" if m["pretrained"] else "Trained on the training split"
    return ["## Autoencoder (latent diffusion)", "",
            f"{source}; reconstruction PSNR on the validation split {m['val_psnr_db']:.2f} dB (the ceiling of what "
            "latent generation can keep of an image).", "", "![real and reconstructed](../autoencoder/reconstructions.png)", ""]


def _external(run, classes: list) -> list[str]:
    lines = []
    for ext in sorted((run.paths.results.parent / "external").glob("*/summary.json")):
        e = read_json(ext)
        lines += [f"## External evaluation: {e['name']}", "",
                  f"{e['images']} images from `{e['source']}` ({e['kind']} layout); per class: "
                  + ", ".join(f"{c} {n}" for c, n in e["counts"].items()) + ". "
                  + next(iter(e["models"].values())).get("interval", ""), "", to_markdown(summary_table(e["models"], classes)),
                  "", f"![confusion matrices, {e['name']}](../results/external/{ext.parent.name}/confusion.png)", ""]
    return lines


def _training(run, out: Path) -> list[str]:
    """The diffusion loss, and each (kind, method)'s first seed's loss and validation curve."""
    info = run.paths.diffusion / "train_info.json"
    histories, seen = {}, set()
    for kind, method, seed, fit in run.paths.fits(file="config.json"):
        if (kind, method) not in seen:  # fits come by seed: the first is each model's lowest
            seen.add((kind, method))
            histories[f"{kind}:{method} (seed_{seed})"] = read_json(fit / "config.json")["tailfill"]["history"]
    plot_training_curves(read_json(info)["history"] if info.is_file() else [], histories, out / "training.png")
    return ["## Training curves", "", "![training curves](training.png)", ""]


def _timings(run, stage_order: list[str] | None) -> list[str]:
    """Each finished stage's seconds, in pipeline order."""
    stages = {p.stem: read_json(p) for p in run.paths.stages.glob("*.json")}
    order = [s for s in stage_order or [] if s in stages] + sorted(s for s in stages if s not in (stage_order or []))
    rows = [{"stage": s, "seconds": stages[s].get("seconds", float("nan")),
             "note": "skipped" if stages[s].get("skipped") else ("shared (sweep)" if stages[s].get("shared") else "")}
            for s in order]
    return ["## Stage timings", "", to_markdown(pd.DataFrame(rows), "{:.1f}"), ""]


def write_report(run, stage_order: list[str] | None = None) -> Path:
    """Write ``report/report.md`` with tables and plots, and the same as one self-contained
    ``report/report.html``; returns the Markdown's path. ``stage_order`` orders the timings (the pipeline's)."""
    out = run.paths.report_dir
    out.mkdir(parents=True, exist_ok=True)
    classes = run.data.classes
    results, summary = read_table(run.paths.results), read_json(run.paths.summary)
    lines = (_intro(run, summary, read_json(run.paths.dataset_info))
             + ["## Results", "", to_markdown(summary_table(summary, classes)), ""]
             + _augmented(run, results, summary, classes, out) + _selection(run, classes, out) + _autoencoder(run)
             + _external(run, classes) + _training(run, out) + _timings(run, stage_order))
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    write_text(out / "report.html", markdown_to_html("\n".join(lines), out, f"tailfill report: {run.dir}"))
    return path
