"""Small I/O helpers shared by every stage: atomic writes and safe checkpoint loading.

Every artefact goes through ``atomic_*`` so that a run killed at any moment leaves either
the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: a shared run must stay readable as the umask says
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` as a whole when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def recover_dir(path: str | os.PathLike) -> None:
    """Finish an ``atomic_dir`` swap that was killed between its two renames."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        os.replace(old, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


TEXT_COLUMNS = {"image": str, "lesion_id": str, "source_image": str, "path": str, "file": str}


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically (no index column).

    ``surrogateescape`` round-trips file names that are not valid UTF-8 (possible on Linux).
    """
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, errors="surrogateescape")


def read_table(path: str | os.PathLike):
    """Read a table written by ``write_csv``: ids and paths stay strings ("007" is not 7)."""
    import pandas as pd

    return pd.read_csv(path, dtype=TEXT_COLUMNS, encoding_errors="surrogateescape")


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict:
    """Load safetensors: plain tensors only, nothing is unpickled."""
    from safetensors.torch import load_file

    return load_file(str(path))


def save_state(path: str | os.PathLike, state: dict) -> None:
    """Save a training state (optimizer, counters, RNG) for ``load_state``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike) -> dict:
    """Load a training state with ``weights_only=True``: tensors and plain containers, never code."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """Join ``relative`` to ``root`` and refuse any result outside ``root`` (``..``, absolute paths, links)."""
    root = Path(root).resolve()
    rel = Path(relative)
    if rel.is_absolute():
        raise ValueError(f"path {relative!r} must be relative to {root}")
    full = (root / rel).resolve()
    if full != root and root not in full.parents:
        raise ValueError(f"path {relative!r} escapes the data root {root}")
    return full
