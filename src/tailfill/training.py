"""What the diffusion and classifier trainers share: the process, the pixel range, class re-sampling,
and one check that stops a diverging run.

The two training loops stay separate (one is step-based with EMA and checkpoints, the other
epoch-based with model selection on validation); only these small rules are common.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


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


def process_info() -> ProcessInfo:
    """(rank, world, barrier) under a distributed launcher; (0, 1, no-op) in a plain process."""
    try:
        from accelerate import PartialState

        state = PartialState()
        return ProcessInfo(state.process_index, state.num_processes, state.wait_for_everyone)
    except Exception:  # accelerate missing or not initialisable: single process
        return ProcessInfo(0, 1, lambda: None)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def make_accelerator(mixed_precision: str, device: str):
    """The ``Accelerator`` both trainers run under (DDP when launched with several processes)."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision=mixed_precision, cpu=(device == "cpu"))


def to_model_range(images_u8) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]: what every model of tailfill reads."""
    x = torch.as_tensor(np.asarray(images_u8)) if not isinstance(images_u8, torch.Tensor) else images_u8
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def class_power_probabilities(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-sample draw probabilities so that class c is drawn with p ~ n_c ** power.

    power 1: natural frequencies, 0: every class equally often, 0.5: square-root re-sampling.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    p = counts[labels].astype(np.float64) ** (power - 1.0)
    return p / p.sum()


def check_finite(loss: torch.Tensor, where: str, hint: str) -> None:
    """Raise :class:`TrainingDivergedError` when ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"{where}: loss became {loss.item()}; {hint}")
