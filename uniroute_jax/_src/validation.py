"""Input checks shared by every public entry point.

Checks run on the host, outside `jit`, and raise `ValueError`/`TypeError` naming the argument, what
was expected and what was given. They return NumPy arrays so callers never mutate user input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np



def _shape_str(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def float_array(
    x,
    name: str,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    allow_nan: bool = False,
    dtype=np.float32,
    copy: bool = True,
) -> np.ndarray:
    """Returns `x` as a finite float array, or raises naming `name`.

    Args:
      x: array-like.
      name: the argument's name, used in messages.
      ndim: required number of dimensions.
      shape: required shape; `None` entries match any size.
      allow_nan: let NaN through (missing labels); infinities are still rejected.
      dtype: the float dtype of the returned array.
      copy: return a copy even when `x` already has `dtype` (False for a caller that only reads
        `x` before it returns, e.g. to put it on the device).
    """
    if x is None:
        raise TypeError(f"{name} is required but got None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}")
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and arr.ndim != ndim:
        want = f"shape {_shape_str(shape)}" if shape is not None else f"{ndim} dimensions"
        raise ValueError(f"{name} must have {want}, got shape {arr.shape}")
    if shape is not None:
        for got, want in zip(arr.shape, shape):
            if want is not None and got != want:
                raise ValueError(f"{name} must have shape {_shape_str(shape)}, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and np.finfo(arr.dtype).max > np.finfo(dtype).max:
        # Finite values past the target dtype's range would turn into inf: say so, not "infinite".
        big = np.isfinite(arr) & (np.abs(arr) > np.finfo(dtype).max)
        if big.any():
            idx = tuple(int(i) for i in np.argwhere(big)[0])
            raise ValueError(f"{name} has {int(big.sum())} values too large for {np.dtype(dtype).name} "
                             f"(|x| > {np.finfo(dtype).max:.3g}; first at index {idx}, value {arr[idx]:g})")
    arr = arr.astype(dtype, copy=copy)
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "infinite" if allow_nan else "NaN or infinite"
        raise ValueError(f"{name} must be finite, but {int(bad.sum())} entries are {what} (first at index {idx})")
    return arr


def int_array(x, name: str, *, shape: Sequence[int | None] | None = None, low: int = 0,
              high: int | None = None) -> np.ndarray:
    """Returns `x` as an int32 array with values in `[low, high)`, or raises naming `name`."""
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        if np.issubdtype(arr.dtype, np.floating) and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if shape is not None:
        if arr.ndim != len(shape) or any(w is not None and g != w for g, w in zip(arr.shape, shape)):
            raise ValueError(f"{name} must have shape {_shape_str(shape)}, got shape {arr.shape}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < low or (high is not None and hi >= high):
            rng = f"[{low}, {high})" if high is not None else f">= {low}"
            raise ValueError(f"{name} values must be in {rng}, got values from {lo} to {hi}")
    return arr.astype(np.int32)


def bool_array(x, name: str, *, shape: Sequence[int | None]) -> np.ndarray:
    """Returns `x` as a boolean array of the given shape, or raises naming `name`."""
    arr = np.asarray(x)
    if arr.dtype != np.bool_:
        if np.issubdtype(arr.dtype, np.number) and np.all(np.isin(arr, (0, 1))):
            arr = arr.astype(bool)
        else:
            raise TypeError(f"{name} must be a boolean mask, got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(w is not None and g != w for g, w in zip(arr.shape, shape)):
        raise ValueError(f"{name} must have shape {_shape_str(shape)}, got shape {arr.shape}")
    return arr.copy()


def unit_interval(arr: np.ndarray, name: str, *, where: np.ndarray | None = None) -> np.ndarray:
    """Raises unless every (unmasked, non-NaN) entry of `arr` lies in [0, 1]."""
    vals = arr if where is None else arr[where]
    vals = vals[~np.isnan(vals)]
    if vals.size and (vals.min() < 0 or vals.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1], got values from {vals.min():g} to {vals.max():g}")
    return arr


def nonnegative(arr: np.ndarray, name: str) -> np.ndarray:
    """Raises unless every entry of `arr` is >= 0."""
    if arr.size and arr.min() < 0:
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise ValueError(f"{name} must be >= 0, got {arr[idx]:g} at index {idx}")
    return arr


def positive_int(n, name: str, *, minimum: int = 1) -> int:
    """Returns `n` as a Python int >= `minimum`, or raises naming `name`."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__} {n!r}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return int(n)


def nonnegative_float(x, name: str) -> float:
    """Returns `x` as a finite float >= 0, or raises naming `name`."""
    try:
        val = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(x).__name__} {x!r}") from None
    if not np.isfinite(val) or val < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {val}")
    return val


def choice(value: str, name: str, options: Sequence[str]) -> str:
    """Returns `value` if it is one of `options`, or raises naming `name`."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def embedding_rows(x: np.ndarray, name: str, *, flag: bool = False) -> np.ndarray:
    """Checks each row of embeddings `x [n, dim]` for a direction: finite and not all zero.

    An all-zero row has no nearest centroid under the cosine metric (every dot product ties, so it
    would silently land in cluster 0); a non-finite row has none under any metric.

    Args:
      x: [n, dim] array.
      name: the argument's name, used in messages.
      flag: return the mask instead of raising.

    Returns:
      [n] bool, True for a usable row (all True unless `flag`).
    """
    x = np.asarray(x)
    finite = np.all(np.isfinite(x), axis=1) if x.size else np.ones(x.shape[0], bool)
    nonzero = np.any(x != 0, axis=1) if x.shape[1:] != (0,) else np.zeros(x.shape[0], bool)
    ok = finite & nonzero
    if flag or ok.all():
        return ok
    bad = np.flatnonzero(~ok)
    what = "all-zero" if finite[bad[0]] else "non-finite"
    raise ValueError(f"{name} has {bad.size} rows that are all zero or not finite (first: row {int(bad[0])}, "
                     f"{what}); such a prompt has no nearest centroid: drop it or embed it again")


def unit_rows(c: np.ndarray, name: str, *, atol: float = 1e-3) -> np.ndarray:
    """Raises unless every row of `c [k, dim]` has L2 norm 1 within `atol` (cosine centroids)."""
    norms = np.linalg.norm(np.asarray(c, np.float64), axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > atol)
    if bad.size:
        raise ValueError(f"{name} must have unit rows under metric='cosine', but row {int(bad[0])} has norm "
                         f"{norms[bad[0]]:.6g} ({bad.size} rows off)")
    return c


def model_name(name, arg: str) -> str:
    """Returns `name` if it is a usable model name: a non-blank string without surrounding spaces."""
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be a string, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"{arg} must be a non-blank name, got {name!r}")
    if name != name.strip():
        raise ValueError(f"{arg} must not start or end with spaces, got {name!r}")
    return name
