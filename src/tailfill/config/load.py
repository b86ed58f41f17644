"""Loading a config: YAML and ``a.b=value`` overrides over the defaults, typed at load; keys that moved."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from .checks import validate
from .sections import Config


# keys that moved to a section of their own (old dotted key -> new): an old config gets an error naming the new
# key; a run directory's saved config.yaml is upgraded on load (`tailfill upgrade-config` rewrites a file)
MOVED = {
    "classifier.augmented_method": "mixing.method", "classifier.fill_with": "mixing.fill_with",
    "classifier.synthetic_share": "mixing.share", "classifier.synthetic_rebalances": "mixing.rebalances",
    "classifier.retrain_head": "head.retrain", "classifier.head_epochs": "head.epochs",
    "classifier.head_init": "head.init", "classifier.feature_fill": "head.feature_fill",
    "classifier.feature_share": "head.feature_share", "classifier.feature_steps": "head.feature_steps",
    "select.judge_size": "select.feature_size",
    **{f"select.{k}": f"experimental.{k}" for k in ("keep_fraction", "min_real_quantile", "fill_fraction", "judge",
                                                     "judge_reject_confidence", "judge_max_confidence")},
    **{f"classifier.{k}": f"experimental.{k}" for k in ("soft_labels", "soft_label_gamma", "synthetic_loss_weight",
                                                         "synthetic_max_ratio", "ema_decay", "keep")},
}


def upgrade_config(values: dict) -> list[tuple[str, str]]:
    """Move every old key of the nested ``values`` to its new place (``MOVED``), in place; the moves made."""
    done = []
    for old, new in MOVED.items():
        (o_sec, o_key), (n_sec, n_key) = old.split("."), new.split(".")
        section = values.get(o_sec)
        if isinstance(section, dict) and o_key in section:
            if values.get(n_sec) is None:  # absent, or written as an empty section
                values[n_sec] = {}
            if isinstance(values[n_sec], dict):
                values[n_sec][n_key] = section.pop(o_key)
                done.append((old, new))
    return done


def upgrade_file(path: str | Path) -> tuple[str, list[tuple[str, str]]]:
    """The YAML of the config or sweep spec at ``path`` with its moved keys at their new place (comments are not
    kept), and the moves made. A sweep spec's dotted keys (in ``set`` and each variant) are renamed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    if "variants" in values or "set" in values:  # a sweep spec
        moves = []
        for block in [values.get("set")] + list((values.get("variants") or {}).values()):
            for old in [k for k in (block or {}) if k in MOVED]:
                block[MOVED[old]] = block.pop(old)
                moves.append((old, MOVED[old]))
    else:
        moves = upgrade_config(values)
    return yaml.safe_dump(values, sort_keys=False), moves


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"config section {where.rstrip('.') or 'top level'} must be a mapping of keys, got "
                         f"{values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    moved = [f"{where}{k} (now {MOVED[where + k]})" for k in unknown if where + k in MOVED]
    if moved:
        raise ValueError(f"config key(s) moved: {', '.join(moved)}; `tailfill upgrade-config FILE` rewrites a "
                         "config in the new layout")
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hints[name], where + name)
    return cls(**kwargs)


def _coerce(value, hint, key: str):
    """``value`` as the field's type, or a ValueError naming ``key``. YAML 1.1 reads ``1e-3`` as a string:
    numbers written so become floats; anything that is not the field's type is refused here, at load."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):  # str last
            try:
                return _coerce(value, option, key)
            except ValueError as e:
                errors.append(e)
        raise ValueError(f"config key {key}: expected {' or '.join(_name(a) for a in args)}, got {value!r}")
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    elif hint in (bool, str) and isinstance(value, hint):
        return value
    elif hint is list and isinstance(value, (list, tuple)):
        return list(value)
    elif hint is Any:
        return value
    raise ValueError(f"config key {key}: expected {_name(hint)}, got {value!r}")


def _name(t) -> str:
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


def config_from_dict(values: dict | None) -> Config:
    cfg = _build(Config, values or {}, "")
    validate(cfg)
    return cfg


def set_dotted(values: dict, key: str, value, where: str) -> None:
    """``values[a][b] = value`` for ``key`` "a.b" (sections made as needed); ``where`` starts the error."""
    node, parts = values, key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"{where}: config section {p} must be a mapping, got {node!r}")
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict:
    """``["a.b=value", ...]`` (values in YAML) -> ``{"a.b": (item, value)}``, the last of a key winning."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = (item, yaml.safe_load(raw))
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: not a valid YAML value: {e}") from None
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config over the defaults; ``overrides`` are ``a.b=value`` strings (YAML values)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if values is None:  # an empty file is more likely a mistake than a wish for the demo
            raise ValueError(f"config file {path} is empty; write the keys to change (tailfill show-config lists "
                             "them), or leave out --config to run the demo")
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections (data:, classifier:, ...), "
                             f"got a {type(values).__name__}")
    for key, (item, value) in parse_overrides(overrides).items():
        set_dotted(values, key, value, f"override {item!r}")
    return config_from_dict(values)
