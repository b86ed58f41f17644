"""Estimate GPU hours for ISIC 2019 at 128 and 256 px from counted FLOPs (no GPU needed).

Counts the FLOPs of one forward pass of the inpainting UNet and the classifier with
torch.utils.flop_counter, then converts them to hours at an assumed sustained throughput
(--tflops: bf16 TFLOP/s actually achieved, default 300 = ~30 % of an H100's dense peak).
These are estimates: measure on your hardware with a short run (``diffusion.log_every`` prints img/s).

    python benchmarks/scaling_estimate.py
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from tailfill.classifier.model import Classifier
from tailfill.config import load_config
from tailfill.generator.pipeline import build_unet


def forward_flops(model, *inputs, **kw) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs, **kw)
    return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/isic2019.yaml")
    ap.add_argument("--tflops", type=float, default=300.0, help="sustained bf16 TFLOP/s per GPU")
    ap.add_argument("--train-images", type=int, default=25331 * 7 // 10, help="ISIC 2019 training split size")
    args = ap.parse_args()
    cfg = load_config(args.config)
    d, c, g = cfg.diffusion, cfg.classifier, cfg.generate
    rows = []
    for size in (128, 256):
        unet = build_unet(size, 8, d.block_out_channels, d.layers_per_block, d.attention)
        f_unet = forward_flops(unet, torch.randn(1, 7, size, size), 10, class_labels=torch.tensor([1]))
        clf = Classifier(c.backbone, 8)
        f_clf = forward_flops(clf, torch.randn(1, 3, size, size))
        diff_train = 3 * f_unet * d.train_steps * d.batch_size  # forward + backward ~ 3x forward
        n_synth = 8000  # ISIC 2019 tail classes filled to the median, x oversample
        gen = f_unet * 2 * g.steps * n_synth  # classifier-free guidance doubles the batch
        clf_train = 3 * f_clf * c.epochs * (args.train_images + n_synth // 2) * len(c.seeds) * (len(c.methods) + 1)
        hours = {k: v / (args.tflops * 1e12) / 3600 for k, v in
                 {"diffusion": diff_train, "generate": gen, "classifiers": clf_train}.items()}
        rows.append((size, sum(p.numel() for p in unet.parameters()) / 1e6, f_unet / 1e9, f_clf / 1e9, hours))
    print(f"assumed sustained throughput: {args.tflops:.0f} TFLOP/s per GPU; config {args.config}")
    print(f"{'px':>4} {'UNet M':>7} {'UNet GF/img':>12} {'clf GF/img':>11} {'diff h':>7} {'gen h':>6} "
          f"{'clf h':>6} {'total GPU h':>12}")
    for size, params, fu, fc, h in rows:
        print(f"{size:>4} {params:>7.1f} {fu:>12.1f} {fc:>11.1f} {h['diffusion']:>7.1f} {h['generate']:>6.2f} "
              f"{h['classifiers']:>6.1f} {sum(h.values()):>12.1f}")


if __name__ == "__main__":
    main()
