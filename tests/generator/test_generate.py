import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler

from tailfill.config import GenerateConfig
from tailfill.generator.pipeline import InpaintPipeline, build_unet, make_scheduler
from tailfill.generator.generate import choose_classes, fill_targets, make_plan, plan_masks, synthesize

CLASSES = ["A", "B", "C", "D"]


def train_frame(counts=(20, 10, 3, 1)):
    labels = np.repeat(np.arange(len(counts)), counts)
    return pd.DataFrame({"image": [f"img_{i}" for i in range(len(labels))], "label": labels})


def test_tail_classes_are_filled_to_the_median():
    counts = np.array([20, 10, 3, 1])
    tail = choose_classes(counts, CLASSES, "tail")
    assert tail == [2, 3]
    assert fill_targets(counts, tail, "median") == {2: 3, 3: 5}
    assert fill_targets(counts, tail, 12) == {2: 9, 3: 11}
    with pytest.raises(ValueError, match="unknown class"):
        choose_classes(counts, CLASSES, ["A", "Z"])


@pytest.mark.parametrize("context", ["all", "same", ["A"]])
def test_plan_contexts_follow_the_config(context):
    frame = train_frame()
    cfg = GenerateConfig(context_classes=context, oversample=2.0)
    plan = make_plan(frame, CLASSES, {2: 3, 3: 5}, cfg)
    assert plan["class"].value_counts().to_dict() == {"C": 6, "D": 10}
    assert plan.equals(make_plan(frame, CLASSES, {2: 3, 3: 5}, cfg))  # deterministic in the seed
    assert plan["source_image"].tolist() == frame["image"].iloc[plan["context_index"]].tolist()
    if context == "same":
        assert (plan["source_class"] == plan["class"]).all()
    elif context == ["A"]:
        assert (plan["source_class"] == "A").all()
    else:
        assert plan["source_class"].nunique() > 2


def test_plan_errors_name_the_problem():
    frame = train_frame((20, 10, 3, 0))
    with pytest.raises(ValueError, match="class D has no training images"):
        make_plan(frame, CLASSES, {3: 5}, GenerateConfig(context_classes="same"))
    with pytest.raises(ValueError, match="unknown class"):
        make_plan(frame, CLASSES, {2: 5}, GenerateConfig(context_classes=["Q"]))


def test_synthesised_images_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frame = train_frame((4, 2, 2, 1))
    images = rng.integers(0, 255, (len(frame), 16, 16, 3), dtype=np.uint8)
    lesions = np.zeros((len(frame), 16, 16), np.float32)
    lesions[:, 5:11, 5:11] = 1
    cfg = GenerateConfig(sampler="ddim", steps=4, oversample=1.0, mask_dilation=1, batch_size=2)
    plan = make_plan(frame, CLASSES, {2: 2, 3: 3}, cfg)
    masks = plan_masks(plan, lesions, 16, cfg)
    assert masks.shape == (5, 16, 16) and (masks.sum(axis=(1, 2)) == 36 + 4 * 6).all()  # the 6x6 lesion grown by 1
    unet = build_unet(16, len(CLASSES), (16, 32)).eval()
    sched = make_scheduler("ddim", DDPMScheduler(num_train_timesteps=100).config)
    a = synthesize(InpaintPipeline(unet, sched), plan, images, masks, cfg)
    cfg.batch_size = 3
    b = synthesize(InpaintPipeline(unet, sched), plan, images, masks, cfg)
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # rounding only
    outside = masks == 0
    assert (a[outside] == images[plan["context_index"]][outside]).all()  # skin context untouched


def test_a_list_of_strengths_is_drawn_per_image_and_each_image_is_made_at_its_own():
    frame = train_frame()
    single = make_plan(frame, CLASSES, {2: 3, 3: 5}, GenerateConfig(strength=0.5, oversample=4.0))
    assert (single["strength"] == 0.5).all()
    cfg = GenerateConfig(strength=[0.5, 0.7, 0.9], oversample=4.0)
    plan = make_plan(frame, CLASSES, {2: 3, 3: 5}, cfg)
    assert set(plan["strength"]) == {0.5, 0.7, 0.9} and plan.equals(make_plan(frame, CLASSES, {2: 3, 3: 5}, cfg))

    class Recorder:  # the pipeline's calls: which rows (by their seed) at which strength
        calls = []

        def noise_shape(self, shape):
            return (3, *shape[1:])

        def __call__(self, images, masks, labels, strength, noise, **kw):
            self.calls.append((strength, len(images)))
            return torch.full((len(images), 3, 4, 4), 2 * strength - 1)  # the strength, as an image value

    images = np.zeros((len(frame), 4, 4, 3), np.uint8)
    out = synthesize(Recorder(), plan, images, np.zeros((len(plan), 4, 4), np.float32), cfg)
    # every image made at its own row's strength, in plan order, each batch split by strength
    assert np.allclose(out[:, 0, 0, 0] / 255, plan["strength"], atol=0.01)
    assert sorted(s for s, _ in Recorder.calls) == sorted(s for b in range(0, len(plan), cfg.batch_size)
                                                          for s in set(plan["strength"].iloc[b:b + cfg.batch_size]))
    assert sum(n for _, n in Recorder.calls) == len(plan)
