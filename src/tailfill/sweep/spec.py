"""The sweep spec (base, set, out, splits, controls, variants) and running it."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import Config, config_from_dict, set_dotted
from ..run import Run
from ..utils.io import write_text
from .keys import PER_RUN
from .store import Store

log = logging.getLogger(__name__)


# control variants a spec can ask for by name: the overrides that make each
CONTROLS = {"real_oversample": {"mixing.fill_with": "real"}}


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
        from ..config import parse_overrides

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
        from ..crossval import fold_config

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


# ---------- running

def run_sweep(spec: SweepSpec, only: list[str] | None = None, stages: list[str] | None = None,
              folds: list[int] | None = None) -> Store:
    """Run (or resume) the variants ``only`` (default all), every stage through the store; with ``folds``, only
    those folds of a cross-validated base (fold-major order across jobs or sessions: every variant of fold 0
    first)."""
    from ..crossval import fold_config, summarise_folds
    from ..stages import STAGES

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
