"""The store of stage outputs: link what exists, publish what is new."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..run import Run
from ..utils.io import read_json, write_json, write_text
from ..baselines import feature_method
from .keys import STAGE_OUTPUTS, stage_key

log = logging.getLogger(__name__)


# ---------- the store

def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` as a relative symbolic link (the sweep directory can move)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        shutil.rmtree(link) if link.is_dir() and not link.is_symlink() else link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=target.is_dir())


def _publish(run_dir: Path, entry: Path, rel_paths: list[str], marker: dict | None) -> None:
    """Move what a run just wrote into the store entry and link it back; another job's entry of the same key,
    if it was first, is left alone (both computed the same thing)."""
    if entry.exists():
        return
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    moved = []
    for rel in rel_paths:
        src = run_dir / rel
        if src.exists() and not src.is_symlink():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, tmp / rel)
            moved.append(rel)
    if marker is not None:
        write_json(tmp / "marker.json", marker)
    try:
        os.rename(tmp, entry)
    except OSError:  # published meanwhile by another job: keep ours in place
        for rel in moved:
            os.rename(tmp / rel, run_dir / rel)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    for rel in moved:
        _link(entry / rel, run_dir / rel)


@dataclass
class Store:
    root: Path
    shared: list = field(default_factory=list)    # (run dir, stage, unit) reused from the store
    computed: list = field(default_factory=list)  # (run dir, stage, unit) computed and published here

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def open(self, run: Run) -> None:
        """Create ``run``'s directory, or bring an existing one up to its (possibly changed) config: a stage
        whose key changed, and every per-run stage after a change, runs again (its inputs come from the store)."""
        if not run.paths.config.is_file():
            run.initialise()
            return
        changes = run.config_changes()
        if not changes:
            return
        log.info("sweep: %s: the variant's config changed in %s; stages whose inputs changed run again", run.dir,
                 ", ".join(changes))
        write_text(run.paths.config, run.cfg.to_yaml())
        for marker in run.paths.stages.glob("*.json"):
            stage = marker.stem  # select's key needs the baselines, which are re-linked first: always again
            if stage not in STAGE_OUTPUTS or stage == "select" or read_json(marker).get("key") != stage_key(run.cfg, stage):
                marker.unlink()
        for *_, fit in run.paths.fits():  # re-linked by key: only the new fits train
            fit.unlink() if fit.is_symlink() else shutil.rmtree(fit)

    def run_stage(self, run: Run, stage: str, force: bool = False) -> bool:
        """Run ``stage`` of ``run`` through the store; whether anything was done (computed or linked)."""
        from ..stages import run_stage

        if run.is_done(stage) and not force:
            return False
        if stage in ("train-baseline", "train-augmented"):
            self._fits(run, stage)
            return True
        if stage not in STAGE_OUTPUTS:
            run_stage(run, stage, force=force)  # evaluate, report: per run
            return True
        entry = self.entry(stage, stage_key(run.cfg, stage, feature=feature_method(run) if stage == "select" else None))
        if (entry / "marker.json").is_file():
            for rel in STAGE_OUTPUTS[stage]:
                if (entry / rel).exists():
                    _link(entry / rel, run.dir / rel)
            write_json(run.paths.marker(stage), {**read_json(entry / "marker.json"), "key": entry.name, "shared": True})
            run.forget_data()
            self.shared.append((run.dir, stage, None))
            return True
        for rel in STAGE_OUTPUTS[stage]:  # a link to an older key's output: never write into that entry
            if (run.dir / rel).is_symlink():
                (run.dir / rel).unlink()
        run_stage(run, stage)
        marker = {**read_json(run.paths.marker(stage)), "key": entry.name}
        write_json(run.paths.marker(stage), marker)
        _publish(run.dir, entry, STAGE_OUTPUTS[stage], marker)
        run.forget_data()
        self.computed.append((run.dir, stage, None))
        return True

    def _fits(self, run: Run, stage: str) -> None:
        """The classifier stages share each fit (method, seed) on its own; the stage trains only the missing."""
        from ..baselines import best_baseline
        from ..stages import run_stage

        kind = "baseline" if stage == "train-baseline" else "augmented"
        c = run.cfg.classifier
        feature = None
        if kind == "baseline":
            units = [(m, s) for m in c.methods for s in c.seeds]
        else:
            mix = run.cfg.mixing
            method = best_baseline(run) if mix.method == "best" else mix.method
            units, feature = [(method, s) for s in c.seeds], feature_method(run)
        fresh = []
        for method, seed in units:
            entry = self.entry(stage, stage_key(run.cfg, stage, method, seed, feature))
            rel = str(run.paths.classifier(kind, method, seed).relative_to(run.dir))
            if (entry / rel / "metrics.json").is_file():
                _link(entry / rel, run.dir / rel)
                self.shared.append((run.dir, stage, (method, seed)))
            else:
                fresh.append((entry, rel, (method, seed)))
        run_stage(run, stage)  # skips every fit whose metrics.json is there (the linked ones)
        for entry, rel, unit in fresh:
            _publish(run.dir, entry, [rel], None)
            self.computed.append((run.dir, stage, unit))
