"""Arrays of images (or masks) that stay on disk: rows are read when a batch asks for them.

    images = NpyRows("cache/prepared_images.npy")   # (N, H, W, 3) uint8, nothing read yet
    train = images.subset(split == "train")          # an index array, not a copy
    batch = train[[5, 2, 9]]                         # an ndarray: three rows read with pread
    both = concat_rows(train, synthetic_images)      # real rows on disk + synthetic ones in RAM

Why not a memory map: the pages of a mapped file that an epoch touched count in the process's
resident memory, so one epoch over a mapped 25,000-image cache holds all of it; ``pread`` goes through
the page cache, which the kernel shares and drops, and the process holds only the batch. Every
consumer indexes rows (``x[i]``, ``x[a:b]``, ``x[int_array]``, ``x[bool_mask]``) exactly as it would an
ndarray, and ``np.asarray(x)`` still gives the whole array when something needs it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..utils.io import atomic_path


class _File:
    """One read-only descriptor per file and process, shared by the subsets of an NpyRows."""

    def __init__(self, path: Path):
        self.path, self._fd, self._pid = path, None, None

    def fd(self) -> int:
        if self._pid != os.getpid():  # re-opened after a fork: descriptors are not shared across processes
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


def _read_header(path: Path) -> tuple[tuple, np.dtype, int]:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as e:  # numpy's message does not say which file
            raise ValueError(f"{path}: not a readable .npy array ({e}); delete it to rebuild it") from None
        offset = f.tell()
    if fortran or dtype.hasobject or not shape:
        raise ValueError(f"{path}: expected a C-ordered (N, ...) array of plain values")
    return shape, dtype, offset


class NpyRows:
    """The rows of an (N, ...) ``.npy`` file, or a subset of them, read from disk when indexed."""

    def __init__(self, path: str | Path, index: np.ndarray | None = None):
        self.path = Path(path)
        shape, self.dtype, self._offset = _read_header(self.path)
        self._rows, self._row_shape = shape[0], tuple(shape[1:])
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.index = np.arange(self._rows) if index is None else np.asarray(index, np.int64)
        self._file = _File(self.path)

    def _view(self, index: np.ndarray) -> "NpyRows":
        out = object.__new__(NpyRows)
        out.__dict__.update(self.__dict__, index=index)
        return out

    # ---- the ndarray surface that consumers use
    @property
    def shape(self) -> tuple:
        return (len(self.index),) + self._row_shape

    @property
    def ndim(self) -> int:
        return 1 + len(self._row_shape)

    @property
    def nbytes(self) -> int:
        return len(self.index) * self._row_bytes

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            return _then(self, key)
        if isinstance(key, (int, np.integer)):
            return self._read(self.index[[key]])[0]
        return self._read(self.index[_row_key(key)])

    def __array__(self, dtype=None, copy=None):
        out = self._read(self.index)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"NpyRows({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    # ---- lazy selections
    def subset(self, key) -> "NpyRows":
        """These rows (a boolean mask, index array or slice), still on disk."""
        return self._view(self.index[_row_key(key)])

    @property
    def is_whole_file(self) -> bool:
        return len(self.index) == self._rows and bool(np.all(self.index == np.arange(self._rows)))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of the file, in that order; runs of consecutive rows are one read each."""
        out = np.empty((len(rows),) + self._row_shape, self.dtype)
        if not len(rows):
            return out
        flat = out.reshape(len(rows), -1).view(np.uint8)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        fd = self._file.fd()
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            data = os.pread(fd, int(b - a) * self._row_bytes, self._offset + int(ordered[a]) * self._row_bytes)
            if len(data) != (b - a) * self._row_bytes:
                raise OSError(f"{self.path}: truncated file (rows {ordered[a]}-{ordered[b - 1]})")
            flat[order[a:b]] = np.frombuffer(data, np.uint8).reshape(b - a, -1)
        return out


class ConcatRows:
    """Several row arrays (NpyRows or ndarrays of the same row shape) read as one."""

    def __init__(self, parts: list):
        self.parts = [p for p in parts if len(p)] or parts[:1]
        shapes = {tuple(p.shape[1:]) for p in self.parts}
        if len(shapes) > 1:
            raise ValueError(f"cannot concatenate rows of shapes {sorted(shapes)}")
        self.dtype = self.parts[0].dtype
        self._starts = np.cumsum([0] + [len(p) for p in self.parts])

    @property
    def shape(self) -> tuple:
        return (int(self._starts[-1]),) + tuple(self.parts[0].shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            return _then(self, key)
        if isinstance(key, (int, np.integer)):
            return self[[key]][0]
        rows = np.arange(len(self))[_row_key(key)]
        part = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        for p in np.unique(part):
            at = part == p
            out[at] = self.parts[p][rows[at] - self._starts[p]]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype, copy=False)


def _then(rows, key: tuple) -> np.ndarray:
    """``rows[a, b, ...]``: the rows ``a`` read, then ``b, ...`` applied to them as numpy would."""
    first, rest = key[0], key[1:]
    out = rows[first]
    return out[rest] if isinstance(first, (int, np.integer)) else out[(slice(None),) + rest]


def _row_key(key):
    """A row selector as numpy would take it: a slice, an integer array or a boolean mask."""
    if isinstance(key, slice):
        return key
    key = np.asarray(key)
    if key.dtype != bool and not np.issubdtype(key.dtype, np.integer):
        if key.size:
            raise TypeError(f"rows are indexed by integers or a boolean mask, not {key.dtype}")
        key = key.astype(np.int64)
    return key


def take_rows(array, key):
    """``array[key]`` without copying when the rows live on disk (an NpyRows subset); a copy otherwise."""
    return array.subset(key) if isinstance(array, NpyRows) else array[key]


def concat_rows(a, b):
    """``a`` then ``b``: np.concatenate for two in-memory arrays, a ConcatRows when either is on disk."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.concatenate([a, b])
    return ConcatRows([a, b])


def save_rows(path: str | Path, array, chunk: int = 1024) -> None:
    """Write ``array`` (an ndarray, NpyRows or ConcatRows) as a ``.npy`` file, ``chunk`` rows at a time,
    atomically; a whole-file NpyRows is hard-linked (or copied) instead of read."""
    import shutil

    path = Path(path)
    if isinstance(array, NpyRows) and array.is_whole_file:
        with atomic_path(path) as tmp:
            try:
                tmp.unlink()
                os.link(array.path, tmp)
            except OSError:  # another file system
                shutil.copyfile(array.path, tmp)
        return
    with atomic_path(path) as tmp:
        offset = create_npy(tmp, array.shape, array.dtype)
        with open(tmp, "r+b") as f:
            f.seek(offset)
            for i in range(0, len(array), chunk):
                f.write(np.ascontiguousarray(array[i:i + chunk]).tobytes())


def create_npy(path: str | Path, shape: tuple, dtype) -> int:
    """Write the header of a zero-filled ``.npy`` file of ``shape`` (no data written: a sparse file);
    returns where its data start, for writing rows in place."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                                 "shape": tuple(int(n) for n in shape)})
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return offset
