"""``tailfill sweep``: variants of one base config, each an ordinary run, sharing every stage output whose inputs
are identical.

    # spec.yaml
    base: configs/ham10000.yaml          # a config file (optional: the defaults otherwise)
    set: {classifier.seeds: [0, 1]}      # overrides for every variant
    out: runs/sweep_ham                  # the sweep's directory
    splits: [0, 1, 2]                    # data splits (the top-level seed), pooled by compare (optional)
    controls: [real_oversample]          # variants added for you (CONTROLS)
    variants:                            # name: overrides of the base
      real: {}
      synth_same: {generate.context_classes: same}

Layout: ``out/sweep.yaml`` (the spec as run), ``out/<variant>/`` (an ordinary run directory, or with
``splits`` one per split, ``out/<variant>/split_<s>/``; with ``data.folds``, ``.../fold_<i>/`` too), ``out/store/<stage>/<key>/`` (what a stage wrote). A stage's
key hashes exactly the config fields it reads (``STAGE_INPUTS``) and the keys of the stages it reads from,
so a run whose inputs to a stage match an earlier one's links that output instead of computing it: the
baselines, autoencoder, generator and pool of variants that differ only downstream are made once, and a new
seed trains only its own classifiers. Each variant can run as its own job (``--variant``/``--index``);
jobs that meet on one key each compute it and the first to finish publishes it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import Config, config_from_dict, set_dotted
from .utils.io import read_json, write_json, write_text
from .run import Run

log = logging.getLogger(__name__)

# control variants a spec can ask for by name: the overrides that make each
CONTROLS = {"real_oversample": {"classifier.fill_with": "real"}}

# classifier fields that act only when synthetic (or repeated) images join training: not baseline inputs
AUGMENTED_ONLY = ("augmented_method", "fill_with", "synthetic_max_ratio", "synthetic_share", "synthetic_loss_weight",
                  "synthetic_rebalances", "soft_labels", "soft_label_gamma")
PER_FIT = ("methods", "seeds")  # a fit's own method and seed join its key instead

# stage -> (config fields it reads: "section", "section.key" or ("section", keys left out)), upstream stages)
STAGE_INPUTS = {
    "prepare": (["seed", ("data", ("workers", "cache_dir"))], []),
    "train-baseline": (["device", ("classifier", AUGMENTED_ONLY + PER_FIT)], ["prepare"]),
    "train-autoencoder": (["seed", "device", "autoencoder", "diffusion.space", "diffusion.vae", "diffusion.pretrained",
                           "classifier.fill_with"], ["prepare"]),
    "train-diffusion": (["seed", "device", "diffusion", "classifier.fill_with"], ["prepare", "train-autoencoder"]),
    "generate": (["device", "generate", "classifier.fill_with"], ["train-diffusion"]),
    "select": (["select", "classifier.fill_with"], ["generate", "train-baseline"]),  # the feature model's fit
    "train-augmented": (["device", ("classifier", PER_FIT)], ["select"]),
    # the real-oversampling control reads no generator: each class's deficit (generate.classes, .target) is
    # filled with its own real images, drawn by the run's seed
    "train-augmented:real": (["seed", "device", ("classifier", PER_FIT), "generate.classes", "generate.target"],
                             ["prepare"]),
}
PER_RUN = ("evaluate", "report")  # cheap tables of a run's own fits: never shared
# what each shared stage writes, relative to the run directory (per fit for the two classifier stages)
STAGE_OUTPUTS = {"prepare": ["data", "cache"], "train-autoencoder": ["autoencoder"], "train-diffusion": ["diffusion"],
                 "generate": ["synthetic"], "select": ["selection"]}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fields(cfg: Config, wanted: list) -> dict:
    values = cfg.to_dict()
    out = {}
    for item in wanted:
        name, leave_out = item if isinstance(item, tuple) else (item, ())
        section, _, key = name.partition(".")
        value = values[section][key] if key else values[section]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in leave_out}
        out[name] = value
    return out


def stage_key(cfg: Config, stage: str, method: str | None = None, seed: int | None = None,
              feature: str | None = None) -> str:
    """The key of ``stage``'s output for ``cfg``: its config fields, the keys of its upstream stages, and for a
    classifier fit its method and seed. ``feature`` is the baseline method whose first-seed fit gives the OOD
    features (``select.feature_method``, or the best baseline once the baselines exist): select reads that fit."""
    control = stage == "train-augmented" and cfg.classifier.fill_with == "real"
    wanted, upstream = STAGE_INPUTS[f"{stage}:real" if control else stage]
    parts = {"stage": stage, "fields": _fields(cfg, wanted)}
    for up in upstream:
        parts[up] = stage_key(cfg, up, feature, cfg.classifier.seeds[0]) if up == "train-baseline" \
            else stage_key(cfg, up, feature=feature)
    if stage in ("train-baseline", "train-augmented"):
        parts.update(method=method, seed=seed)
    return _digest(parts)


def baseline_keys(cfg: Config) -> list[str]:
    c = cfg.classifier
    return [stage_key(cfg, "train-baseline", m, s) for m in c.methods for s in c.seeds]


def feature_method(run: Run) -> str:
    """The baseline whose features select scores (``select.feature_method``, or the best on validation)."""
    from .stages import best_baseline

    return run.cfg.select.feature_method or best_baseline(run)


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
        from .stages import run_stage

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
        from .stages import best_baseline, run_stage

        kind = "baseline" if stage == "train-baseline" else "augmented"
        c = run.cfg.classifier
        feature = None
        if kind == "baseline":
            units = [(m, s) for m in c.methods for s in c.seeds]
        else:
            method = best_baseline(run) if c.augmented_method == "best" else c.augmented_method
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


# ---------- the spec

@dataclass
class SweepSpec:
    out: Path
    base: dict        # the base config's values (file + set), before a variant's overrides
    variants: dict    # name -> {dotted key: value}
    source: dict      # the spec as written
    splits: list = field(default_factory=list)  # data seeds; empty: the config's own seed, no split level

    @classmethod
    def load(cls, path: str | Path, out: str | None = None, overrides: list[str] | None = None) -> "SweepSpec":
        """The spec at ``path``; ``out`` replaces its out, ``overrides`` (``key=value``) join its set."""
        from .config import parse_overrides

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep spec not found: {path}")
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if out and isinstance(spec, dict):
            spec = {**spec, "out": out}
        if overrides and isinstance(spec, dict):
            spec = {**spec, "set": {**(spec.get("set") or {}), **{k: v for k, (_, v) in parse_overrides(overrides).items()}}}
        return cls.from_dict(spec, str(path))

    @classmethod
    def from_dict(cls, spec, where: str = "sweep spec") -> "SweepSpec":
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: must be a mapping with out, variants (and base, set, controls)")
        known = ("base", "set", "out", "splits", "controls", "variants")
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        splits = spec.get("splits") or []
        if not isinstance(splits, list) or not all(isinstance(x, int) and x >= 0 for x in splits):
            raise ValueError(f"{where}: splits must be a list of data seeds (non-negative integers), got {splits!r}")
        if not spec.get("out"):
            raise ValueError(f"{where}: needs out (the sweep's directory)")
        variants = spec.get("variants") or {}
        if not isinstance(variants, dict) or not (variants or spec.get("controls")):
            raise ValueError(f"{where}: variants must be a mapping name -> overrides (at least one)")
        for name in spec.get("controls") or []:
            if name not in CONTROLS:
                raise ValueError(f"{where}: unknown control {name!r}; known: {', '.join(CONTROLS)}")
            variants = {**variants, name: {**CONTROLS[name], **(variants.get(name) or {})}}
        for name, overrides in variants.items():
            if not str(name).replace("_", "").replace("-", "").replace(".", "").isalnum():
                raise ValueError(f"{where}: variant name {name!r} must be letters, digits, '_', '-' or '.'")
            if overrides is not None and not isinstance(overrides, dict):
                raise ValueError(f"{where}: variant {name}: overrides must be a mapping key: value")
        base = {}
        if spec.get("base"):
            base_path = Path(spec["base"])
            if not base_path.is_file():
                raise FileNotFoundError(f"{where}: base config not found: {base_path}")
            base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
        base = _apply(base, spec.get("set") or {}, f"{where}: set")
        out = cls(Path(spec["out"]), base, {str(k): dict(v or {}) for k, v in variants.items()}, spec, list(splits))
        for name in out.variants:
            out.config(name)  # every variant's config checked before anything runs
        return out

    def split_seeds(self) -> list:
        """The data splits a variant runs on: ``splits``, or [None] for the config's own seed."""
        return list(self.splits) or [None]

    def config(self, name: str, split: int | None = None) -> Config:
        """Variant ``name``'s config (on data split ``split``, the top-level seed, when the spec has splits)."""
        values = _apply(self.base, self.variants[name], f"variant {name}")
        values["run_dir"] = str(self.out / name if split is None else self.out / name / f"split_{split}")
        if split is not None:
            values["seed"] = split
        try:
            return config_from_dict(values)
        except ValueError as e:
            raise ValueError(f"variant {name}: {e}") from None

    def runs(self, name: str) -> list[tuple[int | None, int, Config]]:
        """(split, fold, config) of every run of variant ``name``: its splits, and within each its folds."""
        from .crossval import fold_config

        out = []
        for split in self.split_seeds():
            cfg = self.config(name, split)
            folds = [fold_config(cfg, f) for f in range(cfg.data.folds)] if cfg.data.folds else [cfg]
            out += [(split, f, c) for f, c in enumerate(folds)]
        return out


def _apply(values: dict, overrides: dict, where: str) -> dict:
    out = copy.deepcopy(values)
    for key, value in overrides.items():
        set_dotted(out, str(key), value, f"{where}: {key}")
    return out


# ---------- keeping the results

ARCHIVED = (".json", ".csv", ".yaml", ".md", ".txt")     # tables, markers, configs, selections, logs
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
            if src.suffix not in ARCHIVED or src.stat().st_size > max_bytes:
                continue
            target = dest / src.relative_to(spec.out)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
            written.append(target)
    write_text(dest / "sweep.yaml", yaml.safe_dump({**spec.source, "out": str(dest)}, sort_keys=False))
    return written


# ---------- running

def run_sweep(spec: SweepSpec, only: list[str] | None = None, stages: list[str] | None = None,
              folds: list[int] | None = None) -> Store:
    """Run (or resume) the variants ``only`` (default all), every stage through the store; with ``folds``, only
    those folds of a cross-validated base (fold-major order across jobs or sessions: every variant of fold 0
    first)."""
    from .crossval import fold_config, summarise_folds
    from .stages import STAGES

    for name in only or list(spec.variants):
        if name not in spec.variants:
            raise ValueError(f"unknown variant {name!r}; this sweep has {', '.join(spec.variants)}")
        k = spec.config(name).data.folds
        if folds and not k:
            raise ValueError(f"variant {name}: a fold was asked for, but its config has no data.folds")
        if any(not 0 <= f < (k or 0) for f in folds or []):
            raise ValueError(f"variant {name}: folds {folds} asked for; its config has folds 0 to {k - 1}")
    spec.out.mkdir(parents=True, exist_ok=True)
    write_text(spec.out / "sweep.yaml", yaml.safe_dump({**spec.source, "out": str(spec.out)}, sort_keys=False))
    store = Store(spec.out / "store")
    for name in only or list(spec.variants):
        for split in spec.split_seeds():
            cfg = spec.config(name, split)
            log.info("sweep: variant %s%s", name, "" if split is None else f", split {split}")
            top = Run(cfg)
            store.open(top)
            runs = [Run(fold_config(cfg, f)) for f in range(cfg.data.folds)] if cfg.data.folds else [top]
            for run in runs:
                if folds and run.cfg.data.fold not in folds:
                    continue
                if run is not top:
                    store.open(run)
                changed = False
                for stage in stages or list(STAGES):  # the per-run tables again whenever a stage before them ran
                    changed |= store.run_stage(run, stage, force=changed and stage in PER_RUN)
            if cfg.data.folds and all(r.paths.results.is_file() for r in runs):
                summarise_folds(top)
    log.info("sweep: %d stage outputs computed, %d reused from the store", len(store.computed), len(store.shared))
    return store
