"""Real-data benchmark: does diffusion inpainting + OOD selection beat the long-tail baselines?

It measures the product: the data, generator, generation, selection, mixing and training rules are
all imported from ``tailfill``, and every variant is a tailfill config. The base config is
``benchmarks/longtail_isic_base.yaml`` (``--config`` for another, ``--set key=value`` to change it, as with
the CLI): real ISIC 2019 images (default ../shared/data/isic2019-mini), balanced validation and test
splits (``data.val_per_class``/``data.test_per_class``), the rest thinned to ``data.imbalance_ratio``.

Per image size (``--sizes``):

1. the baselines, ``classifier.methods`` x ``classifier.seeds``; the best by *validation* balanced
   accuracy is the loss of every variant whose ``classifier.augmented_method`` is ``best``;
2. the variants, each ``NAME:key=value,key=value`` (config overrides on the base). The name's prefix
   says what is added to the real training images:
   - ``synth...``: the synthetic images `select` marks *used* (generated with ``generate.*`` by a
     generator trained with ``diffusion.*``, selected with ``select.*``);
   - ``real_oversample...``: each tail class's deficit filled by repeating its own real images (the
     control: a synthetic variant has to beat it to show that generated images add information);
   - ``real...``: nothing (e.g. a two-stage recipe on real data only, the control for cRT);
   - ``feat...``: nothing either, but its head re-training draws generated feature vectors
     (``classifier.retrain_head`` + ``classifier.feature_fill``, LDMLR); judged like a synthetic variant;
   - ``pool...``: no classifier at all: only the pool's diagnostics (3.), to draw a generator's curve
     (size, steps, guidance) at the cost of generation alone;
   a synthetic variant is judged against the strongest ``real...`` variant with its classifier settings
   (its ``classifier.*`` overrides, bar those acting on synthetic images or features only);
   generators and synthetic pools are trained/generated once per distinct setting and cached in
   ``--work``, so variants that differ only in selection or training share them; so is every classifier
   fit, by its own settings, seed and training images (not the run's seed list: adding seeds trains only
   the new ones; a cRT fit, ``classifier.retrain_head``, re-trains the head of the cached fit without it);
   a generator that differs from a finished one only by more ``diffusion.train_steps``
   resumes from it (batches and noise are seeded by step and the learning rate is constant, so that *is*
   the longer run), which makes a steps curve cost its longest point;
3. diagnostics per pool: realism (AUROC real held-out vs synthetic by OOD score, per class), class
   fidelity (how often the feature classifier calls a synthetic image its own class, vs real held-out
   images), the selection funnel, and an image grid per tail class.

Prints the tables and writes them, with plots, to ``--out`` (Markdown) and ``results.csv`` beside it.
``--pool-splits TAG TAG ...`` trains nothing: it pools sections that ran the same variants on different
data splits (``--set seed=1``: other held-out images, thinned training set and generator) into one bar
table, paired by split and seed. ``--variants-only`` trains the variants of a split whose baselines are in
another section (``select.feature_method`` and ``classifier.augmented_method`` name the baseline), and
``--pool-splits THAT+THIS`` pairs them.

    python benchmarks/longtail_isic.py --sizes 32
    python benchmarks/longtail_isic.py --sizes 64 --set classifier.seeds=[0,1,2,3,4] \\
        --variants synth_same:generate.context_classes=same
    python benchmarks/longtail_isic.py --pool-splits 64px_a 64px_a_split1 --tag 64px_a_splits
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tailfill.autoencoder import load_vae, reconstruction_psnr, train_autoencoder
from tailfill.classify import FitResult, TrainedClassifier, fit_and_score, retrain_head_on_real, score
from tailfill.config import ClassifierConfig, Config, config_from_dict, load_config
from tailfill.data import prepare_dataset
from tailfill.diffusion import train_diffusion
from tailfill.evaluate import (best_method, bootstrap_ci, bootstrap_difference, classification_metrics,
                               metrics_record, results_table, seed_ensemble)
from tailfill.generate import class_deficits, generate_in_memory
from tailfill.io import atomic_dir, atomic_path, read_table, write_csv, write_text
from tailfill.mixing import TrainingSet, synthetic_labels, with_repeated_real, with_synthetic
from tailfill.ood import select_synthetic
from tailfill.report import image_grid, mask_rgb, to_markdown

ROOT = Path(__file__).resolve().parents[1]
HEAD_OPTIONS = ("retrain_head", "head_epochs", "feature_fill", "feature_share", "feature_steps", "head_init")  # cRT's
LATE_DEFAULTS = {"head_init": "reset", "synthetic_rebalances": True}  # classifier options newer than the cached fits, and their defaults
SYNTHETIC = ("synth", "feat")  # the variants judged against the bar: synthetic images, or synthetic features
DEFAULT_VARIANTS = ["real_oversample", "synth_threshold", "synth_none:select.method=none",
                    "synth_keep0.2:select.keep_fraction=0.2", "synth_keep0.5:select.keep_fraction=0.5"]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` -> (name, ["key=value", ...]); a value may hold commas inside [...]."""
    name, _, rest = spec.partition(":")
    overrides, depth, cur = [], 0, ""
    for ch in rest:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            overrides.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        overrides.append(cur)
    if not name.startswith((*SYNTHETIC, "real", "pool")):
        raise SystemExit(f"variant {spec!r}: the name must start with synth, feat, real_oversample, real or pool")
    return name, overrides


def with_overrides(base: Config, overrides: list[str]) -> Config:
    """``base`` with ``key=value`` overrides, validated like the CLI's ``--set``."""
    values = base.to_dict()
    for item in overrides:
        key, _, raw = item.partition("=")
        node = values
        *parents, last = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(raw)
    return config_from_dict(values)


def fmt(values, y_true, probas) -> str:
    """mean ± sd over seeds [95 % bootstrap interval over test images and seeds]."""
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    lo, hi = bootstrap_ci(y_true, probas)
    return f"{np.mean(values):.3f} ± {sd:.3f} [{lo:.3f}, {hi:.3f}]"


class Bench:
    """One image size: the data, baselines, cached generators and pools, and the rows measured."""

    def __init__(self, cfg: Config, args, log):
        self.cfg, self.args, self.log = cfg, args, log
        self.records, self.times, self.models, self.probas = [], {}, {}, {}
        self.generators, self.pools, self.diagnostics, self.psnr = {}, {}, [], {}
        self.overrides = {}  # variant -> its overrides (to match each synthetic variant with its control)

    def timed(self, stage: str, started: float) -> None:
        self.times[stage] = self.times.get(stage, 0) + time.time() - started

    def prepare(self) -> None:
        t = time.time()
        d = self.data = prepare_dataset(self.cfg.data, self.args.work, self.cfg.seed)
        self.train, val, test = d.split("train"), d.split("val"), d.split("test")
        self.val, self.test = (val.images, val.labels), (test.images, test.labels)
        counts = np.bincount(self.train.labels, minlength=len(d.classes))
        self.deficits = self.deficits_for(self.cfg)
        self.tail = sorted(self.deficits)
        self.log(f"\ntraining counts (imbalance {self.cfg.data.imbalance_ratio:g}): "
                 + ", ".join(f"{d.classes[c]} {counts[c]}" for c in np.argsort(-counts))
                 + f"; val {len(val.labels)} ({self.cfg.data.val_per_class}/class), test {len(test.labels)} "
                 f"({self.cfg.data.test_per_class}/class)")
        self.timed("data", t)

    @property
    def rarest(self) -> str:
        """The class with the fewest training images (DF on ISIC): the bar asks for its recall."""
        return self.data.classes[int(np.argmin(np.bincount(self.train.labels, minlength=len(self.data.classes))))]

    def deficits_for(self, cfg: Config) -> dict:
        """The images each tail class lacks under ``cfg.generate`` (a variant may set its own target)."""
        return class_deficits(self.train.labels, self.data.classes, cfg.generate)

    def fit(self, variant: str, cfg: Config, method: str, train: TrainingSet, seed: int):
        fit = self.cached_fit(cfg, method, train, seed)
        kind = "baseline" if variant == method else "augmented"
        self.records.append(metrics_record(kind, method, seed, fit, train.labels, self.data.classes,
                                           variant=variant, synthetic_images=int(train.synthetic.sum())))
        self.probas.setdefault(variant, []).append(fit.test_proba)
        print(f"  {cfg.data.image_size}px {variant:<28} {method:<22} seed {seed}: test bacc "
              f"{fit.test['balanced_accuracy']:.3f} ({fit.seconds:.0f} s)", flush=True)
        return fit

    def cached_fit(self, cfg: Config, method: str, train: TrainingSet, seed: int) -> FitResult:
        """``fit_and_score``, cached in ``--work`` by everything that decides it (config, method, seed and the
        training set's bytes), so a re-run or a killed run resumes without training a classifier twice."""
        digest = hashlib.sha256()
        for part in (train.images, train.labels, train.synthetic, *(train.soft_labels() or ()), self.val[1], self.test[1]):
            if part is not None:
                digest.update(np.ascontiguousarray(part).tobytes())
        # the run's lists (methods, seeds) and augmented_method do not decide one fit: adding a seed reuses the
        # rest; unset (None) options are left out, so a new option does not orphan the fits cached before it.
        # tta does not change training either: a fit is trained and cached on one view, then re-scored with it
        # and options added after fits were cached are left out at their defaults, which they were then
        one_fit = dataclasses.replace(cfg.classifier, methods=[], seeds=[], augmented_method="", tta=None)
        if one_fit.feature_fill is None:  # its settings act only with it
            one_fit = dataclasses.replace(one_fit, feature_share=None, feature_steps=None)
        settings = {k: v for k, v in dataclasses.asdict(one_fit).items()
                    if v is not None and not (k in LATE_DEFAULTS and v == LATE_DEFAULTS[k])}
        out = self.args.work / "fits" / key_of(settings, cfg.seed, method, seed, digest.hexdigest())
        if (out / "fit.json").is_file():
            info = json.loads((out / "fit.json").read_text())
            fit = FitResult(TrainedClassifier.load(out / "model"), info["val"], info["test"],
                            np.load(out / "test_proba.npy"), info["seconds"])
        else:
            one_view = dataclasses.replace(cfg.classifier, tta=False)
            if cfg.classifier.retrain_head:  # cRT: its first stage is the fit without it (cached, shared with
                # that row), then the product's second stage; the same model train_classifier makes in one go
                first = self.cached_fit(dataclasses.replace(cfg, classifier=dataclasses.replace(
                    one_view, **{k: getattr(ClassifierConfig, k) for k in HEAD_OPTIONS})), method, train, seed)
                t = time.time()
                model = retrain_head_on_real(first.model, train.images, train.labels, train.synthetic, *self.val,
                                             one_view, seed)
                fit = score(model, self.val, self.test, self.data.classes, first.seconds + time.time() - t)
            else:
                fit = fit_and_score(train, self.val, self.test, self.data.classes, method, one_view, seed, "cpu")
            fit.model.save(out / "model", cfg.classifier.backbone)
            np.save(out / "test_proba.npy", fit.test_proba)
            write_text(out / "fit.json", json.dumps({"val": fit.val, "test": fit.test, "seconds": fit.seconds},
                                                    default=float))  # written last: marks the fit complete
        return self.with_tta(fit, out) if cfg.classifier.tta else fit

    def with_tta(self, fit: FitResult, out: Path) -> FitResult:
        """``fit`` scored as the product scores with ``classifier.tta`` (cached beside the fit)."""
        fit.model.tta = True
        if (out / "tta.json").is_file():
            info = json.loads((out / "tta.json").read_text())
            return FitResult(fit.model, info["val"], info["test"], np.load(out / "test_proba_tta.npy"), fit.seconds)
        fit = score(fit.model, self.val, self.test, self.data.classes, fit.seconds)
        np.save(out / "test_proba_tta.npy", fit.test_proba)
        write_text(out / "tta.json", json.dumps({"val": fit.val, "test": fit.test}, default=float))
        return fit

    def baselines(self) -> None:
        t = time.time()
        if self.args.variants_only:  # the baselines of this split are in another section: --pool-splits pairs them
            self.best = None
            return
        real = TrainingSet.real(self.train.images, self.train.labels)
        for method in self.cfg.classifier.methods:
            for seed in self.cfg.classifier.seeds:
                self.models[(method, seed)] = self.fit(method, self.cfg, method, real, seed).model
        self.best = best_method(results_table(self.records))
        self.log(f"\nbest baseline by validation balanced accuracy: `{self.best}` (the loss of every variant "
                 "whose classifier.augmented_method is best)")
        self.timed("baselines", t)

    def autoencoder(self, cfg: Config):
        """Latent diffusion's autoencoder: a local pretrained one, or trained once per setting (cached)."""
        if cfg.diffusion.space != "latent":
            return None
        if cfg.diffusion.vae or cfg.diffusion.pretrained:
            return load_vae(cfg.diffusion.vae or cfg.diffusion.pretrained)
        key = key_of(cfg.autoencoder, cfg.data.image_size, self.cfg.data, cfg.seed)
        t = time.time()
        vae = train_autoencoder(self.train.images, cfg.autoencoder, self.args.work / f"autoencoder_{key}", cfg.seed,
                                "cpu")
        self.timed("autoencoder", t)
        if key not in self.psnr:
            self.psnr[key] = reconstruction_psnr(vae, self.val[0])
            self.log(f"\nautoencoder {cfg.autoencoder.block_out_channels}, {cfg.autoencoder.train_steps} steps: "
                     f"validation reconstruction PSNR {self.psnr[key]:.2f} dB")
        return vae

    def generator_dir(self, cfg: Config, diffusion=None) -> Path:
        diffusion = diffusion or cfg.diffusion
        return self.args.work / ("generator_" + key_of(diffusion, cfg.autoencoder if diffusion.space == "latent" else None,
                                                       cfg.data.image_size, self.cfg.data, cfg.seed))

    def generator(self, cfg: Config) -> Path:
        out = self.generator_dir(cfg)
        if out not in self.generators:
            vae = self.autoencoder(cfg)
            t = time.time()
            self.warm_start(cfg, out)
            self.generators[out] = train_diffusion(self.train.images, self.train.labels, self.train.masks,
                                                   len(self.data.classes), cfg.diffusion, out, cfg.seed, "cpu",
                                                   vae=vae)
            self.timed("diffusion", t)
        return self.generators[out]

    def warm_start(self, cfg: Config, out: Path) -> None:
        """Seed ``out`` with the checkpoint of the longest finished run of the same generator with fewer steps:
        ``train_diffusion`` resumes from it and follows the path an uninterrupted run would."""
        if (out / "checkpoint" / "state.pt").is_file():
            return
        for steps in range(cfg.diffusion.train_steps - 1, 0, -1):
            done = self.generator_dir(cfg, dataclasses.replace(cfg.diffusion, train_steps=steps))
            if (done / "train_info.json").is_file():
                with atomic_dir(out / "checkpoint") as tmp:
                    shutil.copytree(done / "checkpoint", tmp, dirs_exist_ok=True)
                self.log(f"\ngenerator {cfg.diffusion.block_out_channels}, {cfg.diffusion.train_steps} steps: resumed "
                         f"from the finished {steps}-step run ({done.name})")
                return

    def pool(self, cfg: Config):
        """The synthetic pool for ``cfg``'s generator and generation settings (cached on disk)."""
        ckpt = self.generator(cfg)
        # the checkpoint's place inside --work, not its absolute path: a moved --work keeps its pools
        deficits = self.deficits_for(cfg)
        key = key_of(Path(ckpt).resolve().relative_to(self.args.work.resolve()).as_posix(), cfg.generate, deficits)
        if key not in self.pools:
            t = time.time()
            path = self.args.work / f"pool_{key}.npz"
            if path.is_file() and path.with_suffix(".csv").is_file():
                z = np.load(path, allow_pickle=False)
                pool = read_table(path.with_suffix(".csv")), z["images"], z["masks"]
            else:
                pool = generate_in_memory(ckpt, self.train.frame, self.train.images, self.train.masks,
                                          self.data.classes, deficits, cfg.generate)
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.savez(f, images=pool[1], masks=pool[2])
                write_csv(path.with_suffix(".csv"), pool[0])
            self.pools[key] = pool
            self.timed("generate", t)
        return self.pools[key]

    def feature_model(self, cfg: Config):
        """The first seed's baseline classifier that scores the pool (the best by validation, or
        ``select.feature_method``); fitted here, not reported, when the run trains no baselines."""
        key = (cfg.select.feature_method or self.best, self.cfg.classifier.seeds[0])
        if key not in self.models:
            self.models[key] = self.cached_fit(self.cfg, key[0], TrainingSet.real(self.train.images, self.train.labels),
                                               key[1]).model
        return self.models[key]

    def selected(self, name: str, cfg: Config):
        """Synthetic images the product's selection would use, and diagnostics of the pool."""
        plan, images, masks = self.pool(cfg)
        t = time.time()
        labels = plan["label"].to_numpy()
        model = self.feature_model(cfg)
        table, cal = select_synthetic(model, (self.train.images, self.train.labels), self.val, images, labels,
                                      plan["context_index"].to_numpy(), self.deficits_for(cfg), cfg.select,
                                      self.data.classes)
        classes = self.data.classes
        pred, val_pred = model.predict_proba(images).argmax(1), model.predict_proba(self.val[0]).argmax(1)
        d, g = cfg.diffusion, cfg.generate
        info = json.loads((self.generator_dir(cfg) / "train_info.json").read_text())
        row = {"variant": name, "generator": f"{d.block_out_channels}{' + attention' if d.attention else ''}",
               "parameters (M)": f"{info['parameters'] / 1e6:.2f}", "steps": d.train_steps,
               "training s": f"{sum(h['seconds'] for h in info['history']):.0f}",
               "guidance": f"{g.guidance_scale:g}", "strength": strength_label(g.strength), "contexts": g.context_classes}
        for c in self.tail:
            sel = labels == c
            row[f"fidelity {classes[c]} (real)"] = (f"{(pred[sel] == c).mean():.2f} "
                                                    f"({(val_pred[self.val[1] == c] == c).mean():.2f})")
            if cal.get("realism_auroc"):
                row[f"realism AUROC {classes[c]}"] = f"{cal['realism_auroc'][classes[c]]:.2f}"
            if "judge_class" in table:  # the independent judge's view (lite0 features + logistic regression)
                row[f"judge fidelity {classes[c]}"] = f"{(table['judge_class'].to_numpy()[sel] == c).mean():.2f}"
        if "judge_val_balanced_accuracy" in cal:
            row["judge real val bacc"] = f"{cal['judge_val_balanced_accuracy']:.2f}"
        row.update(generated=len(table), within_threshold=int(table["within_threshold"].sum()),
                   too_typical=int((table["within_threshold"] & table["too_typical"]).sum()),  # select.min_real_quantile
                   near_copies=int(table["near_copy"].sum()), eligible=int(table["eligible"].sum()),
                   used=int(table["used"].sum()))
        self.diagnostics.append(row)
        if not hasattr(self, "grid_done"):
            self.grid_done = True
            self.grid(table, plan, images, masks)
        self.timed("select", t)
        used = table["used"].to_numpy()
        return images[used], labels[used], synthetic_labels(plan[used], self.data.classes, cfg.classifier)

    def grid(self, table, plan, images, masks, per=6) -> None:
        rows, labels = [], plan["label"].to_numpy()
        for c in self.tail:
            sel = np.flatnonzero(labels == c)
            order = sel[np.argsort(table["score"].to_numpy()[sel])]
            eligible = [i for i in order if table["eligible"].iloc[i]]
            rejected = [i for i in order[::-1] if not table["eligible"].iloc[i]]
            rows.append((self.data.classes[c], [self.train.images[self.train.labels == c][:per],
                                                [mask_rgb(masks[i]) for i in sel[:per]],
                                                images[eligible[:per]], images[rejected[:per]]]))
        image_grid(rows, self.args.plots / f"grid_{self.tag}.png", per)

    def variant(self, spec: str) -> None:
        name, overrides = parse_variant(spec)
        self.overrides[name] = overrides
        cfg = with_overrides(self.cfg, overrides)
        method = self.best if cfg.classifier.augmented_method == "best" else cfg.classifier.augmented_method
        x, y = self.train.images, self.train.labels
        if name.startswith("pool"):  # the generator's curve: diagnostics only, no classifier
            self.selected(name, cfg)
            return
        if name.startswith("synth"):
            images, labels, soft = self.selected(name, cfg)
            train = with_synthetic(x, y, images, labels, cfg.classifier.synthetic_max_ratio, **soft)
        elif name.startswith("real_oversample"):
            train = None  # per seed: the repeated images are drawn with the seed
        else:
            train = TrainingSet.real(x, y)
        t = time.time()
        for seed in cfg.classifier.seeds:
            self.fit(name, cfg, method, train or with_repeated_real(x, y, self.deficits_for(cfg), seed), seed)
        self.timed("augmented", t)


def summarise(frame: pd.DataFrame, classes: list, tail: list, y_true, probas: dict) -> pd.DataFrame:
    out = []
    for variant, g in frame.groupby("variant", sort=False):
        row = {"variant": variant, "loss": g["method"].iloc[0], "synthetic": int(g["synthetic_images"].mean()),
               "balanced acc (mean ± sd over seeds [95% bootstrap CI over images and seeds])":
                   fmt(g["balanced_accuracy"].tolist(), y_true, probas[variant])}
        for c in tail:
            r = g[f"recall_{classes[c]}"]
            row[f"R_{classes[c]}"] = f"{r.mean():.3f} ± {r.std(ddof=1):.3f}" if len(g) > 1 else f"{r.mean():.3f}"
        out.append(row)
    return pd.DataFrame(out)


def strength_label(strength) -> str:
    """``generate.strength`` as the table shows it: 0.5, or 0.5/0.7/0.9 for a list drawn per image."""
    return "/".join(f"{v:g}" for v in strength) if isinstance(strength, list) else f"{strength:g}"


def recipe(overrides: list[str]) -> tuple:
    """The classifier settings a synthetic variant shares with its control: its ``classifier.*`` overrides
    other than those that only act on synthetic images."""
    return tuple(sorted(o for o in overrides if o.startswith("classifier.")
                        and not o.startswith(("classifier.synthetic_", "classifier.soft_label",
                                              "classifier.feature_"))))


def rebalances(overrides: list[str]) -> bool:
    """Whether a variant's synthetic images count toward their class's frequency (``classifier.synthetic_rebalances``)."""
    values = [yaml.safe_load(o.partition("=")[2]) for o in overrides
              if o.partition("=")[0].strip() == "classifier.synthetic_rebalances"]
    return bool(values[-1]) if values else True


def matched_controls(variants: dict[str, list[str]], losses: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Each synthetic variant's candidate controls: the real-data-only variants (``real...``: oversampling, or
    a two-stage recipe on real images) trained with the same classifier recipe (:func:`recipe`).

    A variant whose synthetic images do not rebalance (``classifier.synthetic_rebalances: false``) and that
    has no recipe of its own also has the real-only training with its loss (``losses[variant]``, a
    baseline's name) as a control: real images repeated in its place, kept at their class's real frequency
    too, would be drawn as often as without repeating, which is that baseline."""
    real = {n: recipe(o) for n, o in variants.items() if n.startswith("real")}
    out = {}
    for n, o in variants.items():
        if n.startswith(SYNTHETIC):
            out[n] = [c for c, r in real.items() if r == recipe(o)]
            if not rebalances(o) and not recipe(o) and (losses or {}).get(n):
                out[n].append(losses[n])
    return out


def references(frame: pd.DataFrame, controls: dict[str, list[str]] | None = None) -> tuple[str | None, dict]:
    """The best baseline *by test* (None without baselines) and each synthetic variant's control: of its
    candidates (``controls``, default ``real_oversample``) the measured one of highest mean, the stricter;
    a variant without a control measured has none."""
    baselines = frame[frame["kind"] == "baseline"]
    if baselines.empty:
        return None, {}
    best = baselines.groupby("method")["balanced_accuracy"].mean().idxmax()
    means = frame.groupby("variant")["balanced_accuracy"].mean()
    chosen = {}
    for variant in frame.loc[frame["variant"].str.startswith(SYNTHETIC), "variant"].unique():
        measured = [c for c in (controls or {}).get(variant, ["real_oversample"]) if c in means.index]
        if measured:
            chosen[variant] = max(measured, key=means.get)
    return best, chosen


def seed_sd(rows: pd.DataFrame) -> float:
    """The sd of balanced accuracy over seeds; with a ``split`` column (several data splits, each with its
    own test set), the pooled within-split sd: how far one seed strays from its split's mean, not how far
    the test sets differ. NaN without two seeds of one split."""
    if "split" not in rows:
        return float(rows["balanced_accuracy"].std(ddof=1))
    groups = [g.to_numpy(float) for _, g in rows.groupby("split")["balanced_accuracy"]]
    dof = sum(len(g) - 1 for g in groups)
    return float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)) if dof else float("nan")


def against_the_bar(frame: pd.DataFrame, rarest: str, controls: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Each synthetic variant against issue 11's bar, seed by seed.

    The references are the best baseline *by test* and the control (:func:`references`). The margin is
    the largest seed sd (:func:`seed_sd`) among those two rows and the variant's own. A variant clears the
    bar when its mean beats both references by more than the margin and its recall of the rarest class
    beats both. A variant without a control measured is left out. With a ``split`` column the runs are
    paired by split and seed.
    """
    best, chosen = references(frame, controls)
    keys = ["split", "seed"] if "split" in frame else ["seed"]
    out = []
    for variant, g in frame[frame["variant"].str.startswith(SYNTHETIC)].groupby("variant", sort=False):
        if variant not in chosen:
            continue
        control = chosen[variant]
        refs = {f"baseline `{best}`": frame[(frame["kind"] == "baseline") & (frame["method"] == best)],
                "control": frame[frame["variant"] == control]}
        # np.max keeps a NaN (a row with one seed has no sd): such a variant cannot clear the bar
        margin = float(np.max([seed_sd(x) for x in (*refs.values(), g)]))
        by_seed = {k: r.set_index(keys) for k, r in refs.items()}
        g = g.set_index(keys)
        row, clears = {"variant": variant, "control": control, "balanced acc": f"{g['balanced_accuracy'].mean():.3f}"}, True
        for name, ref in by_seed.items():
            seeds = g.index.intersection(ref.index)
            d = g.loc[seeds, "balanced_accuracy"] - ref.loc[seeds, "balanced_accuracy"]
            row[f"paired diff vs {name}"] = f"{d.mean():+.3f} ± {d.std(ddof=1):.3f} ({int((d > 0).sum())}/{len(d)} up)"
            gap = g["balanced_accuracy"].mean() - ref["balanced_accuracy"].mean()
            clears &= bool(gap > margin) and g[f"recall_{rarest}"].mean() > ref[f"recall_{rarest}"].mean()
        row["margin (largest sd)"] = f"{margin:.3f}"
        row[f"R_{rarest} (baseline, control)"] = (f"{g[f'recall_{rarest}'].mean():.2f} ("
                                                  + ", ".join(f"{r[f'recall_{rarest}'].mean():.2f}" for r in
                                                              by_seed.values()) + ")")
        row["clears the bar"] = "yes" if clears else "no"
        out.append(row)
    return pd.DataFrame(out)


def seed_ensembles(frame: pd.DataFrame, classes: list, rarest: str, y_true, probas: dict,
                   controls: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Each synthetic variant's seeds as one model (``tailfill predict --ensemble``: the mean probability),
    against the same ensemble of the best baseline by test and of its control (as in :func:`against_the_bar`),
    with a paired bootstrap over the test images: what the test set can resolve once the seed noise is
    averaged away. One number per row, so no seed sd: evidence beside the bar, not the bar."""
    best, chosen = references(frame, controls)
    ens = {v: seed_ensemble(p) for v, p in probas.items()}

    def scores(variant):
        m = classification_metrics(y_true, ens[variant], classes)
        return f"{m['balanced_accuracy']:.3f} (R_{rarest} {m['per_class'][rarest]['recall']:.2f})"

    out = []
    for variant, control in chosen.items():  # every row's probabilities are kept beside its record (Bench.fit)
        row = {"variant": variant, "seeds": len(probas[variant]), "ensemble": scores(variant),
               f"baseline `{best}`": scores(best), "control": f"{control}: {scores(control)}"}
        for name, ref in (("baseline", best), ("control", control)):
            d, lo, hi, up = bootstrap_difference(y_true, ens[variant], ens[ref])
            row[f"diff vs {name} [95% CI], P(>0)"] = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}], {up:.2f}"
        out.append(row)
    return pd.DataFrame(out)


def pooled_splits(results: pd.DataFrame, tags: list[str], rarest: str, specs: list[str]) -> str:
    """The rows of several sections of results.csv, one data split each (runs that differ only in
    ``--set seed=...``, which draws the held-out images, the thinned training set and the generator anew),
    as one table per variant and split, and the bar over all of them, paired by split and seed, with the
    within-split seed sd as the margin (:func:`seed_sd`). Only variants measured on every split count.
    A split may be ``TAG+TAG``: sections run on the same split (e.g. a later run adding a loss) read as one;
    a variant in both takes the first's rows."""
    parts = {t: spec for spec in tags for t in spec.split("+")}
    missing = [t for t in parts if t not in set(results["tag"])]
    if missing:
        raise SystemExit(f"results.csv has no rows tagged {', '.join(missing)}")
    rows = results[results["tag"].isin(list(parts))].copy()
    rows["order"] = rows["tag"].map(list(parts).index)  # a split's first section wins a variant both ran
    rows["tag"] = rows["tag"].map(parts)
    rows = rows.sort_values("order", kind="stable").drop_duplicates(["tag", "variant", "seed"]).drop(columns="order")
    on_all = rows.groupby("variant")["tag"].nunique() == len(tags)
    rows = rows[rows["variant"].map(on_all)]
    frame = pd.DataFrame({"split": rows["tag"], "variant": rows["variant"], "method": rows["method"],
                          "seed": rows["seed"], "balanced_accuracy": rows["bacc"],
                          "kind": np.where(rows["variant"] == rows["method"], "baseline", "augmented"),
                          **{f"recall_{c[2:]}": rows[c] for c in rows.columns if c.startswith("R_")}})
    table = []
    for variant, g in frame.groupby("variant", sort=False):
        row = {"variant": variant}
        for tag in tags:
            s = g.loc[g["split"] == tag, "balanced_accuracy"]
            row[f"`{tag}` (mean ± sd)"] = f"{s.mean():.3f} ± {s.std(ddof=1):.3f}"
        row.update({"runs": len(g), "pooled mean": f"{g['balanced_accuracy'].mean():.3f}",
                    "seed sd (within split)": f"{seed_sd(g):.3f}",
                    "sd over all runs": f"{g['balanced_accuracy'].std(ddof=1):.3f}",
                    f"R_{rarest}": f"{g[f'recall_{rarest}'].mean():.2f}"})
        table.append(row)
    losses = rows.groupby("variant")["method"].first().to_dict()
    controls = matched_controls({n: o for n, o in map(parse_variant, specs)}, losses) if specs else None
    bar = against_the_bar(frame, rarest, controls)
    return ("per split (each row's seeds on each split's own test set) and pooled:\n\n" + to_markdown(pd.DataFrame(table))
            + "\n\nagainst the bar over all splits (paired by split and seed; margin: the largest within-split "
            "seed sd of the three rows):\n\n" + (to_markdown(bar) if not bar.empty else "no synthetic variant with a control"))


def write_outputs(bench: Bench, args, lines: list, t0: float, done: int, total: int) -> None:
    """The section (the log so far + tables of everything measured) and this tag's rows of results.csv."""
    results = results_table(bench.records)
    classes, tag = bench.data.classes, bench.tag
    body = [] if done == total else [f"\n**Partial: {done} of {total} variants finished so far.**"]
    if bench.diagnostics:
        body.append("\nsynthetic pools (class fidelity: share the feature classifier calls their own class, synthetic "
                    "(real held-out); realism AUROC: real held-out vs synthetic by OOD score, 0.5 = indistinguishable; "
                    "then the selection funnel):\n\n" + to_markdown(pd.DataFrame(bench.diagnostics).fillna("")))
    if len(results):
        baselines = (results["kind"] == "baseline").any()  # none with --variants-only: --pool-splits pairs them
        controls = matched_controls(bench.overrides, results.groupby("variant")["method"].first().to_dict())
        body.append(f"\nbest baseline by test (for reference only): `{references(results, controls)[0]}`" if baselines
                    else "\nno baselines in this run (--variants-only): `--pool-splits` pairs these rows with the "
                         "section that holds this split's baselines")
        body.append("\n" + to_markdown(summarise(results, classes, bench.tail, bench.test[1], bench.probas)))
        rarest = bench.rarest
        bar = against_the_bar(results, rarest, controls) if baselines else pd.DataFrame()
        if not bar.empty:
            body.append("\nagainst the bar (mean above the best baseline by test and the control by more than the largest "
                        f"seed sd of the three, and {rarest} recall above both; the control is the strongest real-data-only variant "
                        "with the same classifier settings; paired over seeds):\n\n" + to_markdown(bar))
        ensembles = seed_ensembles(results, classes, rarest, bench.test[1], bench.probas, controls) if baselines \
            else pd.DataFrame()
        if not ensembles.empty:
            body.append("\nseed ensembles (each row's seeds as one model, the mean probability as `tailfill predict --ensemble`; "
                        "paired bootstrap over test images, resampled within class):\n\n" + to_markdown(ensembles))
    body.append((f"\n![samples {tag}](benchmarks/grid_{tag}.png)\n" if bench.diagnostics else "")
                + "\nwall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in bench.times.items())
                + f"; total {time.time() - t0:.0f} s; peak memory {peak_rss_gb():.1f} GB")
    if done == total:
        print("\n".join(body), flush=True)
    if len(results):  # this tag's rows of results.csv (none before the first fit)
        frame = pd.DataFrame({"size": bench.cfg.data.image_size, "imbalance": bench.cfg.data.imbalance_ratio, "tag": tag,
                              "variant": results["variant"], "method": results["method"], "seed": results["seed"],
                              "synthetic": results["synthetic_images"], "val_bacc": results["val_balanced_accuracy"],
                              "bacc": results["balanced_accuracy"], **{f"R_{c}": results[f"recall_{c}"] for c in classes},
                              "seconds": results["train_seconds"]})
        path = args.plots / "results.csv"
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=frame.columns)
        if "tag" not in old.columns:
            old["tag"] = old["size"].astype(str) + "px"
        write_csv(path, pd.concat([old[old["tag"] != tag], frame], ignore_index=True))
    write_text(args.plots / f"section_{tag}.md", "\n".join(lines + body) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "longtail_isic_base.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    ap.add_argument("--sizes", type=int, nargs="+", help="image sizes (default: data.image_size)")
    ap.add_argument("--variants", nargs="*", default=None,
                    help=f"NAME:key=value,... (default: {' '.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--extra-variants", nargs="*", default=[], help="variants run after the default ones")
    ap.add_argument("--tag", default="", help="suffix of this run's section name (e.g. ir10)")
    ap.add_argument("--assemble-only", action="store_true",
                    help="only rebuild --out from findings.md and the saved per-size sections")
    ap.add_argument("--variants-only", action="store_true",
                    help="train the variants and no baselines (their loss from classifier.augmented_method, the pool "
                         "scored by select.feature_method's first seed): for a split whose baselines are in another "
                         "section, paired with it by --pool-splits SECTION+THIS")
    ap.add_argument("--pool-splits", nargs="+", metavar="TAG", default=None,
                    help="train nothing: pool these sections of results.csv (the same variants on different data "
                         "splits, --set seed=...) into one table paired by split and seed, written as section --tag; "
                         "TAG+TAG reads two sections of one split as one")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    args.plots = args.out.parent / "benchmarks"
    args.plots.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    variants = (DEFAULT_VARIANTS if args.variants is None else args.variants) + args.extra_variants
    lines = []

    def log(text):
        print(text, flush=True)
        lines.append(text)

    base = load_config(args.config, args.set)
    for attr in ("root", "cache_dir"):  # relative paths in the benchmark config: from the repository root
        value = getattr(base.data, attr)
        if value and not Path(value).is_absolute() and not Path(value).exists():
            setattr(base.data, attr, str(ROOT / value))
    if not args.assemble_only:
        for v in variants:  # refuse a bad variant before hours of training
            with_overrides(base, parse_variant(v)[1])
    if args.pool_splits:
        if not args.tag:
            raise SystemExit("--pool-splits needs --tag, the name of the section it writes")
        bench = Bench(base, args, lambda text: None)
        bench.prepare()  # only for the rarest training class (the split's seed does not change the counts)
        body = pooled_splits(pd.read_csv(args.plots / "results.csv"), args.pool_splits, bench.rarest,
                             args.variants or [])
        print(body, flush=True)
        write_text(args.plots / f"section_{args.tag}.md", f"## {args.tag}\n\nProduced by `python benchmarks/"
                   f"longtail_isic.py {' '.join(sys.argv[1:])}` from results.csv.\n\n{body}\n")
    if args.variants_only and (base.select.feature_method is None or base.classifier.augmented_method == "best"):
        raise SystemExit("--variants-only trains no baseline: set select.feature_method (whose classifier scores the "
                         "pool) and classifier.augmented_method (the variants' loss) to a baseline's name")
    sizes = [] if args.assemble_only or args.pool_splits else (args.sizes or [base.data.image_size])
    for size in sizes:
        lines.clear()
        t0 = time.time()
        cfg = copy.deepcopy(base)
        cfg.data.image_size = size
        bench = Bench(cfg, args, log)
        bench.tag = f"{size}px" + (f"_{args.tag}" if args.tag else "")
        c, dcfg, g = cfg.classifier, cfg.diffusion, cfg.generate
        log(f"## {bench.tag}\n\nProduced by `python benchmarks/longtail_isic.py " + " ".join(sys.argv[1:])
            + f"`. Data {cfg.data.kind} at {cfg.data.root}; classifier {c.backbone} "
            f"({'pretrained' if c.pretrained else 'from scratch'}), {c.epochs} epochs"
            f"{f', weights averaged (ema_decay {c.ema_decay})' if c.ema_decay else ''}"
            f"{f', keeps the {c.keep} epoch' if c.keep else ''}"
            f"{', scored on 8 views (classifier.tta)' if c.tta else ''}; generator "
            f"{dcfg.block_out_channels} UNet, {dcfg.train_steps} steps; sampler {g.sampler} x{g.steps}, guidance "
            f"{g.guidance_scale}, contexts {g.context_classes}, strength {strength_label(g.strength)}; oversample x{g.oversample}; "
            f"seeds {c.seeds}. Variants: " + ", ".join(f"`{v}`" for v in variants) + ".")
        bench.prepare()
        bench.baselines()
        write_outputs(bench, args, lines, t0, 0, len(variants))
        for i, spec in enumerate(variants):
            bench.variant(spec)
            write_outputs(bench, args, lines, t0, i + 1, len(variants))  # a killed run keeps what it measured
    # docs/benchmarks.md = the hand-written findings + every saved section
    parts = [p.read_text() for p in [args.plots / "findings.md"] if p.is_file()]
    parts += [p.read_text() for p in sorted(args.plots.glob("section_*.md"))]
    write_text(args.out, "# Benchmark: long-tailed ISIC 2019 (real images)\n\n" + "\n".join(parts))


if __name__ == "__main__":
    main()
