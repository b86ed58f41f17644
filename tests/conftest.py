import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic2019-mini"
SHARED_HAM = SHARED_ISIC.parent / "ham10000"


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


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from tailfill.data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), total=120, imbalance=6.0, size=32, seed=3)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
