"""Latent inpainting diffusion: the autoencoder, the latent UNet, generation that pastes real pixels back."""
import json

import numpy as np
import pytest
import torch
import yaml

from tailfill.generator.autoencoder import (build_autoencoder, decode, downscale, encode, latent_mask, load_vae,
                                            psnr, reconstruction_psnr, train_autoencoder)
from tailfill.config import AutoencoderConfig, DiffusionConfig
from tailfill.generator.pipeline import InpaintPipeline
from tailfill.generator.train import train_diffusion
from tailfill.utils.io import load_tensors

from conftest import tiny_overrides


def blobs(n=32, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = np.full((n, size, size, 3), 180, np.uint8)
    masks = np.zeros((n, size, size), np.float32)
    for i in range(n):
        c = rng.integers(4, size - 4, 2)
        images[i, c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3] = [120, 60, 40] if i % 2 else [60, 40, 120]
        masks[i, c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3] = 1
    return images, np.arange(n) % 2, masks


def ae_cfg(**kw):
    values = dict(block_out_channels=[8, 16], latent_channels=4, train_steps=60, batch_size=8, lr=2e-3,
                  checkpoint_every=20, log_every=20)
    values.update(kw)
    return AutoencoderConfig(**values)


def test_autoencoder_learns_resumes_and_scales_latents(tmp_path):
    images, _, _ = blobs()
    vae = train_autoencoder(images, ae_cfg(), tmp_path / "a", device="cpu")
    info = json.loads((tmp_path / "a" / "train_info.json").read_text())
    assert info["history"][-1]["loss"] < info["history"][0]["loss"]
    x = torch.as_tensor(images[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = encode(vae, x)
    assert z.shape == (8, 4, 8, 8) and downscale(vae) == 2
    assert 0.5 < float(z.std()) < 2.0  # the scaling factor makes latents about unit variance
    untrained = build_autoencoder(16, (8, 16), 4).eval()
    assert psnr(decode(vae, z), x) > psnr(decode(untrained, encode(untrained, x)), x) + 3
    assert reconstruction_psnr(vae, images[:8]) == pytest.approx(psnr(decode(vae, z), x), abs=0.5)
    # killed after 40 steps, resumed to 60: the same weights as straight through
    train_autoencoder(images, ae_cfg(train_steps=40), tmp_path / "b", device="cpu")
    again = train_autoencoder(images, ae_cfg(), tmp_path / "b", device="cpu")
    a = load_tensors(tmp_path / "a" / "checkpoint" / "vae_ema" / "diffusion_pytorch_model.safetensors")
    b = load_tensors(tmp_path / "b" / "checkpoint" / "vae_ema" / "diffusion_pytorch_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert load_vae(tmp_path / "a").config.scaling_factor == pytest.approx(again.config.scaling_factor)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_vae(tmp_path / "nowhere")


def test_latent_mask_covers_every_masked_pixel():
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 3, 5] = 1
    lm = latent_mask(m, 4)
    assert lm.shape == (1, 1, 2, 2) and lm[0, 0, 0, 1] == 1 and lm.sum() == 1


def test_latent_inpainting_trains_samples_and_keeps_real_pixels(tmp_path):
    images, labels, masks = blobs()
    vae = train_autoencoder(images, ae_cfg(train_steps=20), tmp_path / "ae", device="cpu")
    cfg = DiffusionConfig(block_out_channels=[16, 32], train_steps=6, batch_size=8, checkpoint_every=3, log_every=3,
                          snr_gamma=5.0)
    ckpt = train_diffusion(images, labels, masks, 2, cfg, tmp_path / "d", device="cpu", vae=vae)
    pipe = InpaintPipeline.from_pretrained(ckpt, scheduler="dpmsolver++")
    assert pipe.vae is not None and pipe.unet.config.in_channels == 9 and pipe.unet.config.sample_size == 8
    assert not pipe.scheduler.config.thresholding  # latents are not bounded to [-1, 1]
    x = torch.as_tensor(images[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    m = torch.as_tensor(masks[:4])[:, None]
    noise = torch.randn(4, *pipe.noise_shape(x.shape[1:]), generator=torch.Generator().manual_seed(0))
    assert noise.shape[1:] == (4, 8, 8)
    out = pipe(x, m, torch.tensor([0, 1, 0, 1]), guidance_scale=2.0, num_inference_steps=3, noise=noise)
    outside = m.expand_as(x) == 0
    assert torch.equal(out[outside], x[outside])  # only the lesion is synthetic, to the bit
    assert out.abs().max() <= 1 and not torch.allclose(out[~outside], x[~outside])
    again = pipe(x, m, torch.tensor([0, 1, 0, 1]), guidance_scale=2.0, num_inference_steps=3, noise=noise)
    torch.testing.assert_close(out, again)
    part = pipe(x, m, torch.tensor([0, 1, 0, 1]), guidance_scale=2.0, num_inference_steps=4, noise=noise,
                strength=0.5)
    assert part.shape == out.shape


@pytest.mark.slow
def test_latent_pipeline_end_to_end(tmp_path):
    from tailfill.cli import main

    values = tiny_overrides(tmp_path / "run")
    values["data"]["image_size"] = 16
    values["diffusion"].update(space="latent", block_out_channels=[16, 32])
    values["autoencoder"] = {"block_out_channels": [8, 16], "train_steps": 10, "batch_size": 8,
                             "checkpoint_every": 5, "log_every": 5}
    values["classifier"].update(methods=["ce"], epochs=2)
    cfg = tmp_path / "latent.yaml"
    cfg.write_text(yaml.safe_dump(values))
    assert main(["run", "--config", str(cfg)]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "autoencoder" / "metrics.json").read_text())
    assert metrics["val_psnr_db"] > 5 and (run / "autoencoder" / "reconstructions.png").is_file()
    import pandas as pd

    manifest = pd.read_csv(run / "synthetic" / "manifest.csv")
    assert (manifest["space"] == "latent").all() and manifest["autoencoder_sha256"].notna().all()
    assert "## Autoencoder (latent diffusion)" in (run / "report" / "report.md").read_text()


def tiny_sd_inpainting_folder(path):
    """A random-weight Stable-Diffusion-style inpainting pipeline folder, saved as diffusers saves one."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=9, out_channels=4, block_out_channels=(32, 64),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         layers_per_block=1, attention_head_dim=8, norm_num_groups=8).save_pretrained(path / "unet")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=16).save_pretrained(path / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
    return path


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_pretrained_sd_inpainting_is_fine_tuned_with_class_tokens(tmp_path, finetune):
    if finetune == "lora":
        pytest.importorskip("peft")
    base = tiny_sd_inpainting_folder(tmp_path / "sd")
    images, labels, masks = blobs()
    vae = load_vae(base)
    cfg = DiffusionConfig(space="latent", pretrained=str(base), finetune=finetune, lora_rank=4, train_steps=4,
                          batch_size=4, checkpoint_every=2, log_every=2, lr=1e-3)
    ckpt = train_diffusion(images, labels, masks, 2, cfg, tmp_path / "d", device="cpu", vae=vae)
    pipe = InpaintPipeline.from_pretrained(ckpt, scheduler="ddim")
    assert pipe.unet.config.num_class_embeds == 3 and pipe.vae is not None
    base_unet = json.loads((base / "unet" / "config.json").read_text())
    assert pipe.scheduler.config["beta_schedule"] == "scaled_linear"  # the pretrained noise schedule is kept
    x = torch.as_tensor(images[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    m = torch.as_tensor(masks[:2])[:, None]
    out = pipe(x, m, torch.tensor([0, 1]), guidance_scale=2.0, num_inference_steps=2,
               noise=torch.randn(2, *pipe.noise_shape(x.shape[1:]), generator=torch.Generator().manual_seed(0)))
    assert torch.equal(out[m.expand_as(x) == 0], x[m.expand_as(x) == 0])
    trained = pipe.unet.class_tokens.detach()
    assert not torch.allclose(trained[0], trained[1])
    saved = list((ckpt / "unet_ema").iterdir())
    if finetune == "lora":  # only what was learnt is written; the base stays where it is
        assert not (ckpt / "unet_ema" / "unet").exists()
        assert sum(f.stat().st_size for f in saved) < 0.5 * sum(
            f.stat().st_size for f in (base / "unet").iterdir())
    assert base_unet["in_channels"] == 9


def test_autoencoder_trained_on_crops_reconstructs_whole_images(tmp_path):
    images, _, _ = blobs()
    vae = train_autoencoder(images, ae_cfg(crop_size=8), tmp_path / "crop", device="cpu")
    info = json.loads((tmp_path / "crop" / "train_info.json").read_text())
    assert info["history"][-1]["loss"] < info["history"][0]["loss"]
    x = torch.as_tensor(images[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = encode(vae, x)  # fully convolutional: trained on 8 px windows, used on the 16 px images
    assert z.shape == (8, 4, 8, 8)
    untrained = build_autoencoder(16, (8, 16), 4).eval()
    assert psnr(decode(vae, z), x) > psnr(decode(untrained, encode(untrained, x)), x) + 3


def test_autoencoder_crop_size_is_checked():
    from tailfill.config import config_from_dict

    base = {"data": {"image_size": 32}, "diffusion": {"space": "latent"}}
    config_from_dict({**base, "autoencoder": {"crop_size": 16}})
    config_from_dict({**base, "autoencoder": {"crop_size": 64}})  # larger than the images: whole images
    for bad in (0, 15):
        with pytest.raises(ValueError, match="autoencoder.crop_size"):
            config_from_dict({**base, "autoencoder": {"crop_size": bad}})


@pytest.mark.parametrize("sampler", ["dpmsolver++", "ddim"])
def test_latent_samplers_clip_the_x0_estimate(sampler):
    from diffusers import DDPMScheduler

    from tailfill.generator.pipeline import make_scheduler

    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").config
    x, eps = torch.randn(2, 4, 8, 8), torch.full((2, 4, 8, 8), 3.0)

    def x0_range(clip):  # a whole sampling loop with an eps estimate that never improves
        s = make_scheduler(sampler, train, latent=True, latent_clip=clip)
        s.set_timesteps(10)
        y = x
        for t in s.timesteps:  # alpha ~ 0 at the first step: x0 = (x - sigma eps) / alpha is huge unless clipped
            y = s.step(eps, t, y).prev_sample
        return float(y.abs().max())

    assert x0_range(2.0) <= 2.0 + 1e-6
    assert x0_range(None) > 100
    pixel = make_scheduler(sampler, train, latent=False)  # the pixel path keeps its own rule: x0 in [-1, 1]
    assert pixel.config.thresholding if sampler == "dpmsolver++" else pixel.config.clip_sample_range == 1.0
