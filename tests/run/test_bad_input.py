"""Careless or hostile input: one clear line naming the file, row or key, and nothing already written lost."""
import dataclasses
import errno
import typing

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tailfill.cli import main
from tailfill.config import RANGES, Config, load_config
from tailfill.data import DataError, ImageError, build_cache, load_csv_dataset, load_image_folder, load_isic2019, read_image
from tailfill.data.images import MAX_IMAGE_PIXELS
from tailfill.data.sources import ISIC2019_GT, ISIC2019_IMAGES

from conftest import ALL8, write_isic


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()  # log lines may come first; the error is the last line, alone
    errors = [line for line in err.splitlines() if line.startswith("tailfill: error:")]
    assert "Traceback" not in err and len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    return errors[0]


def run_config(tmp_path, **data) -> str:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {"image_size": 8, "workers": 1, **data}}))
    return str(cfg)


# 1. paths that escape the data root ------------------------------------------------------------------------

def test_isic_image_id_that_escapes_the_root_is_refused(tmp_path, capsys):
    root = write_isic(tmp_path / "isic", ALL8 * 3)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "stolen.jpg")
    gt = pd.read_csv(root / ISIC2019_GT)
    gt.loc[2, "image"] = "../../outside/stolen"
    gt.to_csv(root / ISIC2019_GT, index=False)
    with pytest.raises(DataError, match=r"'\.\./\.\./outside/stolen'.*escapes the data root"):
        load_isic2019(root)
    assert main(["run", "--config", run_config(tmp_path, kind="isic2019", root=str(root)), "--stages", "prepare"]) == 2
    assert "escapes the data root" in one_line(capsys)
    assert not list((tmp_path / "run").glob("cache/*.npy"))  # the outside file was never cached


def test_linked_files_pointing_outside_are_refused_by_every_loader(tmp_path):
    outside = tmp_path / "secret.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    root = write_isic(tmp_path / "isic", ALL8)
    (root / ISIC2019_IMAGES / "ISIC_0000000.jpg").unlink()
    (root / ISIC2019_IMAGES / "ISIC_0000000.jpg").symlink_to(outside)
    with pytest.raises(DataError, match="ISIC_0000000.*escapes the data root"):
        load_isic2019(root)
    folder = tmp_path / "folder"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / c / "x.jpg")
    (folder / "a" / "link.jpg").symlink_to(outside)
    with pytest.raises(DataError, match="link.*escapes the data root"):
        load_image_folder(folder)
    (folder / "a" / "link.jpg").unlink()
    assert len(load_image_folder(folder)) == 2  # links inside the root are fine; plain files too


# 2. labels and paths with stray spaces ---------------------------------------------------------------------

def test_csv_labels_and_paths_are_stripped(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "l.csv").write_text("image,label\na.jpg,NV\nb.jpg,NV \nc.jpg ,DF\n")
    d = load_csv_dataset(tmp_path / "l.csv")
    assert d.classes == ["DF", "NV"] and d.counts() == {"DF": 1, "NV": 2}  # "NV " is NV, not a third class
    assert d.frame["path"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    (tmp_path / "l.csv").write_text("image,label\na.jpg,NV\nb.jpg,  \n")
    with pytest.raises(DataError, match="row 3 has no label"):
        load_csv_dataset(tmp_path / "l.csv")


# 3. decompression bombs and huge images --------------------------------------------------------------------

@pytest.mark.parametrize("side", [9000, 14000])  # over tailfill's limit; over PIL's own bomb error (179 Mpx)
def test_huge_images_are_bad_images_with_a_named_error(tmp_path, side, recwarn):
    assert side * side > MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(bomb)  # a few kB on disk, gigabytes once decoded
    ok = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ok)
    with pytest.raises(ImageError, match=r"bomb\.png.*over tailfill's limit of 64,000,000"):
        read_image(bomb, 8)
    images, keep = build_cache([ok, bomb], 8, tmp_path / "cache", on_bad_image="skip")
    assert keep.tolist() == [True, False]
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]  # no raw PIL warning


# 4. tracebacks that became one line ------------------------------------------------------------------------

@pytest.mark.parametrize("text, match", [("- a\n- b\n", "top level must be a mapping"),
                                         ("data: 5\n", "config section data must be a mapping of keys, got 5"),
                                         ("", "is empty")])
def test_malformed_yaml_files_give_one_line(tmp_path, capsys, text, match):
    (tmp_path / "c.yaml").write_text(text)
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--set", "classifier.epochs=2"]) == 2
    assert match in one_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_batch_size_zero_is_refused_at_load(capsys):
    assert main(["show-config", "--set", "classifier.batch_size=0"]) == 2
    assert "classifier.batch_size=0 is out of range; allowed: [2, inf)" in one_line(capsys)


def test_run_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert main(["run", "--run-dir", str(f), "--stages", "prepare"]) == 2
    assert "is a file, not a directory" in one_line(capsys)
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("code, hint", [(errno.EACCES, "check the permissions"), (errno.EROFS, "read-only"),
                                        (errno.ENOSPC, "free some space")])
def test_unwritable_or_full_disk_gives_one_line_and_keeps_what_was_written(tmp_path, capsys, monkeypatch, code, hint):
    import tailfill.run as run_module

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {"image_size": 8, "workers": 1,
                                                                            "demo_images": 48}}))
    assert main(["run", "--config", str(cfg), "--stages", "prepare"]) == 0
    splits = (tmp_path / "run" / "data" / "splits.csv").read_bytes()

    def fail(path, *a, **k):
        raise OSError(code, "simulated", str(path))

    monkeypatch.setattr(run_module, "write_json", fail)  # no stage marker can be written
    assert main(["prepare", "--config", str(cfg), "--force"]) == 2  # prepared again, but cannot finish
    line = one_line(capsys)
    assert "simulated: " in line and "dataset.json" in line and hint in line
    assert (tmp_path / "run" / "data" / "splits.csv").read_bytes() == splits


# 5. every numeric key checked at load ---------------------------------------------------------------------

@pytest.mark.parametrize("override, match", [
    ("classifier.epochs=0", "classifier.epochs=0 is out of range; allowed: [1, inf)"),
    ("classifier.lr=nan", "classifier.lr=nan is out of range"),
    ("classifier.lr=inf", "classifier.lr=inf is out of range; allowed: (0, inf)"),
    ("diffusion.lr=-1", "diffusion.lr=-1.0 is out of range"),
    ("data.imbalance_ratio=0.5", "data.imbalance_ratio=0.5 is out of range; allowed: [1, inf)"),
    ("data.image_size=0", "data.image_size=0 is out of range; allowed: [8, inf)"),
    ("data.image_size=20", "data.image_size=20 must be a multiple of 8"),
    ("classifier.seeds=[0, -1]", "classifier.seeds=-1 is out of range"),
])
def test_numeric_keys_are_range_checked_naming_the_key(override, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=[override])


def test_every_numeric_key_declares_its_range():
    cfg = Config()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        hints = typing.get_type_hints(type(value)) if dataclasses.is_dataclass(value) else {}
        for f in dataclasses.fields(value) if dataclasses.is_dataclass(value) else []:
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
            default = getattr(value, f.name)
            numeric_list = isinstance(default, list) and any(isinstance(v, (int, float)) for v in default)
            if any(k in (int, float) for k in kinds) or numeric_list:
                assert f"{section.name}.{f.name}" in RANGES, f"{section.name}.{f.name} has no range"


def test_too_many_folds_names_the_key_and_the_class(tmp_path, capsys):
    root = write_isic(tmp_path / "isic", ALL8 * 3)
    assert main(["run", "--config", run_config(tmp_path, kind="isic2019", root=str(root), folds=5),
                 "--stages", "prepare"]) == 2
    assert "data.folds=5: class MEL has only 3 lesion(s)" in one_line(capsys)


# 6. small ones -------------------------------------------------------------------------------------------

def test_nan_loss_before_any_checkpoint_says_none_was_written(tmp_path):
    from tailfill.utils.training import TrainingDivergedError, check_finite, kept_checkpoint
    import torch

    with pytest.raises(TrainingDivergedError, match="no checkpoint had been written yet"):
        check_finite(torch.tensor(float("nan")), "diffusion step 3", lambda: kept_checkpoint(tmp_path / "checkpoint"))
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.pt").write_bytes(b"x")
    assert "last good checkpoint" in kept_checkpoint(tmp_path / "checkpoint")


def test_class_missing_from_a_split_is_named(tmp_path, caplog):
    from tailfill.data import prepare_dataset

    labels = [c for c in ALL8 if c != "VASC"] * 6 + ["VASC"]  # one VASC image: two splits lack it
    root = write_isic(tmp_path / "isic", labels)
    cfg = load_config(overrides=["data.kind=isic2019", f"data.root={root}", "data.image_size=8",
                                 "data.val_per_class=1", "data.test_per_class=1", "data.workers=1"])
    with caplog.at_level("WARNING"):
        prepare_dataset(cfg.data, tmp_path / "work")
    warned = [r.getMessage() for r in caplog.records if "has no image in the" in r.getMessage()]
    assert len(warned) == 2 and all(m.startswith("class VASC has no image in the ") for m in warned)


def test_demo_data_writes_the_number_asked(tmp_path):
    assert main(["demo-data", str(tmp_path / "d"), "--images", "200", "--size", "8"]) == 0
    assert len(pd.read_csv(tmp_path / "d" / ISIC2019_GT)) == 200


def test_run_dir_left_by_a_failed_prepare_takes_a_plain_rerun(tmp_path, capsys):
    root = tmp_path / "isic"
    cfg = run_config(tmp_path, kind="isic2019", root=str(root))
    assert main(["run", "--config", cfg, "--stages", "prepare"]) == 2  # no dataset yet
    one_line(capsys)
    assert (tmp_path / "run" / "config.yaml").is_file()
    write_isic(root, ALL8 * 6)
    assert main(["run", "--config", cfg, "--stages", "prepare"]) == 0  # no --resume or --overwrite needed
    assert (tmp_path / "run" / "stages" / "prepare.json").is_file()
    assert main(["run", "--config", cfg, "--stages", "prepare"]) == 2  # a run with a finished stage is protected
    assert "--resume" in one_line(capsys)
