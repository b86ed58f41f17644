"""A TAESD-family pretrained autoencoder (TAEF2) as the latent space, and latents encoded once (latent_condition)."""
import json

import numpy as np
import pytest
import torch
import yaml

from tailfill.config import DiffusionConfig
from tailfill.generator.autoencoder import decode, downscale, encode, load_vae, psnr, set_latent_scale
from tailfill.generator.pipeline import InpaintPipeline
from tailfill.generator.tiny_autoencoder import TinyAutoencoder
from tailfill.generator.train import train_diffusion

from conftest import SHARED_HAM, tiny_overrides
from test_latent import blobs

TAEF2 = SHARED_HAM.parents[1] / "models" / "taef2"


def taesd_folder(path, latent_channels=4, seed=0):
    """A random TAESD-family autoencoder written as TAEF2 ships: fp16 state dicts of two flat Sequentials."""
    torch.manual_seed(seed)
    model = TinyAutoencoder(latent_channels=latent_channels)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in model.encoder.state_dict().items()}, path / "tiny_encoder.pth")
    torch.save({k: v.half() for k, v in model.decoder.state_dict().items()}, path / "tiny_decoder.pth")
    return path, model


def test_taesd_files_load_strictly_save_and_load_as_an_autoencoder(tmp_path):
    folder, model = taesd_folder(tmp_path / "taesd")
    vae = load_vae(folder)
    assert type(vae) is TinyAutoencoder and vae.config.latent_channels == 4 and downscale(vae) == 8
    for k, v in model.encoder.state_dict().items():  # the weights as written (fp16), read back exactly
        torch.testing.assert_close(vae.encoder.state_dict()[k], v.half().float())
    images = blobs(n=16, size=32)[0]
    x = torch.as_tensor(images[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    set_latent_scale(vae, images)
    z = encode(vae, x)
    assert z.shape == (4, 4, 4, 4) and decode(vae, z).shape == x.shape
    assert abs(float(encode(vae, torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1).std()) - 1) < 0.05
    vae.save_pretrained(tmp_path / "kept")  # as train-autoencoder keeps it with the run, its scale included
    again = load_vae(tmp_path / "kept")
    assert type(again) is TinyAutoencoder and again.config.scaling_factor == pytest.approx(vae.config.scaling_factor)
    torch.testing.assert_close(encode(again, x), z)
    (folder / "tiny_decoder.pth").unlink()
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_vae(folder)
    state = model.decoder.state_dict()
    state.pop("1.weight")
    torch.save(state, folder / "tiny_decoder.pth")
    with pytest.raises(ValueError, match=r"taesd: the weights do not fit a TAESD-family autoencoder.*1\.weight"):
        load_vae(folder)


@pytest.mark.skipif(not TAEF2.is_dir() or not SHARED_HAM.is_dir(), reason="needs ../shared (TAEF2 and HAM10000)")
def test_shared_taef2_reconstructs_ham10000_images():
    from tailfill.data.images import read_image

    files = sorted((SHARED_HAM / "images").iterdir())[:8]
    images = np.stack([read_image(f, 128, "crop") for f in files])  # as the 128 px cache holds them
    vae = load_vae(TAEF2)
    assert vae.config.latent_channels == 32
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert psnr(decode(vae, encode(vae, x)), x) > 30  # 34.6 dB on 32 images (docs/benchmarks/ham10000.md)


def test_latents_encoded_once_train_without_the_encoder_each_step_and_generation_follows(tmp_path):
    images, labels, masks = blobs(n=24, size=32)
    _, model = taesd_folder(tmp_path / "taesd")
    vae = set_latent_scale(model, images)
    calls = []
    vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    cfg = DiffusionConfig(block_out_channels=[16, 32], train_steps=6, batch_size=8, checkpoint_every=3, log_every=3,
                          latent_condition="mask")
    ckpt = train_diffusion(images, labels, masks, 2, cfg, tmp_path / "d", device="cpu", vae=vae)
    assert len(calls) == 1  # the 24 images in one batch, before the first step; none a step
    encoded_each_step = DiffusionConfig(block_out_channels=[16, 32], train_steps=6, batch_size=8,
                                        checkpoint_every=3, log_every=3)
    calls.clear()
    train_diffusion(images, labels, masks, 2, encoded_each_step, tmp_path / "e", device="cpu", vae=vae)
    assert len(calls) >= 12  # target and condition, each step (and the scale's, when saving)
    pipe = InpaintPipeline.from_pretrained(ckpt, scheduler="dpmsolver++")
    assert pipe.latent_condition == "mask" and type(pipe.vae) is TinyAutoencoder
    assert InpaintPipeline.from_pretrained(tmp_path / "e" / "checkpoint").latent_condition == "encode"
    x = torch.as_tensor(images[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    m = torch.as_tensor(masks[:4])[:, None]
    calls.clear()
    pipe.vae.encoder.register_forward_hook(lambda *a: calls.append(1))  # the checkpoint's own copy
    out = pipe(x, m, torch.tensor([0, 1, 0, 1]), guidance_scale=2.0, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1  # the image once; its masked copy is not encoded again
    outside = m.expand_as(x) == 0
    assert torch.equal(out[outside], x[outside]) and not torch.allclose(out[~outside], x[~outside])
    from tailfill.config import load_config

    with pytest.raises(ValueError, match="diffusion.latent_condition"):
        load_config(None, ["diffusion.latent_condition=pixels"])
    with pytest.raises(ValueError, match="latent_condition: mask does not fit diffusion.pretrained"):
        load_config(None, ["diffusion.space=latent", "diffusion.pretrained=sd", "diffusion.latent_condition=mask"])


@pytest.mark.slow
def test_a_run_with_a_taesd_autoencoder_keeps_it_scaled_and_generates(tmp_path):
    from tailfill.cli import main

    folder, _ = taesd_folder(tmp_path / "taesd")
    values = tiny_overrides(tmp_path / "run")
    values["data"]["image_size"] = 32
    values["diffusion"].update(space="latent", vae=str(folder), latent_condition="mask", block_out_channels=[16, 32])
    values["classifier"].update(methods=["ce"], epochs=1)
    cfg = tmp_path / "taesd.yaml"
    cfg.write_text(yaml.safe_dump(values))
    assert main(["run", "--config", str(cfg)]) == 0
    run = tmp_path / "run"
    kept = json.loads((run / "autoencoder" / "vae" / "config.json").read_text())
    assert kept["_class_name"] == "TinyAutoencoder" and kept["scaling_factor"] != 1.0
    assert json.loads((run / "diffusion" / "checkpoint" / "pipeline.json").read_text()) == {"latent_condition": "mask"}
    import pandas as pd

    manifest = pd.read_csv(run / "synthetic" / "manifest.csv")
    assert len(manifest) and (manifest["space"] == "latent").all()


def test_latents_are_kept_by_content_so_the_next_fold_encodes_only_its_new_images(tmp_path):
    from tailfill.generator.train import encode_all

    images = blobs(n=24, size=32, seed=3)[0]
    _, vae = taesd_folder(tmp_path / "taesd")
    set_latent_scale(vae, images)
    seen = []
    vae.encoder.register_forward_hook(lambda module, inputs, out: seen.append(len(inputs[0])))
    plain = encode_all(vae, images[:16])
    first = encode_all(vae, images[:16], cache_dir=tmp_path / "cache")
    torch.testing.assert_close(first, plain, rtol=2e-3, atol=2e-3)  # kept in fp16
    seen.clear()
    second = encode_all(vae, images[8:], cache_dir=tmp_path / "cache")  # a fold sharing half its images
    assert seen == [8]  # only the 8 new ones went through the encoder
    torch.testing.assert_close(second[:8], first[8:])
    seen.clear()
    vae.register_to_config(scaling_factor=2 * vae.config.scaling_factor)  # another fold's fitted scale
    torch.testing.assert_close(encode_all(vae, images[8:], cache_dir=tmp_path / "cache"), 2 * second)
    assert seen == [] and len(list((tmp_path / "cache").glob("latents_*.npz"))) == 1
