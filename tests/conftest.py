import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic2019-mini"
SHARED_HAM = SHARED_ISIC.parent / "ham10000"
REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(run_dir, size=16, **extra):
    """A whole pipeline in seconds: tiny demo set, tiny models, few steps."""
    values = {
        "run_dir": str(run_dir),
        "data": {"image_size": size, "demo_images": 240, "demo_imbalance": 2.0, "imbalance_ratio": 5.0, "workers": 1},
        "diffusion": {"block_out_channels": [16, 32], "train_steps": 30, "batch_size": 16, "checkpoint_every": 10,
                      "log_every": 10},
        "generate": {"steps": 3, "shard_size": 8, "batch_size": 8, "oversample": 1.5},
        "classifier": {"backbone": "resnet10t", "epochs": 8, "batch_size": 16, "methods": ["ce", "logit_adjust"],
                       "seeds": [0]},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        values.setdefault(section, {})[name] = value
    return values


def fit_config(head=None, mixing=None, experimental=None, **classifier):
    """A run Config for one classifier fit: ``classifier`` keys, and the head, mixing and experimental sections
    as mappings."""
    from tailfill.config import Config, ClassifierConfig, ExperimentalConfig, HeadConfig, MixingConfig

    return Config(classifier=ClassifierConfig(**classifier), head=HeadConfig(**(head or {})),
                  mixing=MixingConfig(**(mixing or {})), experimental=ExperimentalConfig(**(experimental or {})))


def write_config(path, run_dir, **extra):
    path.write_text(yaml.safe_dump(tiny_overrides(run_dir, **extra)))
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One whole tiny pipeline, shared by every test that reads a finished run (they are marked slow)."""
    from tailfill.cli import main

    tmp = tmp_path_factory.mktemp("e2e")
    cfg = write_config(tmp / "tiny.yaml", tmp / "run")
    assert main(["run", "--config", str(cfg)]) == 0
    return tmp / "run", cfg


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from tailfill.data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), total=120, imbalance=6.0, size=32, seed=3)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(items):
    """A test that reads the module-scoped end-to-end run trains a whole pipeline first: it is slow, so
    ``-m "not slow"`` leaves it out."""
    for item in items:
        if "finished_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def write_isic(root, labels, sizes=None, meta=None, names=None):
    """A small ISIC 2019 layout: labels is a list of class names (or lists of names for bad rows)."""
    from PIL import Image

    from tailfill.data.sources import ISIC2019_CLASSES, ISIC2019_GT, ISIC2019_IMAGES, ISIC2019_META

    (root / ISIC2019_IMAGES).mkdir(parents=True)
    rows = []
    for i, lab in enumerate(labels):
        image_id = names[i] if names else f"ISIC_{i:07d}"
        file_id = image_id
        Image.fromarray(np.full((20, 24, 3), 10 * i % 255, np.uint8)).save(root / ISIC2019_IMAGES / f"{file_id}.jpg")
        labs = lab if isinstance(lab, list) else [lab]
        rows.append({"image": image_id, **{c: float(c in labs) for c in ISIC2019_CLASSES}})
    pd.DataFrame(rows).to_csv(root / ISIC2019_GT, index=False)
    if meta is not None:
        pd.DataFrame({"image": [r["image"] for r in rows], "lesion_id": meta}).to_csv(root / ISIC2019_META, index=False)
    return root


ALL8 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
