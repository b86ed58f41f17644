"""tailfill sweep: variants as ordinary runs, stage outputs shared by key; tailfill compare builds the tables."""
import re

import pandas as pd
import pytest
import yaml

from tailfill.cli import main
from tailfill.config import load_config
from tailfill.sweep import SweepSpec, stage_key

from conftest import REPO, tiny_overrides


def write_spec(tmp_path, variants, controls=("real_oversample",), seeds=(0, 1)):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_overrides(tmp_path / "unused")))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"base": str(base), "out": str(tmp_path / "sweep"), "controls": list(controls),
                                    "set": {"classifier.seeds": list(seeds), "classifier.epochs": 2,
                                            "diffusion.train_steps": 10}, "variants": variants}))
    return spec


def test_stage_keys_follow_exactly_what_a_stage_reads():
    a = load_config(overrides=["generate.guidance_scale=2.0"])
    b = load_config(overrides=["generate.guidance_scale=3.0"])
    for stage in ("prepare", "train-diffusion"):
        assert stage_key(a, stage) == stage_key(b, stage)  # upstream of generation: shared
    assert stage_key(a, "generate") != stage_key(b, "generate")
    assert stage_key(a, "train-baseline", "ce", 0) == stage_key(b, "train-baseline", "ce", 0)
    c = load_config(overrides=["mixing.share=0.5"])  # acts on synthetic images only
    assert stage_key(a, "train-baseline", "ce", 0) == stage_key(c, "train-baseline", "ce", 0)
    assert stage_key(load_config(), "train-augmented", "ce", 0, "ce") != stage_key(c, "train-augmented", "ce", 0, "ce")
    more_seeds = load_config(overrides=["classifier.seeds=[0, 1, 2]"])  # a new seed leaves the others' keys alone
    assert stage_key(more_seeds, "train-augmented", "ce", 0, "ce") == stage_key(load_config(), "train-augmented", "ce", 0, "ce")
    assert stage_key(a, "select", feature="ce") != stage_key(a, "select", feature="logit_adjust")
    # the real-oversampling control reads no generator: its fits do not move with generator settings
    ra, rb = (load_config(overrides=[o, "mixing.fill_with=real"]) for o in ("diffusion.train_steps=10",
                                                                                "generate.guidance_scale=1.0"))
    assert stage_key(ra, "train-augmented", "ce", 0, "ce") == stage_key(rb, "train-augmented", "ce", 0, "ce")
    rc = load_config(overrides=["generate.target=50", "mixing.fill_with=real"])  # another deficit
    assert stage_key(ra, "train-augmented", "ce", 0, "ce") != stage_key(rc, "train-augmented", "ce", 0, "ce")
    d = load_config(overrides=["data.workers=1"])  # how fast, not what
    assert stage_key(load_config(), "prepare") == stage_key(d, "prepare")
    e = load_config(overrides=["data.image_size=64"])
    assert stage_key(load_config(), "train-baseline", "ce", 0) != stage_key(e, "train-baseline", "ce", 0)


def test_spec_errors_name_the_variant_or_key(tmp_path):
    with pytest.raises(ValueError, match="unknown key.*varients"):
        SweepSpec.from_dict({"out": "x", "varients": {}})
    with pytest.raises(ValueError, match="unknown control 'real_repeat'"):
        SweepSpec.from_dict({"out": "x", "controls": ["real_repeat"], "variants": {"a": {}}})
    with pytest.raises(ValueError, match="variant bad: invalid config: classifier.epochs=0"):
        SweepSpec.from_dict({"out": "x", "variants": {"bad": {"classifier.epochs": 0}}})
    with pytest.raises(ValueError, match="splits must be a list of data seeds"):
        SweepSpec.from_dict({"out": "x", "splits": [0, "one"], "variants": {"a": {}}})


def test_splits_give_each_variant_one_run_per_data_seed_with_folds_inside(tmp_path):
    spec = SweepSpec.from_dict({"out": str(tmp_path), "splits": [0, 2], "set": {"data.folds": 3},
                                "variants": {"a": {}}})
    runs = spec.runs("a")
    assert [(s, f) for s, f, _ in runs] == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert runs[4][2].seed == 2 and runs[4][2].run_dir == str(tmp_path / "a" / "split_2" / "fold_1")
    assert stage_key(runs[0][2], "prepare") != stage_key(runs[3][2], "prepare")  # another split: other images


def test_publish_links_back_and_a_second_job_of_the_same_key_keeps_its_own(tmp_path):
    from tailfill.sweep.store import _publish

    entry = tmp_path / "store" / "generate" / "k1"
    for job in ("a", "b"):
        (tmp_path / job / "synthetic").mkdir(parents=True)
        (tmp_path / job / "synthetic" / "manifest.csv").write_text(job)
    _publish(tmp_path / "a", entry, ["synthetic"], {"stage": "generate"})
    assert (tmp_path / "a" / "synthetic").is_symlink() and (entry / "synthetic" / "manifest.csv").read_text() == "a"
    assert (tmp_path / "a" / "synthetic" / "manifest.csv").read_text() == "a"
    _publish(tmp_path / "b", entry, ["synthetic"], {"stage": "generate"})  # b finished second: it keeps its copy
    assert not (tmp_path / "b" / "synthetic").is_symlink()
    assert (tmp_path / "b" / "synthetic" / "manifest.csv").read_text() == "b"


@pytest.mark.slow
def test_tiny_sweep_shares_every_identical_stage_and_compare_builds_the_table(tmp_path, monkeypatch, capsys):
    import tailfill.classifier.train as classify
    import tailfill.generator.train as diffusion
    from tailfill import stages

    calls = {"fit": 0, "diffusion": 0, "prepare": 0}

    def counting(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(classify, "fit_and_score", counting("fit", classify.fit_and_score))
    monkeypatch.setattr(diffusion, "train_diffusion", counting("diffusion", diffusion.train_diffusion))
    monkeypatch.setitem(stages.STAGES, "prepare", counting("prepare", stages.STAGES["prepare"]))
    spec = write_spec(tmp_path, {"guidance_2": {"generate.guidance_scale": 2.0},
                                 "guidance_3": {"generate.guidance_scale": 3.0}})
    assert main(["sweep", str(spec), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["0", "guidance_2", "1", "guidance_3", "2", "real_oversample"]
    assert main(["sweep", str(spec)]) == 0
    # one prepare, one generator, 2 x 2 baselines shared by all three variants; 2 x 2 synthetic fits, 2 control
    assert calls == {"fit": 4 + 4 + 2, "diffusion": 1, "prepare": 1}
    out = tmp_path / "sweep"
    for name in ("guidance_2", "guidance_3", "real_oversample"):
        assert (out / name / "results" / "results.csv").is_file()  # each an ordinary run directory
    assert (out / "guidance_3" / "diffusion").is_symlink() and not (out / "real_oversample" / "synthetic").exists()
    page = (out / "compare.md").read_text()
    for row in ("baseline:ce", "baseline:logit_adjust", "guidance_2", "guidance_3", "real_oversample", "vs reference",
                "fidelity, real", "realism AUROC"):
        assert row in page, row
    times = page[page.index("## Stage times"):]  # each computed stage once, by the variant that computed it
    assert times.count("| train-diffusion |") == 1 and "| generate | guidance_3 | 1 |" in times
    assert "| baseline fit: ce |  | 2 |" in times
    assert re.search(r"\| augmented fit: \w+ \| real_oversample \| 2 \|", times)
    results = pd.read_csv(out / "results.csv")
    assert {"dataset", "size", "variant", "fold", "seed", "bacc", "R_DF"} <= set(results.columns)
    assert results.groupby("role").size().to_dict() == {"baseline": 4, "control": 2, "synthetic": 4}
    # run again, with a third seed: only the new seed's fits train, nothing else is recomputed
    spec = write_spec(tmp_path, {"guidance_2": {"generate.guidance_scale": 2.0},
                                 "guidance_3": {"generate.guidance_scale": 3.0}}, seeds=(0, 1, 2))
    calls.update(fit=0, diffusion=0, prepare=0)
    for i in range(3):  # as a job array would: one variant per task
        assert main(["sweep", str(spec), "--index", str(i), "--no-compare"]) == 0
    assert calls == {"fit": 2 + 2 + 1, "diffusion": 0, "prepare": 0}
    assert main(["compare", str(out)]) == 0
    assert pd.read_csv(out / "results.csv").groupby("role").size().to_dict() == {"baseline": 6, "control": 3,
                                                                                 "synthetic": 6}
    # the archive: every run's record without weights or images; compare rebuilds the same table from it, and a
    # sweep pointed at it skips every finished run
    kept = tmp_path / "kept"
    assert main(["sweep", str(spec), "--archive", str(kept)]) == 0
    files = [p for p in kept.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in (".safetensors", ".pt", ".npy", ".png")]
    assert not any(p.is_symlink() for p in kept.rglob("*"))
    assert main(["compare", str(kept)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(kept / "results.csv"), pd.read_csv(out / "results.csv"))
    calls.update(fit=0, diffusion=0, prepare=0)
    assert main(["sweep", str(spec), "--out", str(kept), "--no-compare"]) == 0
    assert calls == {"fit": 0, "diffusion": 0, "prepare": 0}
    # a variant changed upstream of a shared output gets its own, and the old entry is left as it was
    old_pool = (out / "guidance_2" / "synthetic").resolve()
    before = (old_pool / "manifest.csv").read_text()
    spec = write_spec(tmp_path, {"guidance_2": {"generate.guidance_scale": 2.5},
                                 "guidance_3": {"generate.guidance_scale": 3.0}}, seeds=(0, 1, 2))
    assert main(["sweep", str(spec), "--variant", "guidance_2", "--no-compare"]) == 0
    assert (out / "guidance_2" / "synthetic").resolve() != old_pool
    assert (old_pool / "manifest.csv").read_text() == before
    assert pd.read_csv(out / "guidance_2" / "synthetic" / "manifest.csv")["guidance_scale"].eq(2.5).all()


def test_compare_pairs_each_synthetic_row_with_the_strongest_real_row_of_its_settings():
    from tailfill.compare import comparison_table, paired

    rows = []
    for fold in (0, 1):
        for seed in (0, 1):
            base = 0.5 + 0.01 * fold
            rows += [{"model": "baseline:ce", "role": "baseline", "settings": "a", "fold": fold, "seed": seed,
                      "bacc": base, "R_DF": 0.2},
                     {"model": "real_oversample", "role": "control", "settings": "a", "fold": fold, "seed": seed,
                      "bacc": base + 0.02, "R_DF": 0.3},
                     {"model": "baseline:other", "role": "baseline", "settings": "b", "fold": fold, "seed": seed,
                      "bacc": 0.9, "R_DF": 0.9},  # stronger, but other classifier settings: never the reference
                     {"model": "synth", "role": "synthetic", "settings": "a", "fold": fold, "seed": seed,
                      "bacc": base + 0.03 + 0.01 * seed, "R_DF": 0.5}]
    frame = pd.DataFrame(rows)
    table = comparison_table(frame, ["DF"]).set_index("model")
    assert table.loc["synth", "reference"] == "real_oversample"
    assert table.loc["synth", "up"] == "4/4" and table.loc["synth", "vs reference"].startswith("+0.015")
    p = paired(frame[frame["model"] == "synth"], frame[frame["model"] == "real_oversample"])
    assert p["pairs"] == 4 and p["low"] <= p["diff"] <= p["high"] and abs(p["diff"] - 0.015) < 1e-9
    assert paired(frame[frame["model"] == "synth"].assign(fold=9), frame[frame["model"] == "baseline:ce"]) == {"pairs": 0}


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("sweep_*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweep_specs_load_with_their_controls(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # their base paths are relative to the repository root
    spec = SweepSpec.load(path)
    assert "real_oversample" in spec.variants and spec.config("real_oversample").mixing.fill_with == "real"
    assert all(spec.runs(name) for name in spec.variants)


def test_fold_must_exist_in_every_variant_before_anything_runs(tmp_path):
    from tailfill.sweep import run_sweep

    spec = SweepSpec.load(write_spec(tmp_path, {"a": {}}))
    with pytest.raises(ValueError, match="no data.folds"):
        run_sweep(spec, folds=[0])
    spec.base.setdefault("data", {})["folds"] = 3
    with pytest.raises(ValueError, match="folds 0 to 2"):
        run_sweep(spec, folds=[1, 3])
    assert not spec.out.exists()  # nothing was written


def test_config_changes_ignore_where_the_images_are_cached(tmp_path):
    from tailfill.run import Run

    cfg = load_config(None, [f"run_dir={tmp_path / 'r'}", "data.cache_dir=/elsewhere"])
    run = Run(cfg)
    run.initialise()
    moved = load_config(None, [f"run_dir={tmp_path / 'moved'}", "data.cache_dir=/moved/cache", "data.workers=3"])
    run.paths.config.rename(tmp_path / "c.yaml")
    other = Run(moved)
    other.paths.root.mkdir(parents=True, exist_ok=True)
    (tmp_path / "c.yaml").rename(other.paths.config)
    assert other.config_changes() == []
    assert Run(load_config(None, [f"run_dir={tmp_path / 'moved'}", "seed=3"])).config_changes() == ["seed"]


def test_set_overrides_join_the_spec_base_for_every_variant(tmp_path):
    spec = SweepSpec.load(write_spec(tmp_path, {"a": {"classifier.lr": 0.1}}), overrides=["classifier.seeds=[5]",
                                                                                          "classifier.lr=0.2"])
    assert spec.config("a").classifier.seeds == [5] and spec.config("real_oversample").classifier.seeds == [5]
    assert spec.config("a").classifier.lr == 0.1  # the variant's own override still wins
    assert spec.source["set"]["classifier.seeds"] == [5]  # and sweep.yaml records it
    with pytest.raises(ValueError, match="section.key=value"):
        SweepSpec.load(write_spec(tmp_path, {"a": {}}), overrides=["seeds"])


def test_archive_keeps_finished_runs_only_and_no_weights(tmp_path):
    from tailfill.sweep import archive

    spec = SweepSpec.load(write_spec(tmp_path, {"done": {}, "half": {}}, controls=()))
    done, half = spec.out / "done", spec.out / "half"
    for run, files in ((done, ["results/results.csv", "stages/train-baseline.json", "classifier/baseline/ce/seed_0/metrics.json",
                                "classifier/baseline/ce/seed_0/model.safetensors", "cache/images.npy"]),
                       (half, ["stages/train-diffusion.json", "diffusion/checkpoint/unet.safetensors"])):
        for rel in files:
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_text("x")
    (done / "config.yaml").write_text(f"run_dir: {done}\n")
    (done / "log.txt").write_text("a log")
    kept = {p.relative_to(tmp_path / "kept").as_posix() for p in archive(spec, tmp_path / "kept")}
    assert (tmp_path / "kept" / "done" / "config.yaml").read_text() == f"run_dir: {tmp_path / 'kept' / 'done'}\n"
    kept.discard("done/config.yaml")
    assert kept == {"done/results/results.csv", "done/stages/train-baseline.json",
                    "done/classifier/baseline/ce/seed_0/metrics.json"}
    assert (tmp_path / "kept" / "sweep.yaml").is_file()
    with pytest.raises(ValueError, match="own directory"):
        archive(spec, spec.out)


def test_fold_table_gives_each_fold_its_column_and_leaves_a_missing_fold_out_of_the_mean():
    from tailfill.compare import fold_table

    rows = [{"model": "baseline:ce", "fold": f, "seed": s, "bacc": 0.5 + 0.1 * f + 0.02 * s}
            for f in (0, 1, 2) for s in (0, 1)]
    rows += [{"model": "synth", "fold": f, "seed": 0, "bacc": 0.6 + 0.1 * f} for f in (0, 1)]  # fold 2 not run yet
    table = fold_table(pd.DataFrame(rows)).set_index("model")
    assert list(table.columns) == ["fold 0", "fold 1", "fold 2", "folds run", "mean"]
    assert table.loc["baseline:ce", "fold 1"] == "0.610" and table.loc["baseline:ce", "mean"] == "0.610"
    assert table.loc["synth", "fold 2"] == "" and table.loc["synth", "folds run"] == "2"
    assert table.loc["synth", "mean"] == "0.650"
    assert fold_table(pd.DataFrame(rows).assign(fold=0)).empty  # one fold: nothing to add
