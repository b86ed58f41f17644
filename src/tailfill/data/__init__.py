"""Data: datasets (ISIC 2019, image folders, CSVs, the demo set), grouped splits, resized cache."""
from .images import ImageError, read_image
from .sources import (ISIC2019_CLASSES, DataError, LabeledImages, load_csv_dataset, load_image_folder,
                      load_isic2019)
from .splits import long_tail_subsample, make_splits
from .cache import build_cache
from .demo import make_demo_dataset

__all__ = [
    "ISIC2019_CLASSES", "DataError", "ImageError", "LabeledImages", "build_cache", "load_csv_dataset",
    "load_image_folder", "load_isic2019", "long_tail_subsample", "make_demo_dataset", "make_splits", "read_image",
]
