"""Real-data benchmark: does diffusion inpainting + OOD selection beat the long-tail baselines?

On real ISIC 2019 images (default: ../shared/data/isic2019-mini), per image size:

1. a fixed, balanced test split and a small balanced validation split (model selection and OOD
   calibration); the rest is thinned to a geometric long tail (``--imbalance``, head/tail) for training;
2. non-generative baselines (``--methods``) over ``--seeds``;
3. with the best baseline (by validation balanced accuracy) as the loss for every variant:
   - ``real_oversample``: tail classes filled to the same counts by repeating real images (the control),
   - ``synth_threshold``: drawn from the synthetic images passing the calibrated OOD threshold
     (the threshold 95 % of held-out real images pass),
   - ``synth_keepF``: drawn from the best fraction F of the pool by OOD score (keep-fraction sweep;
     ``synth_keep1`` is no selection); near-copies of training images are always out;
   the pool is ``--oversample`` x the deficit, made by the product's own plan/masks/inpainting code;
4. diagnostics: realism (AUROC real held-out vs synthetic by OOD score, per class), class fidelity
   (how often the baseline classifier calls a synthetic image its own class, vs real held-out images),
   and an image grid per tail class.

Prints the tables and writes them, with plots, to ``--out`` (Markdown). Every number in
docs/benchmarks.md comes from this script.

    python benchmarks/longtail_isic.py --sizes 32 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from tailfill.classify import train_classifier
from tailfill.config import ClassifierConfig, DiffusionConfig, GenerateConfig
from tailfill.data import build_cache, load_isic2019
from tailfill.diffusion import load_inpainter, make_scheduler, train_diffusion
from tailfill.evaluate import classification_metrics, mean_ci
from tailfill.masks import segment_batch
from tailfill.generate import choose_classes, fill_targets, make_plan, plan_masks, synthesize
from tailfill.report import image_grid, mask_rgb, to_markdown
from tailfill.select import OODSelector, make_scorer, realism_auroc

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def make_benchmark_split(labels, classes, test_per_class, val_per_class, imbalance, seed=0):
    """Balanced test/val per class; the rest thinned to a geometric long tail (largest class = head)."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "unused", dtype=object)
    pool = {}
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        split[idx[:test_per_class]] = "test"
        split[idx[test_per_class:test_per_class + val_per_class]] = "val"
        pool[c] = idx[test_per_class + val_per_class:]
    order = sorted(pool, key=lambda c: -len(pool[c]))
    n_max = len(pool[order[0]])
    for i, c in enumerate(order):
        n = max(2, int(round(n_max * imbalance ** (-i / (len(order) - 1)))))
        split[pool[c][:n]] = "train"
    return split.astype(str)


def generate_pool(ckpt, train_x, train_y, train_masks, classes, deficits, gcfg):
    """The product's generation (plan, masks, inpainting) in memory: the pool selection chooses from."""
    frame = pd.DataFrame({"image": [f"train_{i}" for i in range(len(train_y))], "label": train_y})
    plan = make_plan(frame, classes, deficits, gcfg)
    masks = plan_masks(plan, train_masks, train_x.shape[1], gcfg)
    unet, sched_cfg = load_inpainter(ckpt, gcfg.use_ema)
    images = synthesize(unet, make_scheduler(gcfg.sampler, sched_cfg), plan, train_x, masks, gcfg)
    return images, plan["label"].to_numpy(), plan["context_index"].to_numpy(), masks


def fmt(values):
    m, lo, hi = mean_ci(values)
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return f"{m:.3f} ± {sd:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else "")


def save_grid(path, classes, tail, train_x, train_y, syn_x, syn_y, syn_masks, table, per=6):
    rows = []
    for c in tail:
        sel = np.flatnonzero(syn_y == c)
        order = sel[np.argsort(table["score"].to_numpy()[sel])]
        kept = [i for i in order if table["kept"].iloc[i]]
        rejected = [i for i in order[::-1] if not table["kept"].iloc[i]]
        rows.append((classes[c], [train_x[train_y == c][:per], [mask_rgb(syn_masks[i]) for i in sel[:per]],
                                  syn_x[kept[:per]], syn_x[rejected[:per]]]))
    image_grid(rows, path, per)


def run_size(args, size, data, log):
    t_stage = {}
    t0 = time.time()
    images, ok = build_cache(data.paths(), size, args.work / "cache", workers=2)
    labels = data.labels()
    classes = data.classes
    split = make_benchmark_split(labels, classes, args.test_per_class, args.val_per_class, args.imbalance)
    tr, va, te = (split == s for s in ("train", "val", "test"))
    train_x, train_y = images[tr], labels[tr]
    val_x, val_y, test_x, test_y = images[va], labels[va], images[te], labels[te]
    counts = np.bincount(train_y, minlength=len(classes))
    log(f"\ntraining counts (imbalance {args.imbalance:g}): "
        + ", ".join(f"{classes[c]} {counts[c]}" for c in np.argsort(-counts))
        + f"; val {args.val_per_class}/class, test {args.test_per_class}/class")
    t_stage["data"] = time.time() - t0

    ccfg = ClassifierConfig(backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    rows, models = [], {}

    def train_eval(name, method, x, y, seed, n_syn=0):
        t = time.time()
        m = train_classifier(x, y, val_x, val_y, classes, method, ccfg, seed, "cpu")
        met = classification_metrics(test_y, m.predict_proba(test_x), classes)
        val = classification_metrics(val_y, m.predict_proba(val_x), classes)
        rows.append({"size": size, "variant": name, "method": method, "seed": seed, "synthetic": n_syn,
                     "val_bacc": val["balanced_accuracy"], "bacc": met["balanced_accuracy"],
                     **{f"R_{c}": met["per_class"][c]["recall"] for c in classes}, "seconds": time.time() - t})
        print(f"  {size}px {name:<24} {method:<22} seed {seed}: test bacc {met['balanced_accuracy']:.3f} "
              f"({time.time() - t:.0f} s)", flush=True)
        return m

    t0 = time.time()
    for method in args.methods:
        for seed in args.seeds:
            models[(method, seed)] = train_eval(method, method, train_x, train_y, seed)
    t_stage["baselines"] = time.time() - t0
    frame = pd.DataFrame(rows)
    best = frame.groupby("method")["val_bacc"].mean().idxmax()
    log(f"\nbest baseline by validation balanced accuracy: `{best}` (loss used for every variant below)")

    # generator: trained once on the long-tailed training split, all classes
    masks = segment_batch(train_x)
    dcfg = DiffusionConfig(train_steps=args.diffusion_steps, batch_size=32, checkpoint_every=args.diffusion_steps,
                           log_every=max(1, args.diffusion_steps // 5), block_out_channels=args.unet_channels)

    def generator(class_power=None):
        """Train (or reuse a finished) generator; ``class_power`` overrides the class sampling power."""
        t = time.time()
        cfg = dcfg if class_power is None else replace(dcfg, class_sampling_power=class_power)
        name = f"diffusion_{size}" + ("" if class_power is None else f"_power{class_power:g}")
        ckpt = train_diffusion(train_x, train_y, masks, len(classes), cfg, args.work / name, seed=0, device="cpu")
        t_stage["diffusion"] = t_stage.get("diffusion", 0) + time.time() - t
        return ckpt

    ckpt = generator()
    tail = choose_classes(counts, classes, "tail")
    deficits = fill_targets(counts, tail, "median")
    feat_model = models[(best, args.seeds[0])]
    f_tr, f_va = feat_model.features(train_x), feat_model.features(val_x)
    selector = OODSelector(make_scorer("mahalanobis"), real_quantile=0.95).fit(f_tr, train_y).calibrate(f_va, val_y)
    val_scores = selector.score(f_va, val_y)
    val_pred = feat_model.predict_proba(val_x).argmax(1)

    def make_pool(gcfg, label, ckpt=ckpt):
        """Generate a pool, score it, and log its diagnostics."""
        t = time.time()
        x, y, src, syn_masks = generate_pool(ckpt, train_x, train_y, masks, classes, deficits, gcfg)
        t_stage["generate"] = t_stage.get("generate", 0) + time.time() - t
        t = time.time()
        table = selector.select(feat_model.features(x), y, source_index=src)
        pool = {"x": x, "y": y, "scores": table["score"].to_numpy(), "passed": table["kept"].to_numpy(),
                "copies": (table["reason"] == "near_duplicate").to_numpy()}
        auroc = {classes[c]: realism_auroc(val_scores[val_y == c], pool["scores"][y == c]) for c in tail}
        # class fidelity: does the baseline classifier call a synthetic DF "DF" as often as a real one?
        pred = feat_model.predict_proba(x).argmax(1)
        fidelity = {classes[c]: (float((pred[y == c] == c).mean()), float((val_pred[val_y == c] == c).mean()))
                    for c in tail}
        t_stage["select"] = t_stage.get("select", 0) + time.time() - t
        log(f"\n{label}: realism AUROC, real held-out vs synthetic by OOD score (0.5 = indistinguishable): "
            + ", ".join(f"{k} {v:.2f}" for k, v in auroc.items())
            + f"; passing the 95 % real threshold: {pool['passed'].mean():.0%}; near-copies rejected: "
            + f"{int(pool['copies'].sum())}; class fidelity, share the baseline classifier calls their own class, "
            + "synthetic (real held-out): " + ", ".join(f"{k} {a:.2f} ({b:.2f})" for k, (a, b) in fidelity.items()))
        return pool, table, syn_masks

    def pick(pool, rule, seed, fill=1.0):
        """Synthetic images to add: ``fill`` x each class's deficit, drawn from the images the rule keeps."""
        rng = np.random.default_rng(seed)
        chosen = []
        y, scores = pool["y"], pool["scores"]
        for c, deficit in deficits.items():
            n = int(round(fill * deficit))
            idx = np.flatnonzero((y == c) & ~pool["copies"])
            if rule == "threshold":
                keep = idx[pool["passed"][idx]]
            else:  # keep fraction F: the best F of the class's pool by OOD score; F = 1 is no selection
                keep = idx[np.argsort(scores[idx])][: int(np.ceil(rule * np.sum(y == c)))]
            if len(keep):  # fewer kept than needed: kept images are repeated, like real oversampling
                chosen += rng.permutation(keep)[:n].tolist() + rng.choice(keep, max(0, n - len(keep))).tolist()
        return np.array(chosen, dtype=int)

    def train_on(name, pool, idx, seed):
        train_eval(name, best, np.concatenate([train_x, pool["x"][idx]]), np.concatenate([train_y, pool["y"][idx]]),
                   seed, len(idx))

    gcfg = GenerateConfig(sampler=args.sampler, steps=args.sample_steps, guidance_scale=args.guidance,
                          oversample=args.oversample, context_classes=args.context, strength=args.strength)
    main_pool, table, syn_masks = make_pool(gcfg, "main pool")
    save_grid(args.plots / f"grid_{size}px.png", classes, tail, train_x, train_y, main_pool["x"], main_pool["y"],
              syn_masks, table)
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        extra = np.concatenate([rng.choice(np.flatnonzero(train_y == c), d) for c, d in deficits.items()])
        train_eval("real_oversample", best, np.concatenate([train_x, train_x[extra]]),
                   np.concatenate([train_y, train_y[extra]]), seed, 0)
        for rule in ["threshold"] + list(args.keep_fractions):
            train_on(f"synth_{rule}" if isinstance(rule, str) else f"synth_keep{rule:g}", main_pool,
                     pick(main_pool, rule, seed), seed)
    # ablations: one generator setting changed at a time, OOD threshold selection
    for spec in args.ablations:
        opts = dict(kv.split("=") for kv in spec.split(","))
        fill = float(opts.pop("fill", 1.0))
        power = opts.pop("class_power", None)
        changes = {{"context": "context_classes", "guidance": "guidance_scale"}.get(k, k): v for k, v in opts.items()}
        changes = {k: (v if k == "context_classes" else float(v)) for k, v in changes.items()}
        if changes or power is not None:
            pool = make_pool(replace(gcfg, **changes), f"ablation `{spec}`",
                             ckpt if power is None else generator(float(power)))[0]
        else:
            pool = main_pool
        for seed in args.seeds:
            train_on(f"synth_threshold [{spec}]", pool, pick(pool, "threshold", seed, fill), seed)
    t_stage["augmented"] = sum(r["seconds"] for r in rows if r["variant"] not in args.methods)
    return pd.DataFrame(rows), best, tail, t_stage


def summarise(frame, classes, tail):
    out = []
    for (variant, method), g in frame.groupby(["variant", "method"], sort=False):
        row = {"variant": variant, "loss": method, "synthetic": int(g["synthetic"].mean()),
               "balanced acc (mean ± sd [95% CI])": fmt(g["bacc"].tolist())}
        for c in tail:
            row[f"R_{classes[c]}"] = f"{g[f'R_{classes[c]}'].mean():.3f} ± {g[f'R_{classes[c]}'].std(ddof=1):.3f}" \
                if len(g) > 1 else f"{g[f'R_{classes[c]}'].mean():.3f}"
        out.append(row)
    return pd.DataFrame(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "isic2019-mini")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32])
    ap.add_argument("--imbalance", type=float, default=50.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+",
                    default=["ce", "balanced_sampling", "cb_focal", "ldam_drw", "logit_adjust", "logit_adjust_posthoc",
                             "balanced_softmax"])
    ap.add_argument("--keep-fractions", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    ap.add_argument("--test-per-class", type=int, default=25)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--diffusion-steps", type=int, default=3000)
    ap.add_argument("--unet-channels", type=int, nargs="+", default=[32, 64, 64])
    ap.add_argument("--sampler", default="dpmsolver++")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--oversample", type=float, default=3.0)
    ap.add_argument("--context", default="all", help="skin contexts: all training images, or the same class")
    ap.add_argument("--strength", type=float, default=1.0, help="<1: SDEdit from the context's own lesion")
    ap.add_argument("--ablations", nargs="*", default=[],
                    help="extra pools, one setting changed each, e.g. context=same strength=0.4 guidance=6 fill=0.3 "
                         "class_power=0 (fill: share of the deficit filled; class_power: a second generator trained "
                         "with that class sampling power); each is trained with OOD threshold selection")
    ap.add_argument("--assemble-only", action="store_true",
                    help="only rebuild --out from findings.md and the saved per-size sections")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if not args.assemble_only and not (args.root / "ISIC_2019_Training_GroundTruth.csv").is_file():
        sys.exit(f"no ISIC 2019 layout under {args.root}; pass --root")
    args.plots = args.out.parent / "benchmarks"
    args.plots.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(text):
        print(text, flush=True)
        lines.append(text)

    from tailfill.io import write_csv, write_text

    sizes = [] if args.assemble_only else args.sizes
    data = load_isic2019(args.root) if sizes else None
    for size in sizes:
        lines.clear()
        t0 = time.time()
        log(f"## {size} px\n\nProduced by `python benchmarks/longtail_isic.py " + " ".join(sys.argv[1:])
            + f"` ({args.root.name}, {len(data)} images). Classifier {args.backbone} from scratch, {args.epochs} "
            f"epochs; generator {args.unet_channels} UNet, {args.diffusion_steps} steps; sampler {args.sampler} "
            f"x{args.sample_steps}, guidance {args.guidance}, contexts {args.context}, strength {args.strength}; "
            f"oversample x{args.oversample}; seeds {args.seeds}.")
        frame, best, tail, t_stage = run_size(args, size, data, log)
        log("\n" + to_markdown(summarise(frame, data.classes, tail)))
        log(f"\n![samples {size}px](benchmarks/grid_{size}px.png)\n\nwall time per stage (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in t_stage.items())
            + f"; total {time.time() - t0:.0f} s; peak memory {peak_rss_gb():.1f} GB")
        results = args.plots / "results.csv"
        old = pd.read_csv(results) if results.is_file() else pd.DataFrame(columns=frame.columns)
        write_csv(results, pd.concat([old[old["size"] != size], frame], ignore_index=True))
        write_text(args.plots / f"section_{size}px.md", "\n".join(lines) + "\n")
    # docs/benchmarks.md = the hand-written findings + every size's generated section
    parts = [p.read_text() for p in [args.plots / "findings.md"] if p.is_file()]
    parts += [p.read_text() for p in sorted(args.plots.glob("section_*px.md"), key=lambda p: int(p.stem[8:-2]))]
    write_text(args.out, "# Benchmark: long-tailed ISIC 2019 (real images)\n\n" + "\n".join(parts))


if __name__ == "__main__":
    main()
