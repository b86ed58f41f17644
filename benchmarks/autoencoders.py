"""Which autoencoder for latent diffusion on HAM10000: reconstruction PSNR and CPU time per image.

Reads a fixed random sample of ``../shared/data/ham10000`` images at each size through the product's own cache
rule (``data.resize: crop``; an autoencoder trained on a fold has seen some of them: its run's
``autoencoder/metrics.json`` holds the held-out PSNR), and puts them through each autoencoder with the product's ``encode``/``decode``
(``load_vae``: TAEF2 from ``../shared/models/taef2`` when present, and any ``NAME=PATH`` given, e.g. a run's
``autoencoder/vae``). Prints one row per autoencoder and size: latent shape, PSNR (dB), latent sd before
scaling, encode and decode milliseconds per image (median of rounds, batch 32, this machine's threads).

    python benchmarks/autoencoders.py [--sizes 64 128] [--images 64] [--rounds 3] [--vae own=runs/x/autoencoder/vae]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HAM = ROOT.parent / "shared" / "data" / "ham10000"
TAEF2 = ROOT.parent / "shared" / "models" / "taef2"


def sample_images(n: int, size: int) -> np.ndarray:
    from tailfill.data.ham10000 import load_ham10000
    from tailfill.data.images import read_image

    d = load_ham10000(HAM)
    rows = d.frame.sample(n=min(n, len(d.frame)), random_state=0)  # the same images at every size
    return np.stack([read_image(Path(d.root) / p, size, "crop") for p in rows["path"]])


def measure(vae, images: np.ndarray, rounds: int) -> dict:
    import torch

    from tailfill.generator.autoencoder import decode, encode, psnr
    from tailfill.utils.training import to_model_range

    x = to_model_range(images)
    enc, dec = [], []
    with torch.no_grad():
        for _ in range(rounds):
            t0 = time.perf_counter()
            z = torch.cat([encode(vae, x[i:i + 32]) for i in range(0, len(x), 32)])
            t1 = time.perf_counter()
            r = torch.cat([decode(vae, z[i:i + 32]) for i in range(0, len(z), 32)])
            t2 = time.perf_counter()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
    return {"latent": "x".join(map(str, z.shape[1:])), "psnr_db": psnr(r, x),
            "latent_sd": float(z.std() / vae.config.scaling_factor),
            "encode_ms": 1000 * float(np.median(enc)) / len(x), "decode_ms": 1000 * float(np.median(dec)) / len(x)}


def main() -> None:
    import pandas as pd

    from tailfill.generator.autoencoder import load_vae

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sides to measure")
    p.add_argument("--images", type=int, default=64, help="images per size")
    p.add_argument("--rounds", type=int, default=3, help="timed passes; the median is printed")
    p.add_argument("--vae", action="append", default=[], metavar="NAME=PATH", help="another autoencoder folder")
    args = p.parse_args()
    if not HAM.is_dir():
        raise SystemExit(f"needs HAM10000 at {HAM}")
    vaes = ([("taef2", TAEF2)] if TAEF2.is_dir() else []) + [tuple(v.split("=", 1)) for v in args.vae]
    rows = []
    for size in args.sizes:
        images = sample_images(args.images, size)
        for name, path in vaes:
            rows.append({"autoencoder": name, "size": size, **measure(load_vae(path), images, args.rounds)})
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
