"""Versioned, pickle-free files: NumPy arrays in an `.npz` plus JSON metadata with a checksum.

Layout of a file of kind `K`: the arrays under their own names, and `__meta__`, a uint8 array
holding UTF-8 JSON `{"format": "uniroute-jax", "kind": K, "version": 1, "checksum": ..., ...}`.
The checksum is a SHA-256 over every array's name, dtype, shape and bytes, so a file that was cut
short, edited or mixed up with another kind fails loudly instead of loading wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "uniroute-jax"
VERSION = 1
_META = "__meta__"


def _checksum(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path: str | os.PathLike, kind: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Writes `arrays` and JSON-serialisable `meta` to `path` (an `.npz` suffix is added if missing).

    The file is written to a temporary name and renamed, so an interrupted save never leaves a
    half-written file under the final name.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        if a.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which cannot be saved without pickle")
    header = {"format": FORMAT, "kind": kind, "version": VERSION, "checksum": _checksum(arrays), **meta}
    blob = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, **{_META: blob})
    os.replace(tmp, path)
    return path


def load_arrays(path: str | os.PathLike, kind: str | tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a file written by `save_arrays`, checking format, kind (or one of several), version and checksum.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file is truncated, corrupt, of another kind or version, or fails its checksum.
    """
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    kind = kinds[0]
    if not path.exists():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a readable {FORMAT} {kind} file (truncated or corrupt): {err}") from None
    if _META not in arrays:
        raise ValueError(f"{path} is not a {FORMAT} file: it has no {_META} entry")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has unreadable metadata: {err}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format {meta.get('format')!r})")
    if meta.get("kind") not in kinds:
        raise ValueError(f"{path} holds a {meta.get('kind')!r}, not a {kind!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has format version {meta.get('version')}; this library reads version {VERSION}")
    if meta.get("checksum") != _checksum(arrays):
        raise ValueError(f"{path} fails its checksum: the file was modified or damaged")
    return arrays, meta
