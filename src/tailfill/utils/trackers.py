"""report_to: the accelerate trackers training curves can go to, checked without importing torch."""
from __future__ import annotations

import importlib.util

TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}  # name -> packages (any one)


def check_tracker(report_to: str | None) -> None:
    """A clear error at start, not mid-run, when the tracker asked for is unknown or not installed."""
    if report_to is None:
        return
    if report_to not in TRACKERS:
        raise ValueError(f"unknown tracker {report_to!r}; choose from {', '.join(TRACKERS)}")
    if not any(importlib.util.find_spec(m) for m in TRACKERS[report_to]):
        raise ValueError(f"--report-to {report_to} needs the {report_to} package: pip install {report_to}")
