"""Data: datasets (ISIC 2019, HAM10000, image folders, CSVs, the demo set), grouped splits, resized cache."""
from .images import ImageError, read_image
from .sources import (ISIC2019_CLASSES, DataError, LabeledImages, load_csv_dataset, load_image_folder,
                      load_isic2019)
from .ham10000 import load_ham10000
from .splits import geometric_counts, long_tail_subsample, make_splits
from .cache import build_cache
from .demo import make_demo_dataset
from .prepare import DATASETS, PreparedData, Split, load_dataset, prepare_dataset

__all__ = [
    "DATASETS", "ISIC2019_CLASSES", "DataError", "ImageError", "LabeledImages", "PreparedData", "Split",
    "build_cache", "geometric_counts", "load_csv_dataset", "load_dataset", "load_ham10000", "load_image_folder", "load_isic2019",
    "long_tail_subsample", "make_demo_dataset", "make_splits", "prepare_dataset", "read_image",
]
