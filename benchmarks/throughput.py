"""Throughput of every compute stage, next to a plain-PyTorch loop with the same model and batch.

For each image size and stage it measures tailfill's own code (the functions `tailfill run` calls) and
a minimal loop that does only the arithmetic (same model, batch, optimiser; no EMA, masks, augmentation,
logging or checkpoints): the plain loop is the peak of this stack on this machine, and the ratio
tailfill / plain says how much the product loses around it. Each measurement runs in its own process,
so its peak RSS is its own and one cell's threads or caches do not leak into the next; the two
implementations of a stage run back to back, so the ratio is taken under the same machine load.

Stages: diffusion training (default UNet, batch 32), generation at 20 steps with guidance 3 (DDIM and
DPM-Solver++, batch 64; 64 images up to 64 px, fewer above), classifier training (resnet18, batch 64) and inference (batch 256).

    python benchmarks/throughput.py                       # 32 64 128 px on the CPU
    python benchmarks/throughput.py --device cuda --sizes 64 128 256
    python benchmarks/throughput.py --plain-variants       # + channels_last / torch.compile on the plain loop
    python benchmarks/throughput.py --contention --sizes 32 # thread settings with two processes at once
    python benchmarks/throughput.py --processes 2 --sizes 32  # DDP scaling of the trainers (torchrun)
    python benchmarks/throughput.py --profile diffusion_train --sizes 32   # where the time goes

Prints a Markdown table and writes it to ``--out`` (default docs/performance/throughput_<device>.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tailfill.evaluation.tables import to_markdown

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["diffusion_train", "generate_ddim", "generate_dpmsolver++", "classifier_train", "classifier_infer"]
NUM_CLASSES = 8
GEN_BATCH = int(os.environ.get("TAILFILL_BENCH_GEN_BATCH", 64))  # generate.batch_size (--gen-batch)


def fake_data(size: int, n: int, seed: int = 0):
    """Images with a dark disk on skin-coloured noise, the disk as the lesion mask, labels 0..7."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.3, 0.7, (2, n, 1, 1)) * size
    r = rng.uniform(0.1, 0.3, (n, 1, 1)) * size
    masks = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2).astype(np.float32)
    skin = rng.integers(150, 230, (n, size, size, 3))
    images = (skin - masks[..., None] * 100).clip(0, 255).astype(np.uint8)
    return images, masks, np.arange(n) % NUM_CLASSES


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------- diffusion


def diffusion_tailfill(size, device, steps, warmup, variant):
    from tailfill.config import DiffusionConfig
    from tailfill.generator.train import train_diffusion

    images, masks, labels = fake_data(size, 512)
    cfg = DiffusionConfig(train_steps=warmup + steps, log_every=warmup, checkpoint_every=10 ** 9)
    assert steps % warmup == 0, "--steps must be a multiple of --warmup (the trainer logs every warmup steps)"
    world = int(os.environ.get("WORLD_SIZE", 1))  # under torchrun: every process draws its own batch
    # one folder for all processes (the main one writes train_info.json)
    tmp = Path(tempfile.gettempdir()) / f"tailfill_throughput_{os.environ.get('MASTER_PORT', os.getpid())}"
    ckpt = train_diffusion(images, labels, masks, NUM_CLASSES, cfg, tmp, 0, device, resume=False)
    if int(os.environ.get("RANK", 0)) != 0:
        return float("nan")
    history = json.loads((ckpt.parent / "train_info.json").read_text())["history"]
    subprocess.run(["rm", "-rf", str(tmp)])
    measured = history[1:]  # the first entry holds the warm-up steps
    return world * sum(h["step"] - p["step"] for p, h in zip(history, measured)) * cfg.batch_size / sum(
        h["seconds"] for h in measured)


def diffusion_plain(size, device, steps, warmup, variant):
    from diffusers import DDPMScheduler

    from tailfill.config import DiffusionConfig
    from tailfill.generator.pipeline import build_unet

    cfg = DiffusionConfig()
    images, masks, labels = fake_data(size, 512)
    unet = prepared(build_unet(size, NUM_CLASSES, cfg.block_out_channels, cfg.layers_per_block, cfg.attention)
                    .to(device), variant, train=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)
    images_t, masks_t, labels_t = torch.as_tensor(images), torch.as_tensor(masks)[:, None], torch.as_tensor(labels)
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        idx = torch.randint(len(images), (cfg.batch_size,))
        x0 = (images_t[idx].permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)
        m = masks_t[idx].to(device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), device=device)
        pred = unet(torch.cat([sched.add_noise(x0, noise, t), x0 * (1 - m), m], 1), t,
                    class_labels=labels_t[idx].to(device)).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- generation


def _pipeline(size, device, sampler):
    from diffusers import DDPMScheduler

    from tailfill.config import DiffusionConfig
    from tailfill.generator.pipeline import InpaintPipeline, build_unet, make_scheduler

    cfg = DiffusionConfig()
    torch.manual_seed(0)
    unet = build_unet(size, NUM_CLASSES, cfg.block_out_channels, cfg.layers_per_block, cfg.attention).to(device).eval()
    train_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)
    return InpaintPipeline(unet, make_scheduler(sampler, train_sched.config))


def generate_tailfill(size, device, sampler, n, variant):
    from tailfill.config import GenerateConfig
    from tailfill.generator.generate import synthesize

    cfg = GenerateConfig(sampler=sampler, steps=20, guidance_scale=3.0, batch_size=GEN_BATCH)
    pipe = _pipeline(size, device, sampler)
    images, masks, labels = fake_data(size, n)
    plan = pd.DataFrame({"context_index": np.arange(len(labels)), "label": labels, "seed": np.arange(len(labels))})
    synthesize(pipe, plan.iloc[:4], images, masks[:4], cfg)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    synthesize(pipe, plan, images, masks, cfg)
    sync(device)
    return len(plan) / (time.perf_counter() - t0)


def generate_plain(size, device, sampler, n, variant):
    from tailfill.config import GenerateConfig

    cfg = GenerateConfig(sampler=sampler, steps=20, guidance_scale=3.0, batch_size=GEN_BATCH)
    pipe = _pipeline(size, device, sampler)
    unet, sched = prepared(pipe.unet, variant, train=False), pipe.scheduler
    images, masks, labels = fake_data(size, n)

    def run(count):
        for b in range(0, count, cfg.batch_size):
            x0 = (torch.as_tensor(images[b:b + cfg.batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)
            m = torch.as_tensor(masks[b:b + cfg.batch_size])[:, None].to(device)
            y = torch.as_tensor(labels[b:b + cfg.batch_size]).to(device)
            y2, cond = torch.cat([y, torch.full_like(y, NUM_CLASSES)]), torch.cat([x0 * (1 - m), m], 1)
            sched.set_timesteps(cfg.steps, device=device)
            x = torch.randn_like(x0) * sched.init_noise_sigma
            with torch.inference_mode():
                for t in sched.timesteps:
                    inp = torch.cat([sched.scale_model_input(x, t), cond], 1)
                    eps_c, eps_u = unet(torch.cat([inp, inp]), t, class_labels=y2).sample.chunk(2)
                    x = sched.step(eps_u + cfg.guidance_scale * (eps_c - eps_u), t, x).prev_sample
            (m * x.clamp(-1, 1) + (1 - m) * x0).cpu()

    run(4)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    run(len(labels))
    sync(device)
    return len(labels) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- classifier


def classifier_train_tailfill(size, device, images_per_epoch, variant):
    from tailfill.classifier.train import train_classifier
    from tailfill.config import ClassifierConfig

    images, _, labels = fake_data(size, images_per_epoch)
    val_images, _, val_labels = fake_data(size, 64, seed=1)
    cfg = ClassifierConfig(epochs=2, batch_size=64)
    result = train_classifier(images, labels, val_images, val_labels, [str(c) for c in range(NUM_CLASSES)], "ce",
                              cfg, 0, device)
    if int(os.environ.get("RANK", 0)) != 0:
        return float("nan")
    return images_per_epoch / result.history[1]["seconds"]  # epoch 2: after the warm-up epoch (all processes)


def classifier_train_plain(size, device, images_per_epoch, variant):
    from tailfill.classifier.model import Classifier

    images, _, labels = fake_data(size, images_per_epoch)
    model = prepared(Classifier("resnet18", NUM_CLASSES).to(device), variant, train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    images_t, labels_t, batch = torch.as_tensor(images), torch.as_tensor(labels), 64
    for epoch in range(2):
        sync(device)
        t0 = time.perf_counter()
        for idx in torch.randperm(len(labels)).split(batch):
            x = ((images_t[idx].permute(0, 3, 1, 2).float() / 127.5 - 1)).to(device)
            loss = F.cross_entropy(model(x), labels_t[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
    return images_per_epoch / (time.perf_counter() - t0)


def classifier_infer_tailfill(size, device, n, variant):
    from tailfill.classifier.model import Classifier, TrainedClassifier

    images, _, _ = fake_data(size, n)
    model = TrainedClassifier(Classifier("resnet18", NUM_CLASSES).to(device).eval(),
                              [str(c) for c in range(NUM_CLASSES)], "ce", np.zeros(NUM_CLASSES), [])
    model.predict_proba(images[:8])
    sync(device)
    t0 = time.perf_counter()
    model.predict_proba(images)
    sync(device)
    return n / (time.perf_counter() - t0)


def classifier_infer_plain(size, device, n, variant):
    from tailfill.classifier.model import Classifier

    images, _, _ = fake_data(size, n)
    model = prepared(Classifier("resnet18", NUM_CLASSES).to(device).eval(), variant, train=False)
    images_t = torch.as_tensor(images)

    def run(x_u8):
        with torch.inference_mode():
            for b in range(0, len(x_u8), 256):
                x = (x_u8[b:b + 256].permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)
                model(x).softmax(1).cpu()

    run(images_t[:8])
    sync(device)
    t0 = time.perf_counter()
    run(images_t)
    sync(device)
    return n / (time.perf_counter() - t0)


def prepared(model, variant: str, train: bool):
    """The plain loop's model in ``variant``: eager, channels_last, or torch.compile (inductor)."""
    if variant == "channels_last":
        return model.to(memory_format=torch.channels_last)
    if variant == "compile":
        return torch.compile(model)
    return model


# ------------------------------------------------------------------------------------------- driver


def measure(stage: str, impl: str, size: int, device: str, args, variant: str) -> float:
    s = args.scale
    if stage == "diffusion_train":
        fn = diffusion_tailfill if impl == "tailfill" else diffusion_plain
        return fn(size, device, max(2, int(args.steps * s)) // 2 * 2, 2, variant)
    if stage.startswith("generate_"):
        fn = generate_tailfill if impl == "tailfill" else generate_plain
        return fn(size, device, stage.removeprefix("generate_"), max(16, int(64 * s * min(1, (64 / size) ** 2))),
                  variant)
    n = max(128, int((2048 if stage == "classifier_infer" else 512) * s * (64 / size) ** 2 // 64 * 64))
    fn = {"classifier_train": (classifier_train_tailfill, classifier_train_plain),
          "classifier_infer": (classifier_infer_tailfill, classifier_infer_plain)}[stage][impl != "tailfill"]
    return fn(size, device, n, variant)


def run_cell(stage, impl, size, device, args, variant="eager", env=None, copies=1, processes=1) -> dict:
    """One measurement in a fresh process: (images per second, its peak RSS). With ``copies`` > 1 that many
    identical processes run at once (the machine shared with other jobs) and their mean rate is returned."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-port", str(29500 + int(time.time()) % 1000)]
    cmd = launcher + [__file__, "--cell", stage, impl, str(size), variant, "--device", device,
                      "--steps", str(args.steps), "--scale", str(args.scale)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})}) for _ in range(copies)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            sys.stderr.write(err[-3000:])
            return {"img_s": float("nan"), "rss": float("nan")}
        lines = [json.loads(x) for x in out.strip().splitlines() if x.startswith("{")]
        results.append(next((r for r in lines if np.isfinite(r["img_s"])), lines[-1]))  # the main process's
    return {"img_s": float(np.mean([r["img_s"] for r in results])), "rss": max(r["rss"] for r in results)}


# Thread settings under contention: each setting's rate with 1 process alone and with 2 at once.
THREAD_SETTINGS = {
    "default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread per process": {"OMP_NUM_THREADS": "1"},
}


def scaling(args) -> str:
    """tailfill's trainers with 1 process and with ``--processes`` (torchrun, DDP over gloo on a CPU)."""
    rows = []
    for stage in ("diffusion_train", "classifier_train"):
        one = run_cell(stage, "tailfill", args.sizes[0], args.device, args)
        many = run_cell(stage, "tailfill", args.sizes[0], args.device, args, processes=args.processes)
        rows.append({"stage": stage, "size": args.sizes[0], "1 process img/s": one["img_s"],
                     f"{args.processes} processes img/s": many["img_s"],
                     "speed-up": many["img_s"] / one["img_s"],
                     "scaling efficiency": many["img_s"] / one["img_s"] / args.processes})
        print(rows[-1], flush=True)
    return to_markdown(pd.DataFrame(rows).round(3))


def contention(args) -> str:
    rows = []
    for stage in ("classifier_train", "diffusion_train"):
        for name, env in THREAD_SETTINGS.items():
            alone = run_cell(stage, "plain", args.sizes[0], args.device, args, env=env)["img_s"]
            pair = run_cell(stage, "plain", args.sizes[0], args.device, args, env=env, copies=2)["img_s"]
            rows.append({"stage": stage, "threads": name, "1 process img/s": alone,
                         "2 processes img/s (each)": pair, "2 processes total / 1 alone": 2 * pair / alone})
            print(rows[-1], flush=True)
    return to_markdown(pd.DataFrame(rows).round(3))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=8, help="measured diffusion steps at 32 px (after 2 warm-up)")
    ap.add_argument("--scale", type=float, default=1.0, help="scale the work per cell (e.g. 4 on a GPU)")
    ap.add_argument("--plain-variants", action="store_true",
                    help="also time the plain loop with channels_last and torch.compile")
    ap.add_argument("--contention", action="store_true",
                    help="thread settings when two processes share the machine (first --sizes only)")
    ap.add_argument("--processes", type=int, default=1,
                    help="> 1: scaling of tailfill's trainers under torchrun with this many processes")
    ap.add_argument("--profile", choices=STAGES, help="profile tailfill's code for this stage (first --sizes)")
    ap.add_argument("--gen-batch", type=int, default=64, help="generate.batch_size for the generation stages")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cell", nargs=4, metavar=("STAGE", "IMPL", "SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["TAILFILL_BENCH_GEN_BATCH"] = str(args.gen_batch)  # read by the cells (child processes)
    if args.profile:  # where tailfill's time goes in one stage: functions by own time
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(measure, args.profile, "tailfill", args.sizes[0], args.device, args, "eager")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    if args.cell:
        stage, impl, size, variant = args.cell
        img_s = measure(stage, impl, int(size), args.device, args, variant)
        print(json.dumps({"img_s": img_s, "rss": peak_rss_gb()}))
        return

    if args.contention or args.processes > 1:
        kind = "contention" if args.contention else "scaling"
        what = (f"the plain loop at {args.sizes[0]} px, alone and as two processes at once" if args.contention else
                f"tailfill's trainers at {args.sizes[0]} px, 1 process against {args.processes} (torchrun)")
        text = (f"Produced by `python benchmarks/throughput.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}"
                f": {what}.\n\n" + (contention(args) if args.contention else scaling(args)))
        print("\n" + text)
        out = args.out or ROOT / "docs" / "performance" / f"{kind}_{args.device.split(':')[0]}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        return
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    out = args.out or ROOT / "docs" / "performance" / f"throughput_{args.device.split(':')[0]}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        for stage in args.stages:
            t = run_cell(stage, "tailfill", size, args.device, args)
            p = run_cell(stage, "plain", size, args.device, args)
            row = {"size": size, "stage": stage, "tailfill img/s": t["img_s"], "plain img/s": p["img_s"],
                   "tailfill / plain": t["img_s"] / p["img_s"], "tailfill peak RSS GB": t["rss"],
                   "plain peak RSS GB": p["rss"]}
            for variant in (["channels_last", "compile"] if args.plain_variants else []):
                v = run_cell(stage, "plain", size, args.device, args, variant)
                row[f"plain {variant} / plain"] = v["img_s"] / p["img_s"]
            rows.append(row)
            print(" | ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
            # written after every row: a long run stopped early keeps what it measured
            text = (f"Produced by `python benchmarks/throughput.py {' '.join(sys.argv[1:])}` on {device}, torch "
                    f"{torch.__version__}, {time.strftime('%Y-%m-%d')}.\n\n" + to_markdown(pd.DataFrame(rows).round(3))
                    + "\n")
            out.write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
