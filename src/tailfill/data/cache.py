"""A resized uint8 cache: every image decoded once, then epochs read one numpy array."""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..io import atomic_path, read_json, write_json
from .images import ImageError, read_image

log = logging.getLogger(__name__)


def _key(paths: list[Path], size: int) -> str:
    h = hashlib.sha256(f"v1:{size}".encode())
    for p in paths:
        st = p.stat() if p.is_file() else None
        h.update(os.fsencode(p) + f"|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:16]


def build_cache(paths: list[Path], size: int, cache_dir: str | Path, workers: int = 2,
                on_bad_image: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, ok)``: an (N, size, size, 3) uint8 array and which images decoded.

    The array is stored in ``cache_dir`` under a key of the file list, sizes and mtimes, so a
    changed file rebuilds it. Unreadable images raise ImageError naming the file, or with
    ``on_bad_image="skip"`` are logged and flagged False in ``ok``.
    """
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir)
    key = _key(paths, size)
    arr_path, meta_path = cache_dir / f"images_{size}px_{key}.npy", cache_dir / f"images_{size}px_{key}.json"
    if arr_path.is_file() and meta_path.is_file():
        meta = read_json(meta_path)
        images = np.load(arr_path, mmap_mode="r")
        if images.shape == (len(paths), size, size, 3):
            return np.asarray(images), np.asarray(meta["ok"], dtype=bool)
        log.warning("cache %s has the wrong shape; rebuilding", arr_path)

    ok = np.ones(len(paths), dtype=bool)
    errors = []
    # decoded straight into the cache file (memory-mapped), not into RAM: the dataset never has to fit in memory
    with atomic_path(arr_path) as tmp:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))

        def load(i):
            try:
                images[i] = read_image(paths[i], size)
            except ImageError as e:
                if on_bad_image != "skip":
                    raise
                ok[i] = False
                errors.append(str(e))

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(load, range(len(paths))))
        images.flush()
        del images
    for e in errors:
        log.warning("skipping: %s", e)
    write_json(meta_path, {"size": size, "n": len(paths), "ok": ok.tolist(), "errors": errors})
    images = np.load(arr_path, mmap_mode="r")
    return images, ok
