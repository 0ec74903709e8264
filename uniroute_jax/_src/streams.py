"""Request streams for replaying online routing: which prompt arrives at each step.

Online parts (budget pacing, learning from outcomes) are measured by replaying a stream of
prompts from a full-information dataset, where every model's outcome on every prompt is known.
A stream is an `[n_requests]` int array of prompt indices, drawn with replacement from a pool of
prompts (a test split) according to how the traffic's mix moves:

- `stationary`: every request uniform over the prompts (shuffled traffic);
- `drifting`: the task mix moves smoothly over the horizon: task `j` (of `J`, in a random order)
  peaks at `j / (J - 1)` of the horizon, with Gaussian weights of width `width`;
- `abrupt`: stationary, except a block (`start` to `start + length` of the horizon) drawn from one
  task only;
- `bursts`: stationary, with `n_bursts` short blocks, each from one random task.

Tasks are any grouping of the prompts (a benchmark name, a category, a coarse cluster). Every
function takes an explicit `numpy.random.Generator`, so the same seed gives the same stream to
every method compared on it.
"""

from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation

KINDS = ("stationary", "drifting", "abrupt", "bursts")


def _tasks(tasks: ArrayLike) -> tuple[np.ndarray, list[np.ndarray]]:
    t = np.asarray(tasks)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"tasks must be a non-empty [n_prompts] array, got shape {t.shape}")
    names, codes = np.unique(t, return_inverse=True)
    return names, [np.flatnonzero(codes == j) for j in range(names.size)]


def _check(n_requests, rng) -> int:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return validation.positive_int(n_requests, "n_requests")


def stationary(n_prompts: int, n_requests: int, rng: np.random.Generator) -> np.ndarray:
    """[n_requests] prompt indices, each uniform over `range(n_prompts)`."""
    n_requests = _check(n_requests, rng)
    return rng.integers(0, validation.positive_int(n_prompts, "n_prompts"), n_requests)


def drifting(tasks: ArrayLike, n_requests: int, rng: np.random.Generator, *, width: float = 0.25) -> np.ndarray:
    """[n_requests] prompt indices whose task mix moves smoothly from one task to the next.

    At progress `s` in [0, 1], task `j` (of `J`, in a random order) has weight
    `exp(-(s - j / (J - 1))^2 / (2 width^2))`; the prompt is uniform within its task.
    """
    n_requests = _check(n_requests, rng)
    width = validation.nonnegative_float(width, "width")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    _, members = _tasks(tasks)
    order = rng.permutation(len(members))
    peaks = np.linspace(0.0, 1.0, len(members)) if len(members) > 1 else np.zeros(1)
    s = (np.arange(n_requests) + 0.5) / n_requests
    w = np.exp(-0.5 * ((s[:, None] - peaks[None, :]) / width) ** 2)  # [n_requests, J]
    w /= w.sum(axis=1, keepdims=True)
    slot = (rng.random(n_requests)[:, None] > np.cumsum(w, axis=1)).sum(axis=1)
    slot = np.minimum(slot, len(members) - 1)
    task = order[slot]
    return np.array([members[j][rng.integers(members[j].size)] for j in task], np.int64)


def _block(tasks, n_requests, rng, blocks) -> np.ndarray:
    _, members = _tasks(tasks)
    out = rng.integers(0, np.asarray(tasks).shape[0], n_requests)
    for start, stop in blocks:
        j = rng.integers(len(members))
        out[start:stop] = members[j][rng.integers(0, members[j].size, stop - start)]
    return out


def abrupt(tasks: ArrayLike, n_requests: int, rng: np.random.Generator, *, start: float = 0.4,
           length: float = 0.2) -> np.ndarray:
    """[n_requests] stationary prompt indices with one block (fractions of the horizon) from one task."""
    n_requests = _check(n_requests, rng)
    start, length = validation.nonnegative_float(start, "start"), validation.nonnegative_float(length, "length")
    if start + length > 1.0:
        raise ValueError(f"start + length must be <= 1 (fractions of the horizon), got {start} + {length}")
    return _block(tasks, n_requests, rng, [(int(start * n_requests), int((start + length) * n_requests))])


def bursts(tasks: ArrayLike, n_requests: int, rng: np.random.Generator, *, n_bursts: int = 5,
           length: float = 0.03) -> np.ndarray:
    """[n_requests] stationary prompt indices with `n_bursts` blocks of `length`, each from one random task."""
    n_requests = _check(n_requests, rng)
    n_bursts = validation.positive_int(n_bursts, "n_bursts")
    length = validation.nonnegative_float(length, "length")
    size = max(int(length * n_requests), 1)
    if n_bursts * size > n_requests:
        raise ValueError(f"{n_bursts} bursts of {size} requests do not fit in {n_requests} requests")
    # Bursts at distinct, non-overlapping slots.
    slots = np.sort(rng.choice(n_requests // size, n_bursts, replace=False))
    return _block(tasks, n_requests, rng, [(s * size, (s + 1) * size) for s in slots])


def make_stream(kind: str, tasks: ArrayLike, n_requests: int, rng: np.random.Generator) -> np.ndarray:
    """A stream of one of `KINDS` with its default shape, over prompts grouped by `tasks`."""
    kind = validation.choice(kind, "kind", KINDS)
    if kind == "stationary":
        return stationary(np.asarray(tasks).shape[0], n_requests, rng)
    return {"drifting": drifting, "abrupt": abrupt, "bursts": bursts}[kind](tasks, n_requests, rng)
