"""What the diffusion and classifier trainers share: the process, the pixel range, class re-sampling,
and one check that stops a diverging run.

The two training loops stay separate (one is step-based with EMA and checkpoints, the other
epoch-based with model selection on validation); only these small rules are common.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint, if any, is kept."""


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place under ``accelerate launch`` / ``torchrun``: rank, world size, a barrier."""

    rank: int
    world: int
    barrier: Callable[[], None]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_STATE = []


def busy_cores(seconds: float = 0.5, cpus: set | None = None) -> float:
    """How many of ``cpus`` (default: all) other programs keep busy right now, from /proc/stat over
    ``seconds``; 0 where there is no /proc/stat."""
    import time

    def sample():
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
        rows = [[int(v) for v in line[1:]] for line in lines if cpus is None or int(line[0][3:]) in cpus]
        return sum(sum(r) for r in rows), sum(r[3] + r[4] for r in rows), len(rows)  # total, idle + iowait

    try:
        (t0, i0, n), _, (t1, i1, _) = sample(), time.sleep(seconds), sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return n * (1 - (i1 - i0) / max(1, t1 - t0))


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"        # cgroup v2: "<quota> <period>" or "max <period>"
CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"


def cpu_quota() -> float | None:
    """The container's CPU limit in cores (``docker --cpus``, a Kubernetes CPU limit), or None without one.
    Neither ``os.cpu_count()`` nor the affinity mask shows it: in a container limited to 2 CPUs on a
    64-core host, torch would start 64 threads that spin on 2 CPUs' worth of time."""
    try:
        quota, period = open(CGROUP_CPU_MAX).read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open(CGROUP_V1_QUOTA).read())
        period = int(open(os.path.join(os.path.dirname(CGROUP_V1_QUOTA), "cpu.cfs_period_us")).read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def configure_threads(report=None) -> int:
    """Torch intra-op threads for this process: the cores it may use (affinity, capped by a container's
    CPU quota) that other programs do not keep busy at the start, shared among this launch's processes
    on this machine. Oversubscribed OpenMP threads spin while they wait: on 2 cores, two jobs with 2
    threads each trained 4.4x slower *each* than one alone, with 1 thread each only 1.07x
    (docs/performance.md). ``OMP_NUM_THREADS`` (which torchrun sets) wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = len(cpus)
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    free = max(1, min(cores, int(len(cpus) - busy_cores(cpus=cpus) + 0.5)))
    n = max(1, free // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
        if report is not None and n < len(cpus):
            why = f"a CPU quota of {quota:g}" if quota is not None and free == cores < len(cpus) else \
                f"{len(cpus) - free} of {len(cpus)} cores busy"
            report(f"tailfill: {why}: using {n} torch thread(s) (set OMP_NUM_THREADS to choose)")
    return n


def process_state():
    """This process's accelerate ``PartialState``, created once, with the right backend: under ``torchrun``
    or ``accelerate launch`` on a machine without GPUs that is gloo over CPU (``PartialState()`` alone
    would report a single process there, and every rank would believe it is rank 0)."""
    if not _STATE:
        from accelerate import PartialState

        _STATE.append(PartialState(cpu=not torch.cuda.is_available()))
    return _STATE[0]


def process_info() -> ProcessInfo:
    """(rank, world, barrier) under a distributed launcher; (0, 1, no-op) in a plain process."""
    try:
        state = process_state()
        return ProcessInfo(state.process_index, state.num_processes, state.wait_for_everyone)
    except ImportError:  # accelerate missing: single process
        return ProcessInfo(0, 1, lambda: None)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@dataclass(frozen=True)
class Tracking:
    """Where training curves go besides tailfill's own files: an accelerate tracker and its folder."""

    report_to: str | None = None   # tensorboard | wandb | None
    project_dir: str | None = None


def make_accelerator(mixed_precision: str | None, device: str, tracking: Tracking | None = None, name: str = "",
                     config: dict | None = None):
    """The ``Accelerator`` both trainers run under (DDP when launched with several processes), with the
    tracker of ``tracking`` started as project ``name``; ``accelerator.log`` is a no-op without one.

    ``mixed_precision`` None takes the launcher's (``accelerate launch --mixed_precision``, else "no");
    a value set in the config wins over the launcher."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    process_state()  # one process group for the whole run, created once
    # each trainer may ask for its own precision: forget the previous trainer's (the process group stays)
    AcceleratorState._reset_state()
    tracked = tracking is not None and tracking.report_to
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=(device == "cpu"),
                              log_with=tracking.report_to if tracked else None,
                              project_dir=tracking.project_dir if tracked else None)
    if tracked:
        accelerator.init_trackers(name, config={k: v for k, v in (config or {}).items()
                                                if isinstance(v, (int, float, str, bool))})
    return accelerator


def to_model_range(images_u8) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]: what every model of tailfill reads."""
    x = torch.as_tensor(np.asarray(images_u8)) if not isinstance(images_u8, torch.Tensor) else images_u8
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def normalize_images(images_u8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, ``(x / 255 - mean) / std`` per channel (timm's convention;
    the default mean = std = 0.5 is the [-1, 1] range of a model trained from scratch)."""
    x = torch.as_tensor(np.asarray(images_u8)) if not isinstance(images_u8, torch.Tensor) else images_u8
    mean = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.permute(0, 3, 1, 2).float().div(255.0) - mean) / std


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def class_power_probabilities(labels: np.ndarray, power: float, class_mass: np.ndarray | None = None) -> np.ndarray:
    """Per-sample draw probabilities so that class c is drawn with p ~ n_c ** power.

    power 1: natural frequencies, 0: every class equally often, 0.5: square-root re-sampling.
    ``class_mass`` replaces n_c (e.g. real images only); each class's draws still spread over all its rows.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if class_mass is None:
        p = counts[labels].astype(np.float64) ** (power - 1.0)
    else:
        p = np.asarray(class_mass, np.float64)[labels] ** power / counts[labels]
    return p / p.sum()


def check_finite(loss: torch.Tensor, where: str, hint: str | Callable[[], str]) -> None:
    """Raise :class:`TrainingDivergedError` when ``loss`` is NaN or infinite (``hint`` may be a function: it is
    called only then)."""
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"{where}: loss became {loss.item()}; {hint() if callable(hint) else hint}")


def kept_checkpoint(ckpt: Path) -> str:
    """What a diverged trainer leaves: the last good checkpoint, or none when none was written yet."""
    if (Path(ckpt) / "state.pt").is_file():
        return f"the last good checkpoint ({ckpt}) is kept"
    return "no checkpoint had been written yet (the first comes after checkpoint_every steps)"


def finish_tracking(accelerator) -> None:
    """Close the trackers, keeping the process group (later stages still need it; ``end_training`` would
    destroy it)."""
    for tracker in accelerator.trackers:
        tracker.finish()


def log_images(tracking: Tracking | None, name: str, images: dict) -> None:
    """Send ``{key: (N, H, W, 3) uint8}`` image sets (e.g. synthetic samples per class) to the tracker."""
    if tracking is None or not tracking.report_to or not process_info().is_main:
        return
    accelerator = make_accelerator("no", "cpu", tracking, name)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images(images, step=0, dataformats="NHWC")
        else:
            tracker.log_images({k: list(v) for k, v in images.items()}, step=0)
    finish_tracking(accelerator)


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's parameters: equal on every rank when DDP kept them in sync."""
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def digests_per_rank(model: torch.nn.Module) -> list[str]:
    """``weights_digest`` of every process's copy, gathered (one element in a plain process)."""
    from accelerate.utils import gather_object

    digest = weights_digest(model)
    return list(gather_object([digest])) if process_info().world > 1 else [digest]


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """Exponential moving average of the weights, with a warm-up: min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1 - d)


def optimizer_step(accelerator, opt, model: torch.nn.Module, loss: torch.Tensor, max_grad_norm: float = 1.0) -> None:
    """Backward (synchronised across processes), gradient clipping and one optimiser step."""
    opt.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()


class StepLog:
    """A training loop's bookkeeping after each optimiser step: the progress bar, the tracker, a ``history``
    row (mean loss, seconds) every ``log_every`` steps and at the last, and whether a checkpoint is due
    (every ``checkpoint_every`` steps and at the last). ``history`` is the list a checkpoint saves."""

    def __init__(self, name: str, accelerator, bar, history: list, total: int, log_every: int,
                 checkpoint_every: int, batch_size: int):
        self.name, self.accelerator, self.bar, self.history = name, accelerator, bar, history
        self.total, self.log_every, self.checkpoint_every = total, log_every, checkpoint_every
        self.batch_size = batch_size
        self.running, self.t0 = [], time.time()

    def after(self, step: int, loss: float) -> bool:
        """Record ``loss`` of ``step`` (counted from 1); whether to checkpoint now."""
        self.running.append(loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        self.accelerator.log({f"{self.name}/loss": loss}, step=step)
        last = step == self.total
        if step % self.log_every == 0 or last:
            seconds = time.time() - self.t0
            self.history.append({"step": step, "loss": float(np.mean(self.running)), "seconds": seconds})
            log.debug("%s step %d/%d loss %.4f (%.1f img/s)", self.name, step, self.total, np.mean(self.running),
                      len(self.running) * self.batch_size / max(1e-9, seconds))
            self.running, self.t0 = [], time.time()
        return step % self.checkpoint_every == 0 or last
