"""The run's report: report.md and a self-contained report.html, from the run's own results."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..utils.io import read_json, read_table, write_text
from .plots import (
    plot_confusions,
    plot_gains,
    plot_ood_histograms,
    plot_training_curves,
    sample_grid,
)
from .tables import fidelity_text, gains_table, summary_table, to_markdown


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
