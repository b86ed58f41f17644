"""Rows on disk (data/rows.py): indexed like the ndarray they stand for, read without a memory map, and
training on them gives the same model as training on the array in memory."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tailfill.classifier.train import train_classifier
from conftest import fit_config
from tailfill.data import build_cache
from tailfill.data.rows import ConcatRows, NpyRows, concat_rows, save_rows, take_rows
from tailfill.classifier.mixing import TrainingSet


@pytest.fixture
def on_disk(tmp_path, rng):
    a = rng.integers(0, 256, (40, 5, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    return a, NpyRows(tmp_path / "a.npy")


KEYS = [3, -1, np.int64(7), slice(2, 9), slice(None, None, -3), slice(50, 60), [5, 1, 1, 39, 0], np.array([], int),
        np.arange(40) % 3 == 0, (slice(1, 4), 2), (4, 0, 1), ([2, 2, 9], slice(None), 0)]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_rows_on_disk_index_like_the_array(on_disk, key):
    a, rows = on_disk
    np.testing.assert_array_equal(rows[key], a[key])
    sub, b = rows.subset(np.arange(40) % 2 == 1), a[1::2]  # a subset: the same rows, or the same error
    try:
        want = b[key]
    except IndexError:
        with pytest.raises(IndexError):
            sub[key]
    else:
        np.testing.assert_array_equal(sub[key], want)


def test_rows_shape_array_and_bad_keys(on_disk):
    a, rows = on_disk
    assert rows.shape == a.shape and len(rows) == 40 and rows.dtype == a.dtype and rows.ndim == 4
    np.testing.assert_array_equal(np.asarray(rows), a)
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float32), a.astype(np.float32))
    sub = take_rows(rows, [9, 3])
    assert isinstance(sub, NpyRows) and sub.shape == (2, 5, 5, 3)
    assert not isinstance(take_rows(a, [9, 3]), NpyRows)
    with pytest.raises(IndexError):
        rows[40]
    with pytest.raises(TypeError, match="integers or a boolean mask"):
        rows[np.array([0.5])]


def test_broken_files_are_named(tmp_path, on_disk):
    a, rows = on_disk
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="junk.npy: not a readable .npy array"):
        NpyRows(tmp_path / "junk.npy")
    cut = tmp_path / "cut.npy"
    cut.write_bytes(rows.path.read_bytes()[:-100])  # a cache cut short (a full disk, a killed copy)
    with pytest.raises(OSError, match="cut.npy: truncated file"):
        NpyRows(cut)[[len(a) - 1]]


def test_concatenated_rows_read_both_parts(on_disk, rng):
    a, rows = on_disk
    extra = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    both = concat_rows(rows.subset(slice(10, 20)), extra)
    want = np.concatenate([a[10:20], extra])
    assert isinstance(both, ConcatRows) and both.shape == want.shape
    for key in ([15, 0, 9, 10, 15], slice(8, 12), -1, np.arange(16) > 11):
        np.testing.assert_array_equal(both[key], want[key])
    np.testing.assert_array_equal(np.asarray(both), want)
    assert isinstance(concat_rows(a, extra), np.ndarray)  # two arrays in memory: plain concatenation
    with pytest.raises(ValueError, match="shapes"):
        ConcatRows([rows, np.zeros((2, 4, 4, 3), np.uint8)])


def test_save_rows_writes_atomically_and_links_whole_files(tmp_path, on_disk):
    a, rows = on_disk
    save_rows(tmp_path / "whole.npy", rows)
    assert os.stat(tmp_path / "whole.npy").st_ino == os.stat(rows.path).st_ino  # no copy of the cache
    save_rows(tmp_path / "part.npy", concat_rows(rows.subset(a[:, 0, 0, 0] > 99), a[:3]), chunk=4)
    np.testing.assert_array_equal(np.load(tmp_path / "part.npy"), np.concatenate([a[a[:, 0, 0, 0] > 99], a[:3]]))
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_reading_rows_maps_nothing_into_memory(on_disk):
    _, rows = on_disk
    rows[[1, 30, 2]], np.asarray(rows.subset(slice(0, 20)))
    assert str(rows.path) not in Path("/proc/self/maps").read_text()


def test_cache_is_decoded_to_rows_on_disk(tmp_path, rng):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "bad.png").write_text("not an image")
    images, ok = build_cache(paths[:2] + [tmp_path / "bad.png"] + paths[2:], 8, tmp_path / "cache",
                             on_bad_image="skip")
    assert isinstance(images, NpyRows) and images.shape == (6, 8, 8, 3) and ok.tolist() == [1, 1, 0, 1, 1, 1]
    again, _ = build_cache(paths[:2] + [tmp_path / "bad.png"] + paths[2:], 8, tmp_path / "cache", on_bad_image="skip")
    np.testing.assert_array_equal(np.asarray(again), np.asarray(images))  # read back from the file
    assert np.asarray(images)[2].max() == 0 and np.asarray(images)[[0, 1, 3, 4, 5]].max() > 0


def test_training_on_rows_on_disk_gives_the_same_model(tmp_path, rng):
    x = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    y = np.repeat([0, 1, 2], 16)
    np.save(tmp_path / "x.npy", x)
    synth = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    cfg = fit_config(backbone="resnet10t", epochs=1, batch_size=16, lr=1e-3, head=dict(retrain=True, epochs=1))
    fits = []
    for images in (x, NpyRows(tmp_path / "x.npy")):
        train = TrainingSet.real(images, y).add(synth, np.array([2] * 6))
        fits.append(train_classifier(train.images, train.labels, x[:9], y[:9], ["a", "b", "c"], "ce", cfg, 0, "cpu",
                                     synthetic=train.synthetic))
    assert isinstance(train.images, ConcatRows)
    for (k, v), w in zip(fits[0].model.state_dict().items(), fits[1].model.state_dict().values()):
        assert np.array_equal(v.numpy(), w.numpy()), k
