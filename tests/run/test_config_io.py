import pickle

import pytest
import torch

from tailfill.config import Config, load_config
from tailfill.utils.io import atomic_path, load_state, safe_join, save_state, write_text

from conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg.data.kind == "demo" and cfg.data.image_size == 32


def test_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(overrides=["diffusion.train_steps=7", "classifier.methods=[ce, focal]"])
    assert cfg.diffusion.train_steps == 7 and cfg.classifier.methods == ["ce", "focal"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("diffusion:\n  train_stpes: 5\n")
    with pytest.raises(ValueError, match="diffusion.train_stpes"):
        load_config(bad)
    with pytest.raises(ValueError, match="unknown classifier method"):
        load_config(overrides=["classifier.methods=[ce, magic]"])
    with pytest.raises(ValueError, match="generate.strength"):
        load_config(overrides=["generate.strength=1.5"])
    for bad_list in ("[]", "[0.5, 0]", "[0.5, yes]"):
        with pytest.raises(ValueError, match="generate.strength"):
            load_config(overrides=[f"generate.strength={bad_list}"])
    assert load_config(overrides=["generate.strength=[0.5, 0.7, 0.9]"]).generate.strength == [0.5, 0.7, 0.9]
    with pytest.raises(ValueError, match="generate.context_classes"):
        load_config(overrides=["generate.context_classes=some"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_check_and_round_trip(path, tmp_path):
    """Every shipped config passes validate(), says what it is in at most 3 header lines, round-trips through
    YAML unchanged, and names only keys that exist (an unknown key is an error at load)."""
    from tailfill.config import validate

    cfg = load_config(path)
    validate(cfg)
    lines = path.read_text().splitlines()
    header = [line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]]
    assert 1 <= len(header) <= 3, header
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert load_config(again) == cfg
    assert cfg != Config()  # it sets something: a shipped config that equals the defaults is a mistake


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "manifest.csv"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoints_never_unpickle_code(tmp_path):
    save_state(tmp_path / "ok.pt", {"step": 3, "w": torch.ones(2)})
    assert load_state(tmp_path / "ok.pt")["step"] == 3
    torch.save({"payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_state(tmp_path / "evil.pt")


def test_safe_join_refuses_escapes(tmp_path):
    assert safe_join(tmp_path, "images/a.png") == (tmp_path / "images/a.png").resolve()
    for bad in ("../x.png", "/etc/passwd", "images/../../x.png"):
        with pytest.raises(ValueError, match="escapes|relative"):
            safe_join(tmp_path, bad)


def test_values_are_checked_against_field_types_at_load():
    cfg = load_config(overrides=["classifier.lr=1e-3", "select.near_duplicate_similarity=0.9",
                                 "mixing.share=null", "generate.target=120"])
    assert isinstance(cfg.classifier.lr, float) and cfg.classifier.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert cfg.select.near_duplicate_similarity == 0.9 and cfg.generate.target == 120
    with pytest.raises(ValueError, match="classifier.epochs: expected int, got 'ten'"):
        load_config(overrides=["classifier.epochs=ten"])
    with pytest.raises(ValueError, match="classifier.pretrained"):
        load_config(overrides=["classifier.pretrained=maybe"])
    with pytest.raises(ValueError, match="classifier.seeds"):
        load_config(overrides=["classifier.seeds=3"])


def test_an_old_config_names_the_new_key_and_upgrade_config_rewrites_it(tmp_path, capsys):
    """Every moved key (config.MOVED) is refused under its old name with its new one in the message; a saved
    run config is read in the new layout; ``tailfill upgrade-config`` prints a file that loads."""
    from tailfill.cli import main
    from tailfill.config import MOVED, config_from_dict, upgrade_config

    default = Config().to_dict()
    for old, new in MOVED.items():
        (o_sec, o_key), (n_sec, n_key) = old.split("."), new.split(".")
        value = default[n_sec][n_key]
        with pytest.raises(ValueError, match=rf"{old} \(now {new}\)"):
            config_from_dict({o_sec: {o_key: value}})
        values = {o_sec: {o_key: value}}
        assert upgrade_config(values) == [(old, new)] and values[n_sec] == {n_key: value}
    old_file = tmp_path / "old.yaml"
    write_text(old_file, "classifier:\n  epochs: 3\n  synthetic_share: 0.5\n  retrain_head: true\n"
                         "select:\n  keep_fraction: 0.5\n  judge_size: 128\n")
    with pytest.raises(ValueError, match=r"classifier.retrain_head \(now head.retrain\).*upgrade-config"):
        load_config(old_file)
    assert main(["upgrade-config", str(old_file)]) == 0
    out, err = capsys.readouterr()
    assert "moved classifier.synthetic_share -> mixing.share" in err
    new_file = tmp_path / "new.yaml"
    write_text(new_file, out)
    cfg = load_config(new_file)
    assert (cfg.classifier.epochs, cfg.mixing.share, cfg.head.retrain) == (3, 0.5, True)
    assert (cfg.experimental.keep_fraction, cfg.select.feature_size) == (0.5, 128)


def test_a_run_saved_in_the_old_layout_opens_and_resumes_unchanged(tmp_path):
    import yaml

    from tailfill.run import Run

    cfg = load_config(overrides=[f"run_dir={tmp_path / 'run'}", "mixing.share=0.5", "head.retrain=true"])
    run = Run(cfg)
    run.initialise()
    saved = yaml.safe_load(run.paths.config.read_text())  # as a run of the old layout wrote it
    saved["classifier"].update(synthetic_share=saved.pop("mixing")["share"], retrain_head=saved["head"].pop("retrain"))
    write_text(run.paths.config, yaml.safe_dump(saved))
    opened = Run.open(run.dir)
    assert opened.cfg.mixing.share == 0.5 and opened.cfg.head.retrain
    assert run.config_changes() == []
    run.initialise(resume=True)  # no "config differs" error


@pytest.mark.parametrize("folder, spec_file", [("sweep", "sweep_ham10000.yaml"),
                                               ("sweep_128px", "sweep_ham10000_128px.yaml")])
def test_the_archived_ham10000_record_resumes_without_recomputing_a_finished_run(folder, spec_file):
    """The HAM10000 tables run over several sessions from their record in docs/benchmarks/ham10000/ (the 64 px
    one written before the config moved keys): each finished run's saved config must read as today's spec
    makes it, or a resumed sweep would compute it again."""
    from tailfill.run import Run
    from tailfill.sweep import SweepSpec

    record = REPO / "docs" / "benchmarks" / "ham10000" / folder
    spec = SweepSpec.load(REPO / "benchmarks" / spec_file, str(record))
    finished = [Run(cfg) for name in spec.variants for _, _, cfg in spec.runs(name) if Run(cfg).paths.results.is_file()]
    assert len(finished) >= 5
    assert {str(r.dir): r.config_changes() for r in finished} == {str(r.dir): [] for r in finished}


def test_show_config_gives_every_key_its_comment_and_reads_back_as_the_config(capsys):
    import yaml

    from tailfill.cli import main

    assert main(["show-config", "--set", "mixing.share=0.5"]) == 0
    text = capsys.readouterr().out
    keys = [line for line in text.splitlines() if line.strip()]
    missing = [line.split(":")[0].strip() for line in keys if "  # " not in line]
    assert missing == [], f"config fields without a comment in config/sections.py: {missing}"
    assert yaml.safe_load(text) == load_config(None, ["mixing.share=0.5"]).to_dict()
