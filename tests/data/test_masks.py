import numpy as np
import pytest
from PIL import Image

from tailfill.data.demo import draw_lesion_image
from tailfill.data.lesion_masks import MaskFolder
from tailfill.data.masks import fallback_mask, random_shape_mask, segment_lesion
from tailfill.data import ImageError


def test_segmentation_finds_the_lesion():
    """On drawn lesions the mask covers the dark centre and little of the skin corners."""
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(20):
        img = draw_lesion_image("NV", rng, 64)
        m = segment_lesion(img)
        if m[30:34, 30:34].mean() > 0.9 and m[:6, :6].mean() == 0 and 0.01 < m.mean() < 0.5:
            hits += 1
    assert hits >= 17


def test_segmentation_falls_back_on_blank_image():
    m = segment_lesion(np.full((32, 32, 3), 200, np.uint8))
    np.testing.assert_array_equal(m, fallback_mask(32))


def test_dilation_grows_mask():
    img = draw_lesion_image("MEL", np.random.default_rng(1), 64)
    assert segment_lesion(img, dilation=3).sum() > segment_lesion(img).sum()


def test_random_shapes_vary_and_cover_a_sensible_area(rng):
    masks = np.stack([random_shape_mask(32, rng) for _ in range(200)])
    cover = masks.mean(axis=(1, 2))
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert 0.02 < np.median(cover) < 0.5 and cover.min() > 0
    assert masks.std(axis=0).mean() > 0.2  # shapes differ


def test_user_masks_isic_naming(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "ISIC_0000001_segmentation.png")
    m = MaskFolder(tmp_path).read("ISIC_0000001", 20)
    assert m.shape == (20, 20) and m[10, 10] == 1 and m[0, 0] == 0
    with pytest.raises(ImageError, match="no mask for image ISIC_0000002"):
        MaskFolder(tmp_path).read("ISIC_0000002", 20)
