"""HAM10000 as published: metadata, image folders, ISIC 2019 or dx labels, lesion masks, resize rules."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tailfill.config import Config, load_config
from tailfill.data import DataError, load_dataset, prepare_dataset, read_image
from tailfill.data.lesion_masks import MaskFolder, PackedMasks, square_mask
from tailfill.data.ham10000 import HAM_METADATA, load_ham10000

from conftest import SHARED_HAM

DX = ["nv", "nv", "nv", "mel", "mel", "bkl", "bkl", "bcc", "akiec", "akiec", "df", "vasc"]
ISIC = ["NV", "NV", "NV", "MEL", "MEL", "BKL", "BKL", "BCC", "AK", "SCC", "DF", "VASC"]


def write_ham(root, dx=DX, isic=ISIC, parts=True, masks="folder", size=(32, 24)):
    """A HAM10000 layout: metadata, images split over the two published part folders, masks, ISIC labels."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"ISIC_{24306 + i:07d}" for i in range(len(dx))]
    lesions = [f"HAM_{i // 2:07d}" for i in range(len(dx))]  # two images a lesion
    w, h = size
    mask = np.zeros((h, w), bool)
    mask[h // 4: 3 * h // 4, : w // 2] = True  # a lesion on the left half: a centre crop cuts part of it
    for i, image_id in enumerate(ids):
        folder = root / (("HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2") if parts else "images")
        folder.mkdir(exist_ok=True)
        img = np.full((h, w, 3), 200, np.uint8)
        img[mask] = (20 * i) % 255
        Image.fromarray(img).save(folder / f"{image_id}.png")
    pd.DataFrame({"lesion_id": lesions, "image_id": ids, "dx": dx, "dx_type": "histo", "age": 50.0,
                  "sex": "male", "localization": "back"}).to_csv(root / HAM_METADATA, index=False)
    if isic is not None:
        pd.DataFrame({"image_id": ids, "lesion_id": lesions, "dx": dx, "isic2019_label": isic}).to_csv(
            root / "isic2019_labels.csv", index=False)
    if masks == "folder":
        seg = root / "HAM10000_segmentations_lesion_tschandl"
        seg.mkdir()
        for image_id in ids:
            Image.fromarray(mask.astype(np.uint8) * 255).save(seg / f"{image_id}_segmentation.png")
    elif masks == "npz":
        packed = np.packbits(np.repeat(mask[None], len(ids), 0), axis=-1)
        np.savez(root / "masks_32x24.npz", image_id=np.array(ids), masks_packed=packed,
                 shape=np.array([len(ids), h, w]))
    return root, ids, mask


def test_published_layout_with_isic_and_dx_labels(tmp_path):
    root, ids, _ = write_ham(tmp_path / "ham")
    d = load_ham10000(root)
    assert d.classes == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert d.output_classes[-1] == "UNK"  # a submission column, no class
    assert [d.classes[i] for i in d.labels()] == ISIC  # akiec split into AK and SCC by the ISIC table
    assert {p.split("/")[0] for p in d.frame["path"]} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert d.frame["lesion_id"].tolist()[:2] == ["HAM_0000000", "HAM_0000000"]
    dx = load_ham10000(root, labels="dx")
    assert dx.classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert dx.counts()["akiec"] == 2
    assert isinstance(d.masks, MaskFolder)


def test_isic_labels_from_an_official_ground_truth(tmp_path):
    root, ids, _ = write_ham(tmp_path / "ham", isic=None, parts=False)
    with pytest.raises(DataError, match="isic2019_labels.csv or an ISIC 2019 ground truth"):
        load_ham10000(root)
    gt = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    pd.DataFrame([{"image": i, **{c: float(c == lab) for c in classes}} for i, lab in zip(ids, ISIC)]).to_csv(gt, index=False)
    d = load_ham10000(root, ground_truth=str(gt))
    assert [d.classes[i] for i in d.labels()] == ISIC


def test_bad_metadata_is_named(tmp_path):
    root, ids, _ = write_ham(tmp_path / "ham")
    meta = pd.read_csv(root / HAM_METADATA)
    meta.loc[3, "dx"] = "melanoma"
    meta.to_csv(root / HAM_METADATA, index=False)
    with pytest.raises(DataError, match=r"row 5 \(ISIC_0024309\) has unknown dx 'melanoma'"):
        load_ham10000(root, labels="dx")
    meta.drop(columns="lesion_id").to_csv(root / HAM_METADATA, index=False)
    with pytest.raises(DataError, match="missing column.*lesion_id"):
        load_ham10000(root)
    write_ham(tmp_path / "ham2")
    pd.read_csv(tmp_path / "ham2" / "isic2019_labels.csv").iloc[:-1].to_csv(tmp_path / "ham2" / "isic2019_labels.csv",
                                                                             index=False)
    with pytest.raises(DataError, match=f"1 image.*no ISIC 2019 label, e.g. {ids[-1]}"):
        load_ham10000(tmp_path / "ham2")
    assert len(load_ham10000(tmp_path / "ham2", on_bad_image="skip")) == len(ids) - 1


def test_missing_image_and_escaping_link_are_refused(tmp_path):
    root, ids, _ = write_ham(tmp_path / "ham")
    (root / "HAM10000_images_part_1" / f"{ids[0]}.png").unlink()
    with pytest.raises(DataError, match=f"missing.*{ids[0]}"):
        load_ham10000(root)
    assert len(load_ham10000(root, on_bad_image="skip")) == len(ids) - 1
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(outside)
    (root / "HAM10000_images_part_1" / f"{ids[0]}.png").symlink_to(outside)
    with pytest.raises(DataError, match=f"{ids[0]}.*escapes the data root"):
        load_ham10000(root)


@pytest.mark.parametrize("masks", ["folder", "npz"])
def test_prepare_uses_the_shipped_masks_with_the_image_geometry(tmp_path, masks):
    root, ids, full = write_ham(tmp_path / "ham", DX * 6, ISIC * 6, masks=masks)
    cfg = Config()
    cfg.data.kind, cfg.data.root, cfg.data.image_size = "ham10000", str(root), 16
    cfg.data.val_per_class, cfg.data.test_fraction, cfg.data.workers = None, 0.2, 1
    data = prepare_dataset(cfg.data, tmp_path / "work")
    expected = square_mask(full, 16, "crop")
    assert all((np.asarray(data.masks[k]) == expected).all() for k in range(len(ids)))
    # the image's lesion (dark pixels) and the mask cover the same cached pixels
    lesion = np.asarray(data.images[3]).mean(-1) < 150
    assert (lesion == expected.astype(bool)).mean() > 0.95
    by_lesion = data.frame.groupby("lesion_id")["split"].nunique()
    assert (by_lesion == 1).all()  # grouped by lesion_id
    assert isinstance(load_dataset(cfg.data, tmp_path).masks, (MaskFolder, PackedMasks))
    cfg.data.dataset_masks = False  # segmented instead: no longer exactly the shipped masks
    segmented = prepare_dataset(cfg.data, tmp_path / "work")
    assert not all((np.asarray(segmented.masks[k]) == expected).all() for k in range(len(ids)))


@pytest.mark.parametrize("mode", ["crop", "squash", "pad"])
def test_resize_modes_treat_image_and_mask_alike(tmp_path, mode):
    root, ids, full = write_ham(tmp_path / "ham")
    img = read_image(root / "HAM10000_images_part_2" / f"{ids[1]}.png", 16, mode)  # lesion grey 20, skin 200
    mask = square_mask(full, 16, mode).astype(bool)
    assert img.shape == (16, 16, 3)
    lesion = (img.mean(-1) > 5) & (img.mean(-1) < 150)
    assert (lesion == mask).mean() > 0.95
    if mode == "pad":  # 32x24 -> 16x12 in the middle, black rows above and below
        assert (img[:2] == 0).all() and not mask[:2].any()
    if mode == "crop":  # the centre 24x24: the left quarter of the width is cut off, the lesion starts at 0
        assert mask[:, 0].any() and not mask[:, -1].any()
    if mode == "squash":  # each side scaled alone: the lesion keeps the left half and the middle half of rows
        assert mask[4:12, :8].all() and not mask[:, 8:].any() and not mask[:4].any()


def test_ham_config_and_external_evaluation_kind(tmp_path):
    cfg = load_config(None, ["data.kind=ham10000", "data.root=/x", "data.labels=dx", "data.resize=pad"])
    assert (cfg.data.kind, cfg.data.labels, cfg.data.resize) == ("ham10000", "dx", "pad")
    with pytest.raises(ValueError, match="data.resize='stretch'"):
        load_config(None, ["data.kind=ham10000", "data.root=/x", "data.resize=stretch"])
    with pytest.raises(ValueError, match="data.labels='ham'"):
        load_config(None, ["data.kind=ham10000", "data.root=/x", "data.labels=ham"])
    from tailfill.cli_parser import external_kinds

    assert "ham10000" in external_kinds() and "demo" not in external_kinds()


@pytest.mark.skipif(not SHARED_HAM.is_dir(), reason="../shared/data/ham10000 not present")
def test_shared_ham10000_loads_with_its_masks():
    d = load_ham10000(SHARED_HAM)
    assert len(d) == 8078 and d.frame["lesion_id"].nunique() == 5982
    assert d.counts() == {"MEL": 898, "NV": 5367, "BCC": 421, "AK": 114, "BKL": 891, "DF": 99, "VASC": 122,
                          "SCC": 166}
    masks, found = d.masks.load(d.frame["image"][:20], 32)
    assert found.all() and 0.05 < masks.mean() < 0.9


def test_the_shipped_ham10000_config_runs_end_to_end_and_scores_another_ham_folder(tmp_path):
    """configs/ham10000.yaml as shipped (its recipe, mixing and resize rule), with only the sizes and step
    budgets cut: it runs end to end on a HAM-layout folder, and `evaluate` scores a second such folder."""
    import json

    import yaml

    from tailfill.cli import main
    from conftest import REPO

    shipped = yaml.safe_load((REPO / "configs" / "ham10000.yaml").read_text())
    vae = shipped.get("diffusion", {}).get("vae")
    synthetic = shipped.get("mixing", {}).get("fill_with", "synthetic") == "synthetic"
    if synthetic and vae and not (REPO / vae).is_dir():
        pytest.skip(f"the config's autoencoder {vae} is not present")
    # the head classes twice the tail's, so a synthetic recipe has a deficit to fill
    root, _, _ = write_ham(tmp_path / "ham", DX * 6 + DX[:8] * 6, ISIC * 6 + ISIC[:8] * 6)
    other, _, _ = write_ham(tmp_path / "hospital", DX * 2, ISIC * 2, masks=None)
    run_dir = tmp_path / "run"
    cut = [f"run_dir={run_dir}", f"data.root={root}", "data.image_size=32", "data.workers=1",
           "classifier.backbone=resnet10t", "classifier.pretrained=false", "classifier.input_size=32",
           "classifier.epochs=2", "classifier.steps_per_epoch=2", "classifier.batch_size=16",
           "diffusion.train_steps=10", "diffusion.block_out_channels=[16,32]", "diffusion.batch_size=8",
           "diffusion.checkpoint_every=5", "generate.steps=2", "generate.batch_size=8", "generate.shard_size=8"]
    assert main(["run", "--config", str(REPO / "configs" / "ham10000.yaml"), *sum((["--set", c] for c in cut), [])]) == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["mixing"] == {**saved["mixing"], **shipped["mixing"]}  # the shipped recipe is the one run
    assert saved["data"]["resize"] == shipped["data"]["resize"]
    # the real-only recipe draws nothing; a synthetic one draws its pool
    manifest = run_dir / "synthetic" / "manifest.csv"
    assert manifest.is_file() == synthetic and (not synthetic or len(pd.read_csv(manifest)) > 0)
    report = (run_dir / "report" / "report.md").read_text()
    assert "balanced" in report.lower()
    assert main(["evaluate", "--run-dir", str(run_dir), "--data-root", str(other), "--data-kind", "ham10000",
                 "--name", "hospital"]) == 0
    summary = json.loads((run_dir / "results" / "external" / "hospital" / "summary.json").read_text())
    assert summary["kind"] == "ham10000" and summary["images"] == 2 * len(DX)
    assert {"augmented", "baseline"} <= {m.split(":")[0] for m in summary["models"]}
