"""A run directory: one layout object that owns every path, stage markers, the config check, and the
prepared data.

    run_dir/
      config.yaml                 the exact configuration of this run
      stages/<stage>.json         written when a stage finishes (its time and a summary)
      data/splits.csv             every image, its class, lesion and split (train/val/test/unused)
      data/dataset.json           classes, output (submission) classes, counts, cache file names
      cache/                      resized uint8 images and lesion masks
      classifier/<kind>/<method>/seed_<s>/   model, metrics, ISIC-format predictions
      autoencoder/                latent diffusion only: vae/ (or the pretrained one's metrics), PSNR, reconstructions
      diffusion/checkpoint/       inpainting pipeline (unet, unet_ema, scheduler[, vae]) + optimiser state
      synthetic/                  plan.csv, shards/, images/, masks/, manifest.csv (provenance)
      selection/                  selection.csv (OOD decisions, used), calibration.json
      results/                    results.csv (one row per model and seed), summary.json
      report/                     report.md and plots
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config, config_from_dict, upgrade_config
from .data.prepare import PreparedData
from .data.rows import NpyRows, save_rows
from .utils.io import read_json, read_table, write_csv, write_json, write_text
from .utils.training import Tracking, process_info, resolve_device

log = logging.getLogger(__name__)


def saved_config(path: Path) -> dict:
    """A run directory's ``config.yaml`` as a mapping in today's layout: keys that have moved since it was
    written (``config.MOVED``) are read at their new place."""
    import yaml

    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    moves = upgrade_config(values)
    if moves:
        log.debug("%s: read in the new layout (%s)", path, ", ".join(f"{a} -> {b}" for a, b in moves))
    return values


class RunDirError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run directory, in one place."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    def marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    @property
    def splits(self) -> Path:
        return self.root / "data" / "splits.csv"

    @property
    def dataset_info(self) -> Path:
        return self.root / "data" / "dataset.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def demo_data(self) -> Path:
        return self.root / "demo_data"

    @property
    def classifiers(self) -> Path:
        return self.root / "classifier"

    def classifier(self, kind: str, method: str, seed: int) -> Path:
        return self.classifiers / kind / method / f"seed_{seed}"

    def fits(self, kind: str = "*", method: str = "*", file: str | None = None) -> list[tuple[str, str, int, Path]]:
        """Every classifier fit as (kind, method, seed, directory), by kind, method and seed; with ``file``, only
        the fits that have it (e.g. ``metrics.json``: finished)."""
        found = [(p.parent.parent.name, p.parent.name, int(p.name[len("seed_"):]), p)
                 for p in self.classifiers.glob(f"{kind}/{method}/seed_*") if p.name[len("seed_"):].isdigit()]
        return sorted((f for f in found if file is None or (f[3] / file).is_file()), key=lambda f: f[:3])

    @property
    def autoencoder(self) -> Path:
        return self.root / "autoencoder"

    @property
    def diffusion(self) -> Path:
        return self.root / "diffusion"

    @property
    def checkpoint(self) -> Path:
        return self.diffusion / "checkpoint"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def plan(self) -> Path:
        return self.synthetic / "plan.csv"

    @property
    def manifest(self) -> Path:
        return self.synthetic / "manifest.csv"

    @property
    def selection(self) -> Path:
        return self.root / "selection" / "selection.csv"

    @property
    def calibration(self) -> Path:
        return self.root / "selection" / "calibration.json"

    @property
    def results(self) -> Path:
        return self.root / "results" / "results.csv"

    @property
    def summary(self) -> Path:
        return self.root / "results" / "summary.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def tracking(self) -> Path:
        return self.root / "tracking"


class Run:
    """A run directory: its config, layout, stage markers and (after ``prepare``) its data."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.paths = RunLayout(self.dir)
        self.device = resolve_device(cfg.device)
        self._data: PreparedData | None = None

    @property
    def tracking(self) -> Tracking:
        return Tracking(self.cfg.report_to, str(self.paths.tracking))

    # ---------- bookkeeping
    def is_done(self, stage: str) -> bool:
        return self.paths.marker(stage).is_file()

    def require(self, stage: str) -> None:
        if not self.is_done(stage):
            raise RunDirError(f"stage {stage!r} has not finished in {self.dir}; run `tailfill {stage} "
                              f"--run-dir {self.dir}` (or `tailfill run --resume`) first")

    def mark(self, stage: str, started: float, **info) -> None:
        """Record that ``stage`` finished (main process only)."""
        if process_info().is_main:
            write_json(self.paths.marker(stage), {"stage": stage, "seconds": round(time.time() - started, 2), **info})

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        path = RunLayout(Path(run_dir)).config
        if not path.is_file():
            raise RunDirError(f"{run_dir} is not a tailfill run directory (no config.yaml); start one with "
                              "`tailfill run` or `tailfill prepare --config FILE`")
        cfg = config_from_dict(saved_config(path))
        cfg.run_dir = str(run_dir)
        return cls(cfg)

    def initialise(self, resume: bool = False, overwrite: bool = False) -> None:
        """Create the run directory, or check that an existing one belongs to this config."""
        if self.dir.exists() and not self.dir.is_dir():
            raise RunDirError(f"run directory {self.dir} is a file, not a directory; choose another --run-dir")
        started = self.dir.is_dir() and self.paths.config.is_file()
        if started and not overwrite and not resume and not self.has_progress():
            # e.g. a prepare that stopped on bad input: nothing finished, nothing to lose
            log.info("run directory %s holds no finished stage; starting it again", self.dir)
            started = False
        if started and overwrite:
            shutil.rmtree(self.dir)
        elif started and not resume:
            raise RunDirError(f"run directory {self.dir} already holds a run; pass --resume to continue it "
                              "or --overwrite to start again")
        elif started:
            diff = self.config_changes()
            if diff:
                raise RunDirError(f"cannot resume {self.dir}: its config differs in {', '.join(diff)}; "
                                  "use the same config, another --run-dir, or --overwrite")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.paths.config, self.cfg.to_yaml())

    def config_changes(self) -> list[str]:
        """The top-level config keys in which the saved ``config.yaml`` differs from this run's config."""
        saved = saved_config(self.paths.config)
        saved["run_dir"] = self.cfg.run_dir
        # compare typed: a key added to the config since the run started takes its default
        current = self.cfg.to_dict()
        try:
            saved = config_from_dict(saved).to_dict()
        except ValueError:
            pass
        for key in ("workers", "cache_dir"):  # where and how fast the images are read: no result depends on them
            if isinstance(saved.get("data"), dict):
                saved["data"][key] = current["data"][key]
        return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))

    def has_progress(self) -> bool:
        """Whether any stage finished here (or in a cross-validation fold of this directory)."""
        return any(self.paths.stages.glob("*.json")) or any(self.dir.glob("fold_*/stages/*.json"))

    # ---------- prepared data
    def save_data(self, data: PreparedData) -> dict:
        """Write what ``prepare`` made: the cached arrays, the splits table and dataset.json."""
        key = f"{len(data.frame)}_{self.cfg.data.image_size}px"
        images_file, masks_file = f"prepared_images_{key}.npy", f"prepared_masks_{key}.npy"
        save_rows(self.paths.cache / images_file, data.images)  # a hard link when it is the whole decoded cache
        save_rows(self.paths.cache / masks_file, np.asarray(data.masks, np.uint8))
        write_csv(self.paths.splits, data.frame)
        counts = data.counts()
        write_json(self.paths.dataset_info, {
            "root": data.root, "classes": data.classes, "output_classes": data.output_classes,
            "images_file": images_file, "masks_file": masks_file, "counts": counts})
        self._data = None  # later stages read the saved files from disk, batch by batch
        return counts

    @property
    def data(self) -> PreparedData:
        """Splits table, classes, cached images and masks (after ``prepare``)."""
        if self._data is None:
            self.require("prepare")
            info = read_json(self.paths.dataset_info)
            self._data = PreparedData(read_table(self.paths.splits), info["classes"], info["output_classes"],
                                      # on disk: a split is an index, a batch reads only its own rows
                                      NpyRows(self.paths.cache / info["images_file"]),
                                      NpyRows(self.paths.cache / info["masks_file"]),
                                      info.get("root", ""))
        return self._data

    def forget_data(self) -> None:
        """Re-read the data on next access (after another process wrote it)."""
        self._data = None
