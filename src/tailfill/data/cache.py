"""A resized uint8 cache: every image decoded once into one ``.npy`` file, then read row by row."""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..utils.io import atomic_path, read_json, write_json
from .images import ImageError, read_image
from .rows import NpyRows, create_npy

log = logging.getLogger(__name__)


def _key(paths: list[Path], size: int, resize: str = "crop") -> str:
    h = hashlib.sha256((f"v1:{size}" if resize == "crop" else f"v1:{size}:{resize}").encode())  # crop: old keys
    for p in paths:
        st = p.stat() if p.is_file() else None
        h.update(os.fsencode(p) + f"|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:16]


def build_cache(paths: list[Path], size: int, cache_dir: str | Path, workers: int = 2,
                on_bad_image: str = "error", resize: str = "crop") -> tuple[NpyRows, np.ndarray]:
    """Return ``(images, ok)``: the (N, size, size, 3) uint8 images, on disk (:class:`NpyRows`), and which
    images decoded. ``resize`` makes a non-square image square (:func:`~tailfill.data.images.fit_square`).

    The array is stored in ``cache_dir`` under a key of the file list, sizes and mtimes, so a
    changed file rebuilds it. Unreadable images raise ImageError naming the file, or with
    ``on_bad_image="skip"`` are logged and flagged False in ``ok``.
    """
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir)
    key = _key(paths, size, resize)
    arr_path, meta_path = cache_dir / f"images_{size}px_{key}.npy", cache_dir / f"images_{size}px_{key}.json"
    if arr_path.is_file() and meta_path.is_file():
        meta = read_json(meta_path)
        images = NpyRows(arr_path)
        if images.shape == (len(paths), size, size, 3):
            return images, np.asarray(meta["ok"], dtype=bool)
        log.warning("cache %s has the wrong shape; rebuilding", arr_path)

    ok = np.ones(len(paths), dtype=bool)
    errors = []
    row_bytes = size * size * 3
    # each image is written straight to its row of the file: the dataset is never in memory, not even as
    # the dirty pages of a memory map (which would count in the process's resident memory)
    with atomic_path(arr_path) as tmp:
        offset = create_npy(tmp, (len(paths), size, size, 3), np.uint8)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            def load(i):
                try:
                    os.pwrite(fd, np.ascontiguousarray(read_image(paths[i], size, resize)).tobytes(), offset + i * row_bytes)
                except ImageError as e:
                    if on_bad_image != "skip":
                        raise
                    ok[i] = False
                    errors.append(str(e))

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                list(pool.map(load, range(len(paths))))
        finally:
            os.close(fd)
    for e in errors:
        log.warning("skipping: %s", e)
    write_json(meta_path, {"size": size, "n": len(paths), "ok": ok.tolist(), "errors": errors})
    return NpyRows(arr_path), ok
