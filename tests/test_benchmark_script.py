"""The real-data benchmark script runs end to end (tiny settings, generated images in ISIC layout)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tailfill.data.demo import make_demo_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "longtail_isic.py"


def _tiny_sets(root, *extra) -> list:
    """The smallest settings the script runs with: one baseline, one seed, one epoch, a 2-level UNet."""
    return ["data.root=" + str(root), "data.imbalance_ratio=5", "data.val_per_class=3", "data.test_per_class=3",
            "classifier.methods=[ce]", "classifier.seeds=[0]", "classifier.epochs=1", "classifier.backbone=resnet10t",
            "diffusion.block_out_channels=[16, 32]", "generate.steps=2", *extra]


def _run_script(sets, variants, work, out) -> str:
    cmd = [sys.executable, str(SCRIPT), "--sizes", "16", *[a for s in sets for a in ("--set", s)],
           "--variants", *variants, "--work", str(work), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_benchmark_writes_its_tables_and_grid(tmp_path):
    root = make_demo_dataset(tmp_path / "isic", total=240, imbalance=2.0, size=32)
    out = tmp_path / "docs" / "benchmarks.md"
    sets = ["data.root=" + str(root), "data.imbalance_ratio=5", "data.val_per_class=3", "data.test_per_class=3",
            "classifier.methods=[ce, balanced_sampling]", "classifier.seeds=[0, 1]", "classifier.epochs=1",
            "classifier.backbone=resnet10t", "diffusion.train_steps=2", "diffusion.block_out_channels=[16, 32]",
            "generate.steps=2", "generate.oversample=1.5"]
    cmd = [sys.executable, str(SCRIPT), "--sizes", "16", *[a for s in sets for a in ("--set", s)],
           "--variants", "real_oversample", "synth_threshold", "synth_none:select.method=none",
           "synth_keep0.5:select.keep_fraction=0.5",
           "synth_same:generate.context_classes=same,generate.strength=0.5",
           "synth_half:select.method=none,select.fill_fraction=0.5",
           "synth_share:select.method=none,classifier.synthetic_share=0.5",
           "synth_max:select.method=none,generate.target=max", "real_oversample_max:generate.target=max",
           "real_crt:classifier.retrain_head=true,classifier.head_epochs=1",
           "synth_translate:generate.strength=0.5,classifier.soft_labels=true,select.method=none",
           "synth_latent:diffusion.space=latent,autoencoder.block_out_channels=[8, 16],autoencoder.train_steps=2,"
           "select.method=none",
           "--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for variant in ("| ce |", "| real_oversample |", "| synth_threshold |", "| synth_keep0.5 |", "| synth_none |",
                    "| synth_same |", "| synth_half |", "| synth_share |", "| real_crt |",
                    "| synth_translate |", "| synth_latent |"):
        assert variant in text, variant
    assert "realism AUROC" in text and "fidelity" in text and "peak memory" in text
    assert (out.parent / "benchmarks" / "grid_16px.png").stat().st_size > 1000
    results = pd.read_csv(out.parent / "benchmarks" / "results.csv")
    assert set(results["seed"]) == {0, 1} and results["bacc"].between(0, 1).all()
    n_syn = results.groupby("variant")["synthetic"].max()
    assert 0 < n_syn["synth_half"] < n_syn["synth_none"]  # fill_fraction=0.5 uses about half the images
    assert n_syn["synth_keep0.5"] <= n_syn["synth_threshold"] <= n_syn["synth_none"]  # the product's filters stack
    assert n_syn["synth_share"] == n_syn["synth_none"]  # the share changes how often they are drawn, not which
    assert n_syn["real_crt"] == 0 and n_syn["real_oversample"] == n_syn["synth_none"]
    # a variant's own generate.target sets its deficits: filling to the largest class needs more images
    assert n_syn["synth_max"] > n_syn["synth_none"] and n_syn["real_oversample_max"] > n_syn["real_oversample"]
    # a pixel generator with four pools (same-class SDEdit, translation and target max differ), reused by later variants,
    # and a latent one
    assert len(list((tmp_path / "work").glob("generator_*"))) == 2  # pixel and latent
    assert len(list((tmp_path / "work").glob("pool_*.npz"))) == 5  # + the larger pool of synth_max
    assert "validation reconstruction PSNR" in text
    # the hand-written findings go on top when the doc is rebuilt from the saved sections
    (out.parent / "benchmarks" / "findings.md").write_text("## Findings\n\nhand-written\n")
    out.unlink()
    rebuilt = subprocess.run([sys.executable, str(SCRIPT), "--assemble-only", "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    text = out.read_text()
    assert text.index("hand-written") < text.index("## 16px") < text.index("| synth_none |")


def test_a_bad_variant_is_refused_before_any_training(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--variants", "synth_x:generate.strenght=0.5",
                           "--work", str(tmp_path), "--out", str(tmp_path / "b.md")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "generate.strenght" in done.stderr


@pytest.mark.slow
def test_adding_a_seed_reuses_the_cached_fits_of_the_others(tmp_path):
    root = make_demo_dataset(tmp_path / "isic", total=240, imbalance=2.0, size=16)
    sets = ["data.root=" + str(root), "data.imbalance_ratio=5", "data.val_per_class=3", "data.test_per_class=3",
            "classifier.methods=[ce]", "classifier.epochs=1", "classifier.backbone=resnet10t"]

    def run(seeds, *extra, variants=("real_oversample",)):
        cmd = [sys.executable, str(SCRIPT), "--sizes", "16", *[a for s in [*sets, *extra] for a in ("--set", s)],
               "--set", f"classifier.seeds={seeds}", "--variants", *variants,
               "--work", str(tmp_path / "work"), "--out", str(tmp_path / "docs" / "b.md")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return sorted(p.name for p in (tmp_path / "work" / "fits").iterdir())

    first = run("[0]")
    assert len(first) == 2  # the baseline and the control, seed 0
    second = run("[0, 1]")
    assert len(second) == 4 and set(first) <= set(second)  # seed 0's two fits were found, not trained again
    results = pd.read_csv(tmp_path / "docs" / "benchmarks" / "results.csv")
    assert sorted(results["seed"]) == [0, 0, 1, 1]
    # test-time augmentation changes the scoring, not the training: the same four fits, re-scored on 8 views
    assert run("[0, 1]", "classifier.tta=true") == second
    fits = list((tmp_path / "work" / "fits").iterdir())
    assert all((f / "tta.json").is_file() and not (f / "model" / "config.json").read_text().count('"tta": true')
               for f in fits)  # the cached model stays the one-view fit; its TTA scores are kept beside it
    assert len(pd.read_csv(tmp_path / "docs" / "benchmarks" / "results.csv")) == 4
    # cRT re-trains the head of the cached fit without it: two new fits per seed, none of the old re-trained
    stamps = {f.name: (f / "fit.json").stat().st_mtime_ns for f in fits}
    crt = run("[0, 1]", variants=("real_oversample", "real_oversample_crt:classifier.retrain_head=true",
                                  "real_crt:classifier.retrain_head=true,classifier.head_epochs=2",
                                  "feat_gaussian:classifier.retrain_head=true,classifier.feature_fill=gaussian"))
    assert len(crt) == 10 and set(second) <= set(crt)  # generated features too: a head stage on the cached fit
    assert all((tmp_path / "work" / "fits" / n / "fit.json").stat().st_mtime_ns == t for n, t in stamps.items())
    results = pd.read_csv(tmp_path / "docs" / "benchmarks" / "results.csv")
    secs = results.set_index(["variant", "seed"])["seconds"]
    for seed in (0, 1):  # its time is the first stage's (the cached fit's) plus the head's
        assert secs["real_oversample_crt", seed] > secs["real_oversample", seed]
        assert secs["real_crt", seed] > secs["ce", seed]


@pytest.mark.slow
def test_a_variants_only_run_trains_no_baseline_and_pools_with_its_splits_baselines(tmp_path):
    root = make_demo_dataset(tmp_path / "isic", total=240, imbalance=2.0, size=16)
    sets = _tiny_sets(root, "diffusion.train_steps=2", "classifier.augmented_method=ce")
    docs, work = tmp_path / "docs" / "b.md", tmp_path / "work"
    variant = ("synth_mix:generate.strength=[0.5, 0.9],classifier.soft_labels=true,"
               "classifier.synthetic_rebalances=false,select.method=none")

    def run(*args, feature_method=None):
        cmd = [sys.executable, str(SCRIPT), "--sizes", "16", *[a for s in sets for a in ("--set", s)], *args,
               *(["--set", f"select.feature_method={feature_method}"] if feature_method else []),
               "--work", str(work), "--out", str(docs)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    refused = run("--variants-only", "--tag", "b", "--variants", variant)
    assert refused.returncode != 0 and "select.feature_method" in refused.stderr
    assert not list(work.glob("generator_*"))  # refused before any training
    assert run("--tag", "a", "--variants", "real_oversample").returncode == 0
    done = run("--variants-only", "--tag", "b", "--variants", variant, feature_method="ce")
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_csv(docs.parent / "benchmarks" / "results.csv")
    assert set(results.loc[results["tag"] == "16px_b", "variant"]) == {"synth_mix"}  # no baseline fitted here
    assert "0.5/0.9" in (docs.parent / "benchmarks" / "section_16px_b.md").read_text()  # the strengths drawn from
    pooled = subprocess.run([sys.executable, str(SCRIPT), "--pool-splits", "16px_a+16px_b", "--tag", "ab",
                             "--set", "data.image_size=16", "--variants", "real_oversample", variant,
                             "--out", str(docs)], capture_output=True, text=True, timeout=120)
    assert pooled.returncode == 0, pooled.stderr[-3000:]
    text = (docs.parent / "benchmarks" / "section_ab.md").read_text()
    bar = text.split("against the bar")[1]  # paired with split a's baseline and control, seed by seed
    assert "| synth_mix |" in bar and "vs baseline `ce`" in bar and "(1/1 up)" in bar


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("longtail_isic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bar_needs_a_margin_over_both_references_and_more_rare_class_recall():
    def rows(variant, kind, baccs, df):
        return [{"variant": variant, "method": "ce", "kind": kind, "seed": s,
                 "balanced_accuracy": b, "recall_DF": df} for s, b in enumerate(baccs)]

    frame = pd.DataFrame(rows("ce", "baseline", [0.50, 0.52, 0.51], 0.30)
                         + rows("real_oversample", "augmented", [0.51, 0.53, 0.52], 0.32)
                         + rows("synth_good", "augmented", [0.56, 0.58, 0.57], 0.40)    # +0.05, sd 0.01
                         + rows("synth_noisy", "augmented", [0.50, 0.66, 0.58], 0.40)   # +0.06, sd 0.08
                         + rows("synth_flat_df", "augmented", [0.56, 0.58, 0.57], 0.32))  # DF recall ties
    bar = _bench_module().against_the_bar(frame, "DF").set_index("variant")
    assert bar.loc["synth_good", "clears the bar"] == "yes"
    assert bar.loc["synth_noisy", "clears the bar"] == "no"  # the gap is under its own seed sd
    assert bar.loc["synth_flat_df", "clears the bar"] == "no"
    assert bar.loc["synth_good", "paired diff vs control"] == "+0.050 ± 0.000 (3/3 up)"
    assert "real_oversample" not in bar.index and "ce" not in bar.index
    assert _bench_module().against_the_bar(frame[frame["variant"] != "real_oversample"], "DF").empty
    one_seed = frame[(frame["seed"] == 0) | (frame["variant"] != "real_oversample")]  # a control without a spread
    assert _bench_module().against_the_bar(one_seed, "DF").set_index("variant").loc["synth_good", "clears the bar"] == "no"


def test_each_synthetic_variant_is_judged_against_the_strongest_control_of_its_recipe():
    bench = _bench_module()
    controls = bench.matched_controls({
        "real_oversample": [], "real_oversample_t100": ["generate.target=100"],
        "real_oversample_crt": ["classifier.retrain_head=true"], "real_crt": ["classifier.retrain_head=true"],
        "synth_a": ["generate.strength=0.5", "classifier.synthetic_share=0.5"],   # synthetic-only knobs: no recipe
        "synth_crt": ["classifier.synthetic_share=0.5", "classifier.retrain_head=true"],
        "synth_lr": ["classifier.lr=1e-3"],
        # generated features in the head re-training: judged like a synthetic variant, against cRT on real data
        "feat_diffusion": ["classifier.retrain_head=true", "classifier.feature_fill=diffusion"]})
    assert controls == {"synth_a": ["real_oversample", "real_oversample_t100"],
                        "synth_crt": ["real_oversample_crt", "real_crt"], "synth_lr": [],
                        "feat_diffusion": ["real_oversample_crt", "real_crt"]}

    def rows(variant, kind, baccs, df=0.3):
        return [{"variant": variant, "method": "ce", "kind": kind, "seed": s,
                 "balanced_accuracy": b, "recall_DF": df} for s, b in enumerate(baccs)]

    frame = pd.DataFrame(rows("ce", "baseline", [0.50, 0.52, 0.51]) + rows("real_oversample", "augmented", [0.51, 0.53, 0.52])
                         + rows("real_oversample_crt", "augmented", [0.52, 0.54, 0.53])
                         + rows("real_crt", "augmented", [0.565, 0.585, 0.575])
                         + rows("synth_a", "augmented", [0.57, 0.59, 0.58], 0.4)
                         + rows("synth_crt", "augmented", [0.57, 0.59, 0.58], 0.4)
                         + rows("synth_lr", "augmented", [0.57, 0.59, 0.58], 0.4)
                         + rows("feat_diffusion", "augmented", [0.57, 0.59, 0.58], 0.4))
    bar = bench.against_the_bar(frame, "DF", controls).set_index("variant")
    assert bar.loc["synth_a", "control"] == "real_oversample" and bar.loc["synth_a", "clears the bar"] == "yes"
    # the stronger of the two real-only cRT rows is the control, and it is within the margin
    assert bar.loc["synth_crt", "control"] == "real_crt" and bar.loc["synth_crt", "clears the bar"] == "no"
    assert "synth_lr" not in bar.index  # no control trained with its settings: not judged
    assert bar.loc["feat_diffusion", "control"] == "real_crt"


def test_synthetic_images_kept_at_real_class_frequency_are_judged_against_real_only_training_with_their_loss():
    bench = _bench_module()
    variants = {"real_oversample": [], "real_crt": ["classifier.retrain_head=true"],
                "synth_freq": ["classifier.synthetic_share=0.5", "classifier.synthetic_rebalances=false"],
                "synth_rebal": ["classifier.synthetic_share=0.5", "classifier.synthetic_rebalances=true"],
                "synth_freq_crt": ["classifier.synthetic_rebalances=false", "classifier.retrain_head=true"]}
    losses = {n: "logit_adjust" for n in variants}
    controls = bench.matched_controls(variants, losses)
    assert controls["synth_freq"] == ["real_oversample", "logit_adjust"]
    assert controls["synth_rebal"] == ["real_oversample"]  # its images shift the frequency as repeats would
    assert controls["synth_freq_crt"] == ["real_crt"]  # a recipe of its own keeps its two-stage control
    assert bench.matched_controls(variants)["synth_freq"] == ["real_oversample"]  # no loss known: none added

    def rows(variant, method, baccs, df=0.3):
        return [{"variant": variant, "method": method, "kind": "baseline" if variant == method else "augmented",
                 "seed": s, "balanced_accuracy": b, "recall_DF": df} for s, b in enumerate(baccs)]

    frame = pd.DataFrame(rows("ce", "ce", [0.50, 0.52, 0.51]) + rows("logit_adjust", "logit_adjust", [0.60, 0.62, 0.61])
                         + rows("synth_freq", "logit_adjust", [0.62, 0.64, 0.63], 0.4))
    only = {"synth_freq": variants["synth_freq"]}
    bar = bench.against_the_bar(frame, "DF", bench.matched_controls(only, {"synth_freq": "logit_adjust"}))
    assert bar.set_index("variant").loc["synth_freq", "control"] == "logit_adjust"
    assert bar.set_index("variant").loc["synth_freq", "paired diff vs control"] == "+0.020 ± 0.000 (3/3 up)"
    assert bench.against_the_bar(frame, "DF", bench.matched_controls(only)).empty  # no control measured


def test_pooled_splits_pair_runs_by_split_and_seed_and_take_the_within_split_seed_sd():
    bench = _bench_module()

    def rows(tag, variant, method, baccs, df):
        return [{"tag": tag, "variant": variant, "method": method, "seed": s, "bacc": b, "R_DF": df, "R_NV": 0.9}
                for s, b in enumerate(baccs)]

    results = []
    for tag, offset in (("split0", 0.0), ("split1", 0.10)):  # split1's test set is easier for every row
        results += (rows(tag, "ce", "ce", [0.50 + offset, 0.52 + offset, 0.51 + offset], 0.30)
                    + rows(tag, "real_oversample", "ce", [0.51 + offset, 0.53 + offset, 0.52 + offset], 0.32)
                    + rows(tag, "synth_a", "ce", [0.56 + offset, 0.58 + offset, 0.57 + offset], 0.40))
    results += rows("split0", "synth_only_once", "ce", [0.9, 0.9, 0.9], 0.9)  # measured on one split only
    results = pd.DataFrame(results)
    frame = results.rename(columns={"tag": "split", "bacc": "balanced_accuracy", "R_DF": "recall_DF"})
    frame["kind"] = np.where(frame["variant"] == frame["method"], "baseline", "augmented")
    synth = frame[frame["variant"] == "synth_a"]
    assert bench.seed_sd(synth) == pytest.approx(0.01)  # the split offset is not seed noise...
    assert bench.seed_sd(synth.drop(columns="split")) > 0.05  # ...which the sd over all six runs would count
    bar = bench.against_the_bar(frame[frame["variant"] != "synth_only_once"], "DF").set_index("variant")
    assert bar.loc["synth_a", "paired diff vs control"] == "+0.050 ± 0.000 (6/6 up)"
    assert bar.loc["synth_a", "margin (largest sd)"] == "0.010" and bar.loc["synth_a", "clears the bar"] == "yes"

    text = bench.pooled_splits(results, ["split1", "split0"], "DF", [])
    assert "synth_only_once" not in text and "| synth_a | real_oversample | 0.620 |" in text
    assert text.index("`split1` (mean") < text.index("`split0` (mean")  # the splits in the order asked
    with pytest.raises(SystemExit, match="split9"):
        bench.pooled_splits(results, ["split0", "split9"], "DF", [])

    # a later section on the same split (another loss) joins its split; a variant both ran keeps the first's rows
    later = pd.DataFrame(sum((rows(f"{tag}_la", "logit_adjust", "logit_adjust", [0.60 + o, 0.62 + o, 0.61 + o], 0.5)
                              + rows(f"{tag}_la", "ce", "ce", [0.0, 0.0, 0.0], 0.0)
                              for tag, o in (("split0", 0.0), ("split1", 0.10))), []))
    text = bench.pooled_splits(pd.concat([results, later]), ["split0+split0_la", "split1+split1_la"], "DF", [])
    assert "| logit_adjust | 0.610 ± 0.010 | 0.710 ± 0.010 | 6 | 0.660 |" in text
    assert "| ce | 0.510 ± 0.010 | 0.610 ± 0.010 | 6 | 0.560 |" in text
    # the best baseline by test is now logit_adjust, which synth_a does not beat
    assert "| synth_a | real_oversample | 0.620 | -0.040" in text and "| no |" in text
    with pytest.raises(SystemExit, match="split1_x"):
        bench.pooled_splits(results, ["split0", "split1+split1_x"], "DF", [])


def test_seed_ensembles_compare_the_mean_probability_of_each_rows_seeds(rng):
    bench = _bench_module()
    classes = ["NV", "DF"]
    y = np.repeat([0, 1], 40)
    right, wrong = np.eye(2)[y], np.eye(2)[1 - y]

    def seeds(p_right):  # each seed right on a random share p_right of the images
        return [np.where(rng.random((80, 1)) < p_right, right, wrong) * 0.8 + 0.1 for _ in range(3)]

    probas = {"ce": seeds(0.6), "real_oversample": seeds(0.6), "synth_a": seeds(0.7)}
    frame = pd.DataFrame([{"variant": v, "method": "ce", "kind": "baseline" if v == "ce" else "augmented", "seed": s,
                           "balanced_accuracy": float(np.mean(p.argmax(1) == y))}
                          for v, ps in probas.items() for s, p in enumerate(ps)])
    table = bench.seed_ensembles(frame, classes, "DF", y, probas).set_index("variant")
    assert list(table.index) == ["synth_a"] and table.loc["synth_a", "seeds"] == 3
    ens = float(np.mean(np.mean(probas["synth_a"], 0).argmax(1) == y))
    assert table.loc["synth_a", "ensemble"].startswith(f"{ens:.3f}")
    assert table.loc["synth_a", "control"].startswith("real_oversample: ")
    diff = table.loc["synth_a", "diff vs control [95% CI], P(>0)"]
    assert float(diff.split(" ")[0]) > 0  # three 70 % seeds vote better than three 60 % ones


@pytest.mark.slow
def test_a_moved_work_folder_keeps_its_synthetic_pools(tmp_path):
    root = make_demo_dataset(tmp_path / "isic", total=240, imbalance=2.0, size=16)
    sets = _tiny_sets(root, "diffusion.train_steps=2")

    def run(work):
        _run_script(sets, ["synth_threshold"], work, tmp_path / "docs" / "b.md")
        return {p.name: p.stat().st_mtime_ns for p in work.glob("pool_*.npz")}

    first = run(tmp_path / "work")
    assert len(first) == 1
    (tmp_path / "work").rename(tmp_path / "moved")
    assert run(tmp_path / "moved") == first  # found under the same key, not generated again


@pytest.mark.slow
def test_a_longer_generator_resumes_from_a_shorter_one_and_pool_variants_train_no_classifier(tmp_path):
    from safetensors.torch import load_file

    root = make_demo_dataset(tmp_path / "isic", total=240, imbalance=2.0, size=16)
    sets = _tiny_sets(root, "diffusion.checkpoint_every=1")

    def run(work, *variants):
        return _run_script(sets, variants, work, tmp_path / "docs" / "b.md")

    log = run(tmp_path / "chain", "pool_short:diffusion.train_steps=2", "pool_long:diffusion.train_steps=4")
    assert "4 steps: resumed from the finished 2-step run" in log
    assert len(list((tmp_path / "chain" / "fits").iterdir())) == 1  # the baseline only: pools train no classifier
    section = (tmp_path / "docs" / "benchmarks" / "section_16px.md").read_text()
    assert "| pool_short |" in section and "| pool_long |" in section and "realism AUROC" in section
    run(tmp_path / "fresh", "pool_long:diffusion.train_steps=4")  # the same 4 steps, from scratch

    def weights(work):
        [ckpt] = [p for p in work.glob("generator_*") if '"steps": 4' in (p / "train_info.json").read_text()]
        return load_file(ckpt / "checkpoint" / "unet_ema" / "diffusion_pytorch_model.safetensors")

    resumed, fresh = weights(tmp_path / "chain"), weights(tmp_path / "fresh")
    assert resumed.keys() == fresh.keys()
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)  # resuming is the longer run, not an approximation
