"""What each shared stage reads (``STAGE_INPUTS``) and writes (``STAGE_OUTPUTS``), and the key that hashes it."""
from __future__ import annotations

import hashlib
import json

from ..config import Config

PER_FIT = ("methods", "seeds")  # a fit's own method and seed join its key instead
# what every classifier fit reads (baseline or augmented): two rows compare only when these agree
FIT_SETTINGS = ["device", ("classifier", PER_FIT), "head", "experimental.ema_decay", "experimental.keep"]
SELECT_EXPERIMENTAL = [f"experimental.{k}" for k in ("keep_fraction", "min_real_quantile", "fill_fraction", "judge",
                                                      "judge_reject_confidence", "judge_max_confidence")]

# stage -> (config fields it reads: "section", "section.key" or ("section", keys left out)), upstream stages);
# mixing.fill_with: real (the control) runs no generator, so a generator stage's output says which it was
STAGE_INPUTS = {
    "prepare": (["seed", ("data", ("workers", "cache_dir"))], []),
    "train-baseline": (FIT_SETTINGS, ["prepare"]),
    "train-autoencoder": (["seed", "device", "autoencoder", "diffusion.space", "diffusion.vae", "diffusion.pretrained",
                           "mixing.fill_with"], ["prepare"]),
    "train-diffusion": (["seed", "device", "diffusion", "mixing.fill_with"], ["prepare", "train-autoencoder"]),
    "generate": (["device", "generate", "mixing.fill_with"], ["train-diffusion"]),
    # select reads the feature model's fit (train-baseline)
    "select": (["select", *SELECT_EXPERIMENTAL, "mixing.fill_with"], ["generate", "train-baseline"]),
    "train-augmented": (FIT_SETTINGS + ["mixing", "experimental"], ["select"]),
    # the real-oversampling control reads no generator: each class's deficit (generate.classes, .target) is
    # filled with its own real images, drawn by the run's seed
    "train-augmented:real": (["seed", *FIT_SETTINGS, "mixing", "experimental", "generate.classes", "generate.target"],
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
    control = stage == "train-augmented" and cfg.mixing.fill_with == "real"
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
