
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from tailfill.config import DiffusionConfig
from tailfill.generator.pipeline import SCHEDULERS, InpaintPipeline, build_unet, make_scheduler, null_label
from tailfill.utils.training import TrainingDivergedError
from tailfill.generator.train import diffusion_loss, train_diffusion
from tailfill.utils.io import load_tensors


def tiny_cfg(**kw):
    values = dict(block_out_channels=[16, 32], train_steps=12, batch_size=8, checkpoint_every=4, log_every=4)
    values.update(kw)
    return DiffusionConfig(**values)


def toy_data(n=24, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    masks = np.zeros((n, size, size), np.float32)
    masks[:, 4:12, 4:12] = 1
    return images, labels, masks


def test_unet_is_an_inpainter_with_a_null_class():
    unet = build_unet(16, num_classes=5, block_out_channels=(16, 32))
    assert unet.config.in_channels == 7 and unet.config.out_channels == 3
    assert null_label(unet) == 5
    out = unet(torch.randn(2, 7, 16, 16), 10, class_labels=torch.tensor([0, 5])).sample
    assert out.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("sampler", sorted(SCHEDULERS))
def test_inpaint_keeps_context_and_follows_guidance(sampler):
    torch.manual_seed(0)
    unet = build_unet(16, 3, (16, 32)).eval()
    sched = make_scheduler(sampler, DDPMScheduler(num_train_timesteps=100).config)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1
    noise = torch.randn(2, 3, 16, 16)
    a = InpaintPipeline(unet, sched)(images, masks, torch.tensor([0, 1]), guidance_scale=1.0, num_inference_steps=4, generator=torch.Generator().manual_seed(0), noise=noise)
    b = InpaintPipeline(unet, sched)(images, masks, torch.tensor([0, 1]), guidance_scale=3.0, num_inference_steps=4, generator=torch.Generator().manual_seed(0), noise=noise)
    outside = masks.expand_as(images) == 0
    assert torch.equal(a[outside], images[outside])  # the real skin context is untouched
    assert not torch.allclose(a, b)  # guidance scale matters
    assert a.abs().max() <= 1


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and counts its forward calls (one per sampling step with guidance 1)."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls, self.config = unet, 0, unet.config

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.unet(*args, **kwargs)


@pytest.mark.parametrize("sampler", sorted(SCHEDULERS))
def test_strength_starts_part_way_and_leaves_the_next_call_unchanged(sampler):
    torch.manual_seed(0)
    unet = CountingUNet(build_unet(16, 3, (16, 32)).eval())
    sched = make_scheduler(sampler, DDPMScheduler(num_train_timesteps=100).config)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = torch.ones(2, 1, 16, 16)
    noise = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([0, 1])
    full = InpaintPipeline(unet, sched)(images, masks, labels, guidance_scale=1.0, num_inference_steps=10, generator=torch.Generator().manual_seed(0), noise=noise)
    assert unet.calls == 10
    unet.calls = 0
    part = InpaintPipeline(unet, sched)(images, masks, labels, guidance_scale=1.0, num_inference_steps=10, generator=torch.Generator().manual_seed(0), noise=noise, strength=0.3)
    assert unet.calls == 3  # only the last 30 % of the schedule is run
    assert not torch.allclose(part, full)
    # SDEdit from the input: a low strength stays nearer the input than sampling from pure noise
    assert (part - images).abs().mean() < (full - images).abs().mean()
    # a partial run must not leave state behind (e.g. a scheduler's begin index)
    again = InpaintPipeline(unet, sched)(images, masks, labels, guidance_scale=1.0, num_inference_steps=10, generator=torch.Generator().manual_seed(0), noise=noise)
    assert torch.allclose(again, full)
    with pytest.raises(ValueError, match="strength"):
        InpaintPipeline(unet, sched)(images, masks, labels, guidance_scale=1.0, num_inference_steps=10, strength=0.0)


def test_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("euler-magic", DDPMScheduler().config)


def test_training_learns_and_resume_matches_uninterrupted(tmp_path):
    images, labels, masks = toy_data()
    straight = train_diffusion(images, labels, masks, 3, tiny_cfg(), tmp_path / "a", device="cpu")
    hist = __import__("json").loads((tmp_path / "a" / "train_info.json").read_text())["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    # interrupted after 8 steps (a checkpoint at step 8), then resumed to 12
    train_diffusion(images, labels, masks, 3, tiny_cfg(train_steps=8), tmp_path / "b", device="cpu")
    resumed = train_diffusion(images, labels, masks, 3, tiny_cfg(), tmp_path / "b", device="cpu")
    wa = load_tensors(straight / "unet_ema" / "diffusion_pytorch_model.safetensors")
    wb = load_tensors(resumed / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    pipe = InpaintPipeline.from_pretrained(resumed, scheduler="ddim")
    assert pipe.scheduler.config["num_train_timesteps"] == 1000 and isinstance(pipe.unet, torch.nn.Module)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    images, labels, masks = toy_data()
    ckpt = train_diffusion(images, labels, masks, 3, tiny_cfg(train_steps=4), tmp_path, device="cpu")
    before = (ckpt / "state.pt").read_bytes()
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        poisoned = np.full(images.shape, np.nan, np.float32)  # e.g. corrupt inputs decoded as NaN
        train_diffusion(poisoned, labels, masks, 3, tiny_cfg(train_steps=40), tmp_path, device="cpu")
    assert (ckpt / "state.pt").read_bytes() == before  # the good checkpoint was not overwritten
    InpaintPipeline.from_pretrained(ckpt)  # still loadable


def test_pipeline_saves_its_scheduler_and_loads_without_training_files(tmp_path):
    torch.manual_seed(0)
    sched = DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    pipe = InpaintPipeline(build_unet(16, 3, (16, 32)).eval(), sched)
    pipe.save_pretrained(tmp_path / "p", unet_subfolder="unet_ema")
    again = InpaintPipeline.from_pretrained(tmp_path / "p", scheduler="ddpm")  # no train_info.json anywhere
    assert again.scheduler.config["num_train_timesteps"] == 50
    assert again.scheduler.config["beta_schedule"] == "squaredcos_cap_v2"
    images, masks = torch.rand(1, 3, 16, 16) * 2 - 1, torch.ones(1, 1, 16, 16)
    noise = torch.randn(1, 3, 16, 16)

    def kw():  # DDPM steps draw noise too: the same generator seed for both
        return dict(guidance_scale=2.0, num_inference_steps=3, noise=noise, generator=torch.Generator().manual_seed(1))

    torch.testing.assert_close(again(images, masks, torch.tensor([1]), **kw()),
                               InpaintPipeline(pipe.unet, make_scheduler("ddpm", sched.config))(
                                   images, masks, torch.tensor([1]), **kw()))
    with pytest.raises(FileNotFoundError, match="train-diffusion"):
        InpaintPipeline.from_pretrained(tmp_path / "nothing")


def test_diffusion_loss_weights_the_mask_and_min_snr():
    pred, noise = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    masks = torch.zeros(2, 1, 4, 4)
    torch.testing.assert_close(diffusion_loss(pred, noise, masks, 4.0), torch.tensor(1.0))
    pred = noise.clone()
    pred[:, :, :2] = 0  # error 1 in the top half only
    masks[:, :, :2] = 1  # ... which is the mask
    inside = diffusion_loss(pred, noise, masks, 4.0)
    masks2 = 1 - masks  # the error now outside the mask
    assert inside > diffusion_loss(pred, noise, masks2, 4.0)
    torch.testing.assert_close(inside, torch.tensor(4 * 8 / (4 * 8 + 8) * 1.0))
    # Min-SNR: a low-noise sample (SNR 50) is down-weighted to gamma / SNR, a noisy one (SNR 0.5) kept
    snr = torch.tensor([50.0, 0.5])
    weighted = diffusion_loss(pred, noise, masks, 1.0, snr, snr_gamma=5.0)
    torch.testing.assert_close(weighted, 0.5 * (5 / 50 + 1.0) * diffusion_loss(pred, noise, masks, 1.0))
