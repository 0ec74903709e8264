"""k-means in JAX: weighted k-means++ seeding, Lloyd iterations, restarts as a vmap over keys.

The single-restart kernel follows scikit-learn's `KMeans(algorithm="lloyd")`: greedy k-means++
(`2 + log(n_clusters)` local trials), a tolerance scaled by the data's mean per-feature variance,
an early exit when no label changes, empty clusters moved to far points, and a final assignment so
labels match the returned centroids. Weights double as a mask: a zero-weight point is never chosen
as a seed, never moves a centroid and never fills an empty cluster.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation

METRICS = ("euclidean", "cosine")


class KMeansResult(NamedTuple):
    """Output of `kmeans`."""

    centroids: jax.Array  # [n_clusters, dim]
    labels: jax.Array  # [n_points] int32
    inertia: jax.Array  # [] weighted sum of squared distances to the assigned centroid
    n_iter: jax.Array  # [] int32, Lloyd iterations run by the kept restart
    converged: jax.Array  # [] bool, stopped by tolerance or unchanged labels before max_iter


class _LloydState(NamedTuple):
    centroids: jax.Array  # [n_clusters, dim]
    labels: jax.Array  # [n_points]
    shift: jax.Array  # [] squared centroid movement of the last step
    changed: jax.Array  # [] bool, did any label change in the last step
    n_iter: jax.Array  # []


def _sq_distances(x: jax.Array, x_sq: jax.Array, centroids: jax.Array) -> jax.Array:
    """Squared Euclidean distances `[n_points, n_clusters]`, via the matmul expansion."""
    c_sq = jnp.sum(centroids * centroids, axis=-1)
    return jnp.maximum(x_sq[:, None] - 2.0 * x @ centroids.T + c_sq[None, :], 0.0)


def _nearest(x: jax.Array, x_sq: jax.Array, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
    d2 = _sq_distances(x, x_sq, centroids)
    labels = jnp.argmin(d2, axis=-1).astype(jnp.int32)
    return labels, jnp.take_along_axis(d2, labels[:, None], axis=-1)[:, 0]


def _kmeanspp(key: jax.Array, x: jax.Array, x_sq: jax.Array, weights: jax.Array, n_clusters: int) -> jax.Array:
    """Greedy k-means++ seeding; sampling probabilities are `weight * distance^2`."""
    n_trials = 2 + int(math.log(n_clusters))
    key, first_key = jax.random.split(key)
    first = jax.random.categorical(first_key, jnp.log(weights))
    centroids = jnp.zeros((n_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
    closest = jnp.maximum(x_sq - 2.0 * x @ x[first] + x_sq[first], 0.0)

    def body(i, carry):
        centroids, closest, key = carry
        key, sub = jax.random.split(key)
        pot = weights * closest
        # All-zero potential (every valid point already a centroid): fall back to the weights.
        logits = jnp.log(jnp.where(jnp.sum(pot) > 0, pot, weights))
        cand = jax.random.categorical(sub, logits, shape=(n_trials,))
        cand_d2 = jnp.maximum(x_sq[None, :] - 2.0 * x[cand] @ x.T + x_sq[cand][:, None], 0.0)
        cand_closest = jnp.minimum(closest[None, :], cand_d2)
        best = jnp.argmin(jnp.sum(weights[None, :] * cand_closest, axis=1))
        return centroids.at[i].set(x[cand[best]]), cand_closest[best], key

    centroids, _, _ = jax.lax.fori_loop(1, n_clusters, body, (centroids, closest, key))
    return centroids


def _normalize(v: jax.Array) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _m_step(x, weights, labels, min_d2, n_clusters: int, cosine: bool):
    """Weighted means per cluster; empty clusters take the farthest valid points."""
    onehot = jax.nn.one_hot(labels, n_clusters, dtype=x.dtype) * weights[:, None]
    mass = jnp.sum(onehot, axis=0)  # [n_clusters]
    sums = onehot.T @ x  # [n_clusters, dim]
    means = sums / jnp.maximum(mass, 1e-30)[:, None]
    empty = mass <= 0
    # Rank valid points by distance to their centroid; the r-th empty cluster takes the r-th farthest.
    far_score = jnp.where(weights > 0, min_d2, -jnp.inf)
    _, far_idx = jax.lax.top_k(far_score, n_clusters)
    rank = jnp.cumsum(empty) - 1
    relocated = x[far_idx[jnp.clip(rank, 0, n_clusters - 1)]]
    new = jnp.where(empty[:, None], relocated, means)
    return _normalize(new) if cosine else new


def _lloyd_start(key, x, x_sq, weights, *, n_clusters: int, cosine: bool) -> _LloydState:
    init = _kmeanspp(key, x, x_sq, weights, n_clusters)
    if cosine:
        init = _normalize(init)
    labels0, _ = _nearest(x, x_sq, init)
    return _LloydState(init, labels0, jnp.asarray(jnp.inf, x.dtype), jnp.asarray(True), jnp.asarray(0, jnp.int32))


def _lloyd_running(s: _LloydState, tol, max_iter: int):
    return (s.n_iter < max_iter) & (s.shift > tol) & s.changed


def _lloyd_step(s: _LloydState, x, x_sq, weights, *, n_clusters: int, cosine: bool) -> _LloydState:
    labels, min_d2 = _nearest(x, x_sq, s.centroids)
    new = _m_step(x, weights, labels, min_d2, n_clusters, cosine)
    # Padding rows never count as a label change.
    changed = jnp.any((labels != s.labels) & (weights > 0)) | (s.n_iter == 0)
    shift = jnp.sum((new - s.centroids) ** 2)
    return _LloydState(new, labels, shift, changed, s.n_iter + 1)


def _lloyd_finish(s: _LloydState, x, x_sq, weights, tol) -> KMeansResult:
    labels, min_d2 = _nearest(x, x_sq, s.centroids)
    inertia = jnp.sum(weights * min_d2)
    converged = (s.shift <= tol) | ~s.changed
    return KMeansResult(s.centroids, labels, inertia, s.n_iter, converged)


def _kmeans_single(key, x, weights, tol, *, n_clusters: int, max_iter: int, cosine: bool) -> KMeansResult:
    x_sq = jnp.sum(x * x, axis=-1)
    state = _lloyd_start(key, x, x_sq, weights, n_clusters=n_clusters, cosine=cosine)
    step = functools.partial(_lloyd_step, x=x, x_sq=x_sq, weights=weights, n_clusters=n_clusters, cosine=cosine)
    final = jax.lax.while_loop(lambda s: _lloyd_running(s, tol, max_iter), step, state)
    return _lloyd_finish(final, x, x_sq, weights, tol)


# The same restarts in chunks of Lloyd iterations, returning to Python between chunks so that
# Ctrl-C stops a long fit. Each restart runs exactly the iterations `kmeans_kernel` runs.
CHUNK_ITERS = 16


@functools.partial(jax.jit, static_argnames=("n_clusters", "n_init", "cosine"))
def _chunked_start(key, x, weights, *, n_clusters: int, n_init: int, cosine: bool):
    if cosine:
        x = _normalize(x)
    x_sq = jnp.sum(x * x, axis=-1)
    start = functools.partial(_lloyd_start, n_clusters=n_clusters, cosine=cosine)
    states = jax.vmap(start, in_axes=(0, None, None, None))(jax.random.split(key, n_init), x, x_sq, weights)
    return x, x_sq, states


@functools.partial(jax.jit, static_argnames=("n_clusters", "max_iter", "cosine"))
def _lloyd_chunk(states, x, x_sq, weights, tol, stop_at, *, n_clusters: int, max_iter: int, cosine: bool):
    """Advances every restart until it stops or reaches `stop_at` iterations; `(states, any running)`."""

    def one(s):
        step = functools.partial(_lloyd_step, x=x, x_sq=x_sq, weights=weights, n_clusters=n_clusters, cosine=cosine)
        return jax.lax.while_loop(lambda s: _lloyd_running(s, tol, max_iter) & (s.n_iter < stop_at), step, s)

    states = jax.vmap(one)(states)
    return states, jnp.any(jax.vmap(lambda s: _lloyd_running(s, tol, max_iter))(states))


@jax.jit
def _chunked_finish(states, x, x_sq, weights, tol) -> KMeansResult:
    runs = jax.vmap(_lloyd_finish, in_axes=(0, None, None, None, None))(states, x, x_sq, weights, tol)
    best = jnp.argmin(runs.inertia)
    return jax.tree.map(lambda leaf: leaf[best], runs)


def _kmeans_chunked(key, x, weights, tol, *, n_clusters: int, n_init: int, max_iter: int, metric: str) -> KMeansResult:
    cosine = metric == "cosine"
    x, x_sq, states = _chunked_start(key, x, weights, n_clusters=n_clusters, n_init=n_init, cosine=cosine)
    stop_at = 0
    while stop_at < max_iter:
        stop_at = min(stop_at + CHUNK_ITERS, max_iter)
        states, running = _lloyd_chunk(states, x, x_sq, weights, tol, jnp.asarray(stop_at, jnp.int32),
                                       n_clusters=n_clusters, max_iter=max_iter, cosine=cosine)
        if not bool(running):  # waits for the chunk: a pending Ctrl-C is raised here
            break
    return _chunked_finish(states, x, x_sq, weights, tol)


@functools.partial(jax.jit, static_argnames=("n_clusters", "n_init", "max_iter", "metric"))
def kmeans_kernel(
    key: jax.Array,
    x: jax.Array,
    weights: jax.Array,
    tol: jax.Array,
    *,
    n_clusters: int,
    n_init: int,
    max_iter: int,
    metric: str,
) -> KMeansResult:
    """Unchecked jitted k-means: `n_init` restarts as a vmap over keys, lowest inertia kept.

    Args:
      key: PRNG key.
      x: [n_points, dim] float data (rows L2-normalised by the caller when metric is cosine).
      weights: [n_points] non-negative weights; zero marks padding.
      tol: [] absolute tolerance on the squared centroid shift.
    """
    cosine = metric == "cosine"
    if cosine:
        x = _normalize(x)
    single = functools.partial(_kmeans_single, n_clusters=n_clusters, max_iter=max_iter, cosine=cosine)
    runs = jax.vmap(single, in_axes=(0, None, None, None))(jax.random.split(key, n_init), x, weights, tol)
    best = jnp.argmin(runs.inertia)
    return jax.tree.map(lambda leaf: leaf[best], runs)


def kmeans(
    x: ArrayLike,
    n_clusters: int,
    key: jax.Array | int = 0,
    *,
    weights: ArrayLike | None = None,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
    metric: str = "euclidean",
) -> KMeansResult:
    """Weighted k-means with k-means++ seeding and `n_init` restarts.

    Args:
      x: [n_points, dim] data.
      n_clusters: number of clusters K (a Python int; at most the number of weighted points).
      key: PRNG key, or an int seed.
      weights: optional [n_points] non-negative weights; zero-weight rows are ignored (padding).
      n_init: restarts, run in parallel as a vmap; the lowest inertia wins.
      max_iter: Lloyd iterations per restart.
      tol: relative tolerance; as in scikit-learn it is multiplied by the mean per-feature variance
        of `x` and compared with the total squared centroid shift.
      metric: "euclidean", or "cosine" (rows and centroids are L2-normalised; nearest centroid by
        cosine similarity; inertia is then the squared chordal distance `2 - 2 cos`).

    Returns:
      A `KMeansResult`.

    Raises:
      ValueError / TypeError naming the offending argument.

    Example:
      >>> res = kmeans(np.random.default_rng(0).normal(size=(100, 2)), 3, key=0)
      >>> res.centroids.shape
      (3, 2)
    """
    validation.choice(metric, "metric", METRICS)
    x = validation.float_array(x, "x", ndim=2)
    n_clusters = validation.positive_int(n_clusters, "n_clusters")
    n_init = validation.positive_int(n_init, "n_init")
    max_iter = validation.positive_int(max_iter, "max_iter")
    tol = validation.nonnegative_float(tol, "tol")
    if weights is None:
        w = np.ones(x.shape[0], np.float32)
    else:
        w = validation.nonnegative(validation.float_array(weights, "weights", shape=(x.shape[0],)), "weights")
    n_valid = int(np.count_nonzero(w))
    if n_clusters > n_valid:
        raise ValueError(f"n_clusters must be <= the number of points with positive weight ({n_valid}), got {n_clusters}")
    if metric == "cosine" and not np.all(np.any(x[w > 0] != 0, axis=1)):
        raise ValueError("x has an all-zero row, which has no direction under metric='cosine'")
    # Scale by powers of two (exact: directions and ratios do not change) so that squared norms
    # neither overflow (|x| ~ 1e20) nor underflow (|x| ~ 1e-30) in float32.
    scale = 0
    if metric == "cosine":
        _, exp = np.frexp(np.max(np.abs(x), axis=1))
        x = np.ldexp(x, -exp[:, None]).astype(np.float32)
    else:
        peak = float(np.max(np.abs(x[w > 0])))
        if peak > 2.0**40 or 0 < peak < 2.0**-40:
            _, scale = np.frexp(peak)
            x = np.ldexp(x, -scale).astype(np.float32)
    xv = x[w > 0]
    if metric == "cosine":
        xv = xv / np.linalg.norm(xv, axis=1, keepdims=True)
    # scikit-learn's scaling: tol * mean of the per-feature variances.
    abs_tol = np.float32(tol * np.mean(np.var(xv, axis=0)))
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    res = _kmeans_chunked(key, jnp.asarray(x), jnp.asarray(w), jnp.asarray(abs_tol), n_clusters=n_clusters,
                          n_init=n_init, max_iter=max_iter, metric=metric)
    if scale:
        res = res._replace(centroids=jnp.ldexp(res.centroids, scale), inertia=jnp.ldexp(res.inertia, 2 * scale))
    return res


@functools.partial(jax.jit, static_argnames=("metric",))
def assign_kernel(x: jax.Array, centroids: jax.Array, *, metric: str = "euclidean") -> jax.Array:
    """Unchecked nearest-centroid labels `[n_points]` int32 for `x [n_points, dim]`."""
    if metric == "cosine":
        # Centroids are unit vectors, so the largest dot product is the smallest angle; scaling a
        # row of x does not change its argmax, so x needs no normalising.
        return jnp.argmax(x @ centroids.T, axis=-1).astype(jnp.int32)
    # |x|^2 is the same for every centroid of a row: drop it from the argmin.
    c_sq = jnp.sum(centroids * centroids, axis=-1)
    return jnp.argmin(c_sq[None, :] - 2.0 * x @ centroids.T, axis=-1).astype(jnp.int32)


def assign_clusters(x: ArrayLike, centroids: ArrayLike, *, metric: str = "euclidean") -> jax.Array:
    """Nearest-centroid cluster of each row of `x`.

    Args:
      x: [n_points, dim] embeddings.
      centroids: [n_clusters, dim] centroids (unit rows when metric is cosine).
      metric: "euclidean" or "cosine".

    Returns:
      [n_points] int32 cluster labels.
    """
    validation.choice(metric, "metric", METRICS)
    c = validation.float_array(centroids, "centroids", ndim=2)
    x = validation.float_array(x, "x", ndim=2)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"x has shape {x.shape} but centroids expect dimension {c.shape[1]}")
    return assign_kernel(jnp.asarray(x), jnp.asarray(c), metric=metric)
