"""Versioned, pickle-free files: NumPy arrays in an `.npz` plus JSON metadata with a checksum.

Layout of a file of kind `K`: the arrays under their own names, and `__meta__`, a uint8 array
holding UTF-8 JSON `{"format": "uniroute-jax", "kind": K, "version": 2, "checksum": ..., ...}`.
The checksum is a SHA-256 over every array's name, dtype, shape and bytes and over the metadata
itself (names, metric, alpha, ...), so a file that was cut short, edited or mixed up with another
kind fails loudly instead of loading wrong numbers or routing to the wrong names. Version-1 files
(checksum over the arrays only) still load, checked by their own rule.

Every file is written to a unique temporary file in the target folder, flushed to disk and renamed
over the target, so a reader sees the old file or the new one, never a mix, and two writers never
share a temporary file. `write_atomic` does this for any file; `filelock.locked` orders
read-change-write cycles. A symlink is followed to the file it names (`real_path`), a read-only
file is never replaced, and the temporary files of writers killed mid-save are removed by a later save.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

FORMAT = "uniroute-jax"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_META = "__meta__"
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _hash_arrays(h, arrays: Mapping[str, np.ndarray]) -> None:
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())


def _canonical(meta: Mapping[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode()


def _checksum(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of the arrays and (version 2) of the metadata other than the checksum itself.

    `meta=None` is the version-1 rule: arrays only.
    """
    h = hashlib.sha256()
    _hash_arrays(h, arrays)
    if meta is not None:
        h.update(b"|meta|")
        h.update(_canonical(meta))
    return h.hexdigest()


def fingerprint(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> str:
    """A stable identity of an object made of `arrays` and JSON `meta`: a hex SHA-256.

    Two objects get the same fingerprint exactly when their arrays (names, dtypes, shapes, bytes)
    and metadata are equal, so storing a router's fingerprint in a pool ties the pool to it.
    """
    return _checksum({k: np.asarray(v) for k, v in arrays.items()}, dict(meta))


def check_fingerprint(stored: str | None, expected: str, *, what: str, other: str) -> None:
    """Raises `ValueError` unless `stored` (read from `what`) equals `expected` (that of `other`).

    A missing `stored` (a file written before fingerprints were kept) passes.
    """
    if stored is not None and stored != expected:
        raise ValueError(f"{what} was built with another router than {other} (fingerprint "
                         f"{stored[:12]} != {expected[:12]}): represent the models with this router")


def npz_path(path: str | os.PathLike) -> Path:
    """`path` with an `.npz` suffix added if missing (the name `save_arrays` writes to)."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def real_path(path: str | os.PathLike) -> Path:
    """`path` with its symlinks resolved, also a link to a file not written yet.

    A replacement renames a temporary file over its target, and a rename over a symlink would
    replace the link, not the file it names: every writer and its lock work on this path instead.
    """
    return Path(os.path.realpath(path))


def check_writable(path: str | os.PathLike) -> None:
    """Raises `PermissionError` if `path` exists and is read-only.

    A rename needs write permission on the folder only, so without this check a file its owner
    made read-only (chmod 0444) would be replaced all the same. Every save goes through here.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    # The mode bits, not only os.access: root may write to any file, but a 0444 file still means "keep".
    if not st.st_mode & 0o222 or not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is read-only: make it writable or write to another file")


STALE_AFTER_S = 86400.0
"""A temporary file untouched this long is a leftover whoever wrote it: no save takes a day."""
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _temp_prefix(path: Path) -> str:
    # The writer's pid and host in the name tell a later save whether the writer still runs.
    return f".{path.name}.{os.getpid()}-{_HOST}."


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would end the process: age decides there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it runs, as another user
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Removes the temporary files of `path` that no running writer holds.

    A writer killed mid-save (kill -9, power cut) cannot remove its own. A temporary file is
    stale when its writer, a process of this host, no longer runs, or when it is older than
    `STALE_AFTER_S` (a reused pid, a writer on another host sharing the folder, or a name
    written before the pid was kept in it). Other files are never touched.
    """
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)-([A-Za-z0-9-]*)\.)?[^.]+\.tmp")
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            found = pattern.fullmatch(entry.name)
            if found is None:
                continue
            pid, host = found.groups()
            with contextlib.suppress(OSError):
                gone = pid is not None and host == _HOST and not _running(int(pid))
                if gone or now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S:
                    os.unlink(entry.path)


def _new_file_mode(target: Path) -> int:
    # Keep the permissions of the file being replaced; a new file gets the usual 0o666 & ~umask.
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def write_atomic(path: str | os.PathLike, mode: str = "wb", **open_kw) -> Iterator[IO]:
    """Opens a unique temporary file next to `path`; on success it is synced and renamed to `path`.

    On any error (or Ctrl-C) the temporary file is removed and `path` is left as it was. The
    replaced file's permission bits are kept. A symlink `path` stays a link: the file it names is
    replaced (`real_path`). A read-only `path` is refused (`check_writable`), and temporary files
    of `path` left by killed writers are removed first.

    Example:
      >>> with write_atomic("out.csv", "w", newline="") as f:   # doctest: +SKIP
      ...     f.write("a,b\\n")
    """
    path = real_path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_arrays(path: str | os.PathLike, kind: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Writes `arrays` and JSON-serialisable `meta` to `path` (an `.npz` suffix is added if missing).

    The file is written to a unique temporary file and renamed (see `write_atomic`), so an
    interrupted or concurrent save never leaves a half-written file under the final name.
    """
    path = npz_path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        if a.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which cannot be saved without pickle")
    header = {"format": FORMAT, "kind": kind, "version": VERSION, **meta}
    header["checksum"] = _checksum(arrays, header)
    blob = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    with write_atomic(path) as f:
        np.savez(f, **arrays, **{_META: blob})
    return path


def _resolve_existing(path: Path, kind: str) -> Path:
    if path.is_file():
        return path
    if path.suffix != ".npz" and npz_path(path).is_file():
        return npz_path(path)  # saved as `name`, written as `name.npz`
    if path.exists():
        raise ValueError(f"{path} is not a file")
    raise FileNotFoundError(f"no {kind} file at {path}")


def load_arrays(path: str | os.PathLike, kind: str | tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a file written by `save_arrays`, checking format, kind (or one of several), version and checksum.

    A `path` without `.npz` also finds the `path.npz` that `save_arrays` wrote.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file is truncated, corrupt, of another kind or version, or fails its checksum.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    kind = kinds[0]
    path = _resolve_existing(Path(path), kind)
    with open(path, "rb") as f:
        magic = f.read(len(_NPY_MAGIC))
    if magic.startswith(_NPY_MAGIC):
        raise ValueError(f"{path} is a bare NumPy array (.npy), not a {FORMAT} {kind} file")
    if not magic.startswith(_ZIP_MAGIC):
        raise ValueError(f"{path} is not a readable {FORMAT} {kind} file (not an .npz archive: truncated or "
                         "corrupt, or another kind of file)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as err:  # zipfile and np.load raise many types on damaged bytes; all mean the same
        if isinstance(err, MemoryError):
            raise
        raise ValueError(f"{path} is not a readable {FORMAT} {kind} file (truncated or corrupt): {err}") from None
    if _META not in arrays:
        raise ValueError(f"{path} is not a {FORMAT} file: it has no {_META} entry")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path} has unreadable metadata: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has unreadable metadata: a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format {meta.get('format')!r})")
    if meta.get("kind") not in kinds:
        raise ValueError(f"{path} holds a {meta.get('kind')!r}, not a {kind!r}")
    version = meta.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ValueError(f"{path} has format version {version!r}; this library reads versions "
                         f"{list(READABLE_VERSIONS)}")
    expected = _checksum(arrays, meta if version >= 2 else None)
    if meta.get("checksum") != expected:
        raise ValueError(f"{path} fails its checksum: the file was modified or damaged")
    return arrays, meta
