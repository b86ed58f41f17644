"""Loaders, bad input, splits and the cache."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tailfill.data import (DataError, ImageError, build_cache, load_csv_dataset, load_image_folder, load_isic2019,
                           long_tail_subsample, make_splits, read_image)
from tailfill.data.sources import ISIC2019_CLASSES, ISIC2019_GT, ISIC2019_IMAGES

from conftest import ALL8, write_isic, SHARED_ISIC






def test_isic_loader_reads_official_layout(tmp_path):
    labels = ALL8 + ["NV", "NV"]
    write_isic(tmp_path, labels, meta=["L1", "L1", "L2", None] + [f"L{i}" for i in range(4, 10)])
    d = load_isic2019(tmp_path)
    assert d.classes == ALL8  # UNK, with no training images, is dropped as a class...
    assert d.output_classes == ISIC2019_CLASSES  # ...but kept as a submission column
    assert [d.classes[i] for i in d.labels()] == labels
    assert d.frame["lesion_id"].tolist()[:3] == ["L1", "L1", "L2"]
    assert d.frame["lesion_id"].iloc[3] == "ISIC_0000003"  # missing lesion id -> own group
    assert all(p.is_file() for p in d.paths())


def test_isic_empty_class_is_an_error(tmp_path):
    write_isic(tmp_path, ["NV", "MEL", "DF"])
    with pytest.raises(DataError, match="BCC, AK, BKL, VASC, SCC have no images"):
        load_isic2019(tmp_path)


def test_isic_loader_finds_downsampled_names(tmp_path):
    write_isic(tmp_path, ALL8, names=["ISIC_0000000_downsampled"] + [f"ISIC_{i:07d}" for i in range(1, 8)])
    (tmp_path / ISIC2019_IMAGES / "ISIC_0000000_downsampled.jpg").rename(tmp_path / ISIC2019_IMAGES / "ISIC_0000000.jpg")
    d = load_isic2019(tmp_path)
    assert d.frame["image"].tolist()[:2] == ["ISIC_0000000_downsampled", "ISIC_0000001"]
    assert d.frame["path"].iloc[0].endswith("ISIC_0000000.jpg")


def test_isic_missing_column_is_named(tmp_path):
    write_isic(tmp_path, ALL8)
    gt = pd.read_csv(tmp_path / ISIC2019_GT).drop(columns=["BCC"])
    gt.to_csv(tmp_path / ISIC2019_GT, index=False)
    with pytest.raises(DataError, match="missing column.*BCC"):
        load_isic2019(tmp_path)


@pytest.mark.parametrize("bad", [[], ["NV", "MEL"]])
def test_isic_rows_without_exactly_one_label_are_named(tmp_path, bad):
    write_isic(tmp_path, ["NV", "MEL", bad] + ALL8)
    with pytest.raises(DataError, match=r"row 4 \(ISIC_0000002\)"):
        load_isic2019(tmp_path)
    d = load_isic2019(tmp_path, on_bad_image="skip")
    assert len(d) == 10 and "ISIC_0000002" not in d.frame["image"].tolist()


def test_isic_missing_images_error_or_skip(tmp_path):
    write_isic(tmp_path, ["NV", "MEL"] + ALL8)
    (tmp_path / ISIC2019_IMAGES / "ISIC_0000001.jpg").unlink()
    with pytest.raises(DataError, match="ISIC_0000001.jpg"):
        load_isic2019(tmp_path)
    d = load_isic2019(tmp_path, on_bad_image="skip")
    assert len(d) == 9 and "ISIC_0000001" not in d.frame["image"].tolist()
    (tmp_path / ISIC2019_IMAGES / "ISIC_0000002.jpg").unlink()  # the only MEL left
    with pytest.raises(DataError, match="MEL have no images"):
        load_isic2019(tmp_path, on_bad_image="skip")  # skipping that empties a class: said, not ignored


def test_isic_missing_csv_and_folder(tmp_path):
    with pytest.raises(DataError, match="CSV file not found"):
        load_isic2019(tmp_path)
    write_isic(tmp_path, ALL8)
    import shutil

    shutil.rmtree(tmp_path / ISIC2019_IMAGES)
    with pytest.raises(DataError, match="image folder not found"):
        load_isic2019(tmp_path)


def test_csv_dataset_unknown_label_and_escape(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "label": ["x", "y", "z"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="row 4 has unknown label 'z'"):
        load_csv_dataset(csv, classes=["x", "y"])
    d = load_csv_dataset(csv)
    assert d.classes == ["x", "y", "z"] and len(d) == 3
    pd.DataFrame({"image": ["../outside.png"], "label": ["x"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="escapes the data root"):
        load_csv_dataset(csv)
    pd.DataFrame({"img": ["a.png"], "label": ["x"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="missing column.*image"):
        load_csv_dataset(csv)


def test_image_folder_and_empty_class(tmp_path):
    for cls, n in (("benign", 3), ("malignant", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / cls / f"{cls}{i}.png")
    d = load_image_folder(tmp_path)
    assert d.counts() == {"benign": 3, "malignant": 2}
    (tmp_path / "rare").mkdir()
    with pytest.raises(DataError, match="rare have no images"):
        load_image_folder(tmp_path)


def test_read_image_modes_and_corruption(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(rgba)  # fully transparent -> white background
    deep = tmp_path / "deep.png"
    Image.fromarray(np.linspace(0, 60000, 64).reshape(8, 8).astype(np.uint16)).save(deep)
    assert read_image(gray).shape == (8, 8, 3)
    assert (read_image(rgba) == 255).all()
    d = read_image(deep, 8)
    assert d.min() == 0 and d.max() >= 250  # 16-bit range stretched, not clipped
    unicode = tmp_path / "läsion_ü.jpg"
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(unicode)
    assert read_image(unicode, 16).shape == (16, 16, 3)  # non-square, non-ASCII name
    jpg = tmp_path / "ok.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpg.read_bytes()[:300])
    with pytest.raises(ImageError, match="truncated.jpg"):
        read_image(truncated)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="garbage.jpg"):
        read_image(garbage)
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.jpg")


def test_cache_reuses_and_skips_bad_images(tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((10, 10, 3), i * 40, np.uint8)).save(p)
        paths.append(p)
    images, ok = build_cache(paths, 8, tmp_path / "cache")
    assert images.shape == (4, 8, 8, 3) and ok.all() and images[2].mean() == pytest.approx(80, abs=1)
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    before = cached[0].stat().st_mtime_ns
    build_cache(paths, 8, tmp_path / "cache")
    assert cached[0].stat().st_mtime_ns == before  # second call read the cache
    paths[1].write_bytes(b"corrupt")  # a changed file is noticed and named
    with pytest.raises(ImageError, match="1.png"):
        build_cache(paths, 8, tmp_path / "cache")
    images, ok = build_cache(paths, 8, tmp_path / "cache", on_bad_image="skip")
    assert ok.tolist() == [True, False, True, True]


def test_splits_are_grouped_and_stratified(rng):
    labels = np.repeat(np.arange(4), [60, 30, 20, 10])
    groups = np.array([f"L{i // 2}" for i in range(len(labels))])  # pairs of photos per lesion
    split = make_splits(labels, groups, 0.15, 0.2, seed=1)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1, "a lesion spans splits"
    for c in range(4):
        for s in ("train", "val", "test"):
            assert np.any((labels == c) & (split == s))
    assert abs(np.mean(split == "test") - 0.2) < 0.07


def test_long_tail_subsample_profile():
    labels = np.repeat(np.arange(5), 100)
    split = np.where(np.arange(500) % 5 == 0, "test", "train")
    keep = long_tail_subsample(labels, split, 16.0, seed=0)
    counts = [int(np.sum(keep & (split == "train") & (labels == c))) for c in range(5)]
    assert counts[0] == 80 and counts[-1] == 5 and counts == sorted(counts, reverse=True)
    assert keep[split == "test"].all()  # evaluation data untouched


@pytest.mark.skipif(not SHARED_ISIC.is_dir(), reason="shared isic2019-mini not present")
def test_shared_isic_mini_loads():
    d = load_isic2019(SHARED_ISIC)
    counts = d.counts()
    assert set(counts) == {"MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"}
    assert sum(counts.values()) == 1609 and counts["DF"] == 83
    img = read_image(d.paths()[0], 32)
    assert img.shape == (32, 32, 3) and img.std() > 5


def test_non_utf8_file_names_survive_loading_and_tables(tmp_path):
    """Linux allows file names that are not UTF-8; they must load and round-trip through CSVs."""
    import os

    from tailfill.utils.io import read_table, write_csv

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / cls / "ok.png")
    raw = os.path.join(os.fsencode(tmp_path / "a"), b"les\xffion.png")
    with open(raw, "wb") as f:
        Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(f, format="PNG")
    d = load_image_folder(tmp_path)
    assert len(d) == 3
    images, ok = build_cache(d.paths(), 8, tmp_path / "cache")
    assert ok.all() and 99 in images[:, 0, 0, 0]
    write_csv(tmp_path / "t.csv", d.frame)
    back = read_table(tmp_path / "t.csv")
    assert back["path"].tolist() == d.frame["path"].tolist()


def test_numeric_ids_stay_strings(tmp_path):
    from tailfill.utils.io import read_table, write_csv

    write_csv(tmp_path / "t.csv", pd.DataFrame({"image": ["007", "010"], "lesion_id": ["001", "002"]}))
    assert read_table(tmp_path / "t.csv")["image"].tolist() == ["007", "010"]


def test_long_tail_subsample_keeps_lesions_whole():
    labels = np.repeat(np.arange(3), 40)
    groups = np.array([f"L{i // 2}" for i in range(120)])
    split = np.full(120, "train")
    keep = long_tail_subsample(labels, split, 10.0, seed=0, groups=groups)
    for g in np.unique(groups):
        assert len(set(keep[groups == g])) == 1
    assert 4 <= keep[labels == 2].sum() <= 5


def test_per_class_holdouts_are_balanced_and_grouped():
    from tailfill.data import make_splits

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [300, 80, 30, 14])
    groups = np.array([f"L{i // 2}" for i in range(len(labels))])  # two photos per lesion
    split = make_splits(labels, groups, seed=0, val_per_class=4, test_per_class=6)
    for c in range(4):
        assert 6 <= np.sum((labels == c) & (split == "test")) <= 7  # whole lesions: may overshoot by one photo
        assert 4 <= np.sum((labels == c) & (split == "val")) <= 5
    frame = pd.DataFrame({"g": groups, "s": split})
    assert (frame.groupby("g")["s"].nunique() == 1).all()
    del rng


def test_geometric_counts_and_the_dataset_registry(tmp_path):
    from tailfill.config import DataConfig
    from tailfill.data import DATASETS, geometric_counts, load_dataset

    counts = geometric_counts(300, 50, 8)
    assert counts[0] == 300 and counts[-1] == 6 and all(a > b for a, b in zip(counts, counts[1:]))
    ratios = np.array(counts[:-1]) / np.array(counts[1:])
    assert np.allclose(ratios[:4], 50 ** (1 / 7), rtol=0.03)  # the same step between neighbours
    assert {"demo", "isic2019", "folder", "csv"} <= set(DATASETS)
    with pytest.raises(ValueError, match="unknown data.kind 'dicom'"):
        load_dataset(DataConfig(kind="dicom", root=str(tmp_path)), tmp_path)


def _two_class_csv(tmp_path, n=12, split=None):
    rows = []
    for i in range(n):
        name = f"im{i}.png"
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(tmp_path / name)
        rows.append({"image": name, "label": "ab"[i % 2], "lesion_id": f"L{i // 4 * 2 + i % 2}"})  # images i, i+2
    frame = pd.DataFrame(rows)
    if split is not None:
        frame["split"] = split
    frame.to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def test_own_split_file_is_used_and_checked(tmp_path):
    from tailfill.config import DataConfig
    from tailfill.data import prepare_dataset

    csv = _two_class_csv(tmp_path)
    sides = ["train"] * 4 + ["val"] * 4 + ["test"] * 4
    split_csv = tmp_path / "split.csv"
    pd.DataFrame({"image": [f"im{i}" for i in range(12)], "split": sides}).to_csv(split_csv, index=False)
    d = DataConfig(kind="csv", csv=str(csv), image_size=8, split_file=str(split_csv), workers=1)
    data = prepare_dataset(d, tmp_path / "work")
    assert data.frame["split"].tolist() == sides
    # a lesion on both sides, an unknown image, a bad split name, a class missing from val: each named
    bad = pd.DataFrame({"image": [f"im{i}" for i in range(12)], "split": sides})
    for change, message in ((dict(split=["train"] * 3 + ["val"] * 5 + ["test"] * 4), "lesion L1 is on both sides"),
                            (dict(image=[f"im{i}" for i in range(11)] + ["nope"]), "not in the dataset, e.g. nope"),
                            (dict(split=["train"] * 4 + ["valid"] * 4 + ["test"] * 4), "split 'valid'"),
                            (dict(split=["train"] * 4 + ["val", "test"] * 2 + ["test"] * 4), "class.*b.*val split")):
        bad.assign(**change).to_csv(split_csv, index=False)
        with pytest.raises(DataError, match=message):
            prepare_dataset(d, tmp_path / "work")


def test_split_column_of_a_csv_dataset_is_not_ignored(tmp_path):
    from tailfill.config import DataConfig
    from tailfill.data import prepare_dataset

    sides = ["train"] * 4 + ["val"] * 4 + ["test"] * 4
    csv = _two_class_csv(tmp_path, split=sides)
    data = prepare_dataset(DataConfig(kind="csv", csv=str(csv), image_size=8, workers=1), tmp_path / "work")
    assert data.frame["split"].tolist() == sides
