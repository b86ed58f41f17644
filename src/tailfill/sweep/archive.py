"""The archive of a sweep's record: results, markers and configs without weights, images or caches."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..run import Run
from ..utils.io import write_text
from .spec import SweepSpec


ARCHIVED = (".json", ".csv", ".yaml", ".md", ".txt")     # tables, markers, configs, selections (not log.txt)
NOT_ARCHIVED = ("store", "cache", "demo_data", "data", "shards", "checkpoint")  # data, caches, weights


def archive(spec: SweepSpec, dest: Path, max_bytes: int = 2**20) -> list[Path]:
    """Copy what ``compare`` and a resumed sweep read of every run (results, stage markers, configs, selection
    tables, metrics; links followed) to ``dest``, without weights, images, caches or the store: a sweep's record
    in a few MB, for a scratch disk that is wiped or a repository. ``tailfill compare dest`` builds the tables
    from it; ``tailfill sweep SPEC --out dest`` skips every finished run and computes only what is missing.
    Only finished runs (those with results) are kept; the rest run again from the start. Returns the files
    written."""
    dest = Path(dest)
    if dest.resolve() == spec.out.resolve():
        raise ValueError(f"--archive {dest}: that is the sweep's own directory")
    written = []
    unfinished = {Path(Run(cfg).dir).resolve() for name in spec.variants for _, _, cfg in spec.runs(name)
                  if not Run(cfg).paths.results.is_file()}
    for folder, dirs, files in os.walk(spec.out, followlinks=True):
        # a run without results is left out whole: its markers would claim outputs the archive does not hold
        dirs[:] = sorted(d for d in dirs if d not in NOT_ARCHIVED and (Path(folder) / d).resolve() not in unfinished)
        for name in sorted(files):
            src = Path(folder) / name
            if src.suffix not in ARCHIVED or src.name == "log.txt" or src.stat().st_size > max_bytes:
                continue
            target = dest / src.relative_to(spec.out)
            target.parent.mkdir(parents=True, exist_ok=True)
            # the record is a sweep directory of its own: paths into the sweep (run_dir, the cache) point into it
            text = src.read_text(encoding="utf-8")
            for old in {str(spec.out), str(spec.out.resolve())}:
                text = text.replace(old, str(dest))
            write_text(target, text)
            written.append(target)
    write_text(dest / "sweep.yaml", yaml.safe_dump({**spec.source, "out": str(dest)}, sort_keys=False))
    return written
