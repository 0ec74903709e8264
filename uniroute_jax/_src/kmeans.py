"""k-means in JAX: weighted k-means++ seeding, Lloyd iterations, restarts as a vmap over keys.

The single-restart kernel follows scikit-learn's `KMeans(algorithm="lloyd")`: greedy k-means++
(`2 + log(n_clusters)` local trials), a tolerance scaled by the data's mean per-feature variance,
an early exit when no label changes, empty clusters moved to far points, and a final assignment so
labels match the returned centroids. Weights double as a mask: a zero-weight point is never chosen
as a seed, never moves a centroid and never fills an empty cluster.

Built for request logs of a million prompts: the assignment runs over blocks of ASSIGN_BLOCK
points and the update is a scatter-add (no `[n, K]` array), seeds are drawn by O(n) inverse-CDF
sampling, and `kmeans` returns to Python between chunks of work (progress, Ctrl-C).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import reductions, validation

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


# Points per block of the assignment step: bounds its `[n_clusters, block]` distances (64 MiB at
# K = 1,000) so that a 1M-point fit never holds an `[n_points, n_clusters]` matrix.
ASSIGN_BLOCK = 16384


def _nearest_block(x: jax.Array, x_sq: jax.Array, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
    c_sq = jnp.sum(centroids * centroids, axis=-1)
    # Clusters first: the argmin then walks contiguous rows (see `reductions.argmin_leading`).
    d2 = c_sq[:, None] - 2.0 * centroids @ x.T + x_sq[None, :]  # [n_clusters, n_points]
    min_d2, labels = reductions.argmin_leading(d2)
    return labels, jnp.maximum(min_d2, 0.0)


def _scan_blocks(block, carry, *arrays):
    """`block(carry, *rows) -> (carry, per_point)` over consecutive blocks of ASSIGN_BLOCK rows of
    `arrays` (each `[n_points, ...]`), then the remainder.

    Returns the last carry and the per-point outputs joined along the points (a pytree, or None).
    The blocks are dynamic slices of the arrays, read in place: no padded or reshaped copy.
    """
    n = arrays[0].shape[0]
    n_full = n // ASSIGN_BLOCK if n > ASSIGN_BLOCK else 0
    if n_full == 0:
        return block(carry, *arrays)

    def body(c, i):
        return block(c, *(jax.lax.dynamic_slice_in_dim(a, i * ASSIGN_BLOCK, ASSIGN_BLOCK) for a in arrays))

    carry, out = jax.lax.scan(body, carry, jnp.arange(n_full))
    out = jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), out)
    done = n_full * ASSIGN_BLOCK
    if done < n:
        carry, tail = block(carry, *(a[done:] for a in arrays))
        out = jax.tree.map(lambda o, t: jnp.concatenate([o, t]), out, tail)
    return carry, out


def _nearest(x: jax.Array, x_sq: jax.Array, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centroid `[n_points]` int32 and its squared distance `[n_points]`, in blocks of points."""
    block = lambda carry, xb, sqb: (carry, _nearest_block(xb, sqb, centroids))
    return _scan_blocks(block, (), x, x_sq)[1]


def _nearest_and_sums(x, x_sq, weights, centroids):
    """One pass over the points: nearest centroid and squared distance `[n_points]`, and the
    weighted sums `[n_clusters, dim]` and masses `[n_clusters]` of the points of each cluster."""
    n_clusters = centroids.shape[0]

    def block(carry, xb, sqb, wb):
        labels, min_d2 = _nearest_block(xb, sqb, centroids)
        # A scatter-add, not a one-hot matmul: O(block * dim) whatever K, and no [n, K] matrix.
        sums = carry[0] + jax.ops.segment_sum(xb * wb[:, None], labels, n_clusters)
        return (sums, carry[1] + jax.ops.segment_sum(wb, labels, n_clusters)), (labels, min_d2)

    zeros = (jnp.zeros((n_clusters, x.shape[1]), x.dtype), jnp.zeros((n_clusters,), x.dtype))
    (sums, mass), (labels, min_d2) = _scan_blocks(block, zeros, x, x_sq, weights)
    return labels, min_d2, sums, mass


SAMPLE_BLOCK = 1024


def _sample(key: jax.Array, p: jax.Array, n_samples: int) -> jax.Array:
    """`n_samples` indices drawn with probability proportional to `p [n] >= 0` (sum > 0), int32.

    Inverse-CDF sampling in two levels, a block by its mass and then a point within the block:
    O(n) work and float32 sums of at most SAMPLE_BLOCK terms, where `jax.random.categorical`
    draws a Gumbel per point and sample (150 ms per k-means++ seed at 1M points on one core).
    """
    n = p.shape[0]
    n_blocks = -(-n // SAMPLE_BLOCK)
    blocks = jnp.pad(p, (0, n_blocks * SAMPLE_BLOCK - n)).reshape(n_blocks, SAMPLE_BLOCK)
    block_cdf = jnp.cumsum(jnp.sum(blocks, axis=1))
    key_block, key_point = jax.random.split(key)

    def below_total(k, total):
        # Strictly below the total, so `side="right"` never lands past the last point with mass.
        return jnp.minimum(jax.random.uniform(k, total.shape, total.dtype) * total, jnp.nextafter(total, 0))

    u = below_total(key_block, jnp.full((n_samples,), block_cdf[-1]))
    block = jnp.searchsorted(block_cdf, u, side="right").astype(jnp.int32)
    point_cdf = jnp.cumsum(blocks[block], axis=1)  # [n_samples, SAMPLE_BLOCK]
    v = below_total(key_point, point_cdf[:, -1])
    point = jax.vmap(lambda cdf, value: jnp.searchsorted(cdf, value, side="right"))(point_cdf, v)
    return block * SAMPLE_BLOCK + point.astype(jnp.int32)


class _SeedState(NamedTuple):
    centroids: jax.Array  # [n_clusters, dim], rows from `filled` on still zero
    closest: jax.Array  # [n_points] squared distance to the nearest chosen seed
    key: jax.Array


def _seed_first(key, x, x_sq, weights, n_clusters: int) -> _SeedState:
    key, first_key = jax.random.split(key)
    first = _sample(first_key, weights, 1)[0]
    centroids = jnp.zeros((n_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
    closest = jnp.maximum(x_sq - 2.0 * x @ x[first] + x_sq[first], 0.0)
    return _SeedState(centroids, closest, key)


def _seed_steps(s: _SeedState, x, x_sq, weights, start, stop) -> _SeedState:
    """Greedy k-means++ seeds `start .. stop - 1`; sampling probabilities are `weight * distance^2`."""
    n_trials = 2 + int(math.log(s.centroids.shape[0]))

    def body(i, carry):
        centroids, closest, key = carry
        key, sub = jax.random.split(key)
        pot = weights * closest
        # All-zero potential (every valid point already a centroid): fall back to the weights.
        cand = _sample(sub, jnp.where(jnp.sum(pot) > 0, pot, weights), n_trials)
        cand_d2 = jnp.maximum(x_sq[None, :] - 2.0 * x[cand] @ x.T + x_sq[cand][:, None], 0.0)
        cand_closest = jnp.minimum(closest[None, :], cand_d2)
        best = jnp.argmin(jnp.sum(weights[None, :] * cand_closest, axis=1))
        return _SeedState(centroids.at[i].set(x[cand[best]]), cand_closest[best], key)

    return jax.lax.fori_loop(start, stop, body, s)


def _kmeanspp(key: jax.Array, x: jax.Array, x_sq: jax.Array, weights: jax.Array, n_clusters: int) -> jax.Array:
    """Greedy k-means++ seeding (scikit-learn's: `2 + log K` candidates per seed)."""
    return _seed_steps(_seed_first(key, x, x_sq, weights, n_clusters), x, x_sq, weights, 1, n_clusters).centroids


def _normalize(v: jax.Array) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _m_step(x, weights, sums, mass, min_d2, n_clusters: int, cosine: bool):
    """Weighted means per cluster; empty clusters take the farthest valid points."""
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
    return _lloyd_init(_kmeanspp(key, x, x_sq, weights, n_clusters), x, x_sq, cosine=cosine)


def _lloyd_init(init, x, x_sq, *, cosine: bool) -> _LloydState:
    if cosine:
        init = _normalize(init)
    labels0, _ = _nearest(x, x_sq, init)
    return _LloydState(init, labels0, jnp.asarray(jnp.inf, x.dtype), jnp.asarray(True), jnp.asarray(0, jnp.int32))


def _lloyd_running(s: _LloydState, tol, max_iter: int):
    return (s.n_iter < max_iter) & (s.shift > tol) & s.changed


def _lloyd_step(s: _LloydState, x, x_sq, weights, *, n_clusters: int, cosine: bool) -> _LloydState:
    labels, min_d2, sums, mass = _nearest_and_sums(x, x_sq, weights, s.centroids)
    new = _m_step(x, weights, sums, mass, min_d2, n_clusters, cosine)
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


# The same restarts in chunks of seeds and of Lloyd iterations, returning to Python between chunks
# so that a long fit reports progress and Ctrl-C stops it. Each restart runs exactly the seeding
# and the iterations `kmeans_kernel` runs. A chunk holds at most CHUNK_ITERS iterations and about
# CHUNK_WORK multiply-adds (a second or two on one CPU core).
CHUNK_ITERS = 16
CHUNK_WORK = 4e10


@functools.partial(jax.jit, static_argnames=("n_clusters", "n_init"))
def _chunked_start(key, x, weights, *, n_clusters: int, n_init: int):
    x_sq = jnp.sum(x * x, axis=-1)
    first = functools.partial(_seed_first, n_clusters=n_clusters)
    seeds = jax.vmap(first, in_axes=(0, None, None, None))(jax.random.split(key, n_init), x, x_sq, weights)
    return x_sq, seeds


@functools.partial(jax.jit, static_argnames=("size",))
def _init_sample(key, x, weights, *, size: int):
    """`size` distinct points with positive weight, uniformly at random (Gumbel top-k), and their weights."""
    score = jax.random.gumbel(key, weights.shape, x.dtype) + jnp.log(weights > 0)
    _, idx = jax.lax.top_k(score, size)
    return x[idx], weights[idx]


_squared_norms = jax.jit(lambda x: jnp.sum(x * x, axis=-1))


@jax.jit
def _seed_chunk(seeds, x, x_sq, weights, start, stop):
    return jax.vmap(lambda s: _seed_steps(s, x, x_sq, weights, start, stop))(seeds)


@functools.partial(jax.jit, static_argnames=("cosine",))
def _lloyd_begin(seeds, x, x_sq, *, cosine: bool) -> _LloydState:
    return jax.vmap(lambda c: _lloyd_init(c, x, x_sq, cosine=cosine))(seeds.centroids)


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


class _Log:
    """Progress lines on stderr, at most one every `every` seconds (and always the last)."""

    def __init__(self, enabled: bool, every: float = 2.0):
        self.enabled, self.every = enabled, every
        self.start = self.last = time.perf_counter()

    def __call__(self, msg: str, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self.last >= self.every):
            self.last = now
            print(f"[kmeans] {msg} ({now - self.start:.1f} s)", file=sys.stderr, flush=True)


def _kmeans_chunked(key, x, w, tol: float, *, n_clusters: int, n_init: int, max_iter: int, metric: str,
                    progress: bool = False, init_sample: int | None = None) -> KMeansResult:
    """`kmeans` on checked host arrays `x [n, dim]`, `w [n]`, `tol` relative."""
    cosine = metric == "cosine"
    log = _Log(progress)
    n, dim = x.shape
    # From here on `x` is the device copy; this frame holds the only reference to it.
    x, tol, scale = _device_input(x, w, tol, cosine)
    tol, weights = jnp.asarray(tol), jnp.asarray(w)
    if init_sample is not None and init_sample < int(np.count_nonzero(w)):
        key, sample_key = jax.random.split(key)
        xs, ws = _init_sample(sample_key, x, weights, size=init_sample)
    else:
        xs, ws = x, weights
    xs_sq, seeds = _chunked_start(key, xs, ws, n_clusters=n_clusters, n_init=n_init)
    # One seed costs `n_trials` distance rows over every seeding point; one iteration an [n, K] product.
    per_seed = n_init * xs.shape[0] * dim * (2 + int(math.log(n_clusters)))
    seeds_per_chunk = int(min(n_clusters, max(1, CHUNK_WORK // per_seed)))
    done = 1
    while done < n_clusters:  # waits for each chunk: a pending Ctrl-C is raised between chunks
        stop = min(done + seeds_per_chunk, n_clusters)
        seeds = _seed_chunk(seeds, xs, xs_sq, ws, jnp.asarray(done, jnp.int32), jnp.asarray(stop, jnp.int32))
        seeds.key.block_until_ready()
        done = stop
        log(f"k-means++ seeding on {xs.shape[0]:,} points: {done}/{n_clusters} centroids", force=done == n_clusters)
    x_sq = xs_sq if xs is x else _squared_norms(x)
    del xs, ws, xs_sq
    states = _lloyd_begin(seeds, x, x_sq, cosine=cosine)
    iters_per_chunk = int(min(CHUNK_ITERS, max(1, CHUNK_WORK // (n_init * n * dim * n_clusters))))
    stop_at = 0
    while stop_at < max_iter:
        stop_at = min(stop_at + iters_per_chunk, max_iter)
        states, running = _lloyd_chunk(states, x, x_sq, weights, tol, jnp.asarray(stop_at, jnp.int32),
                                       n_clusters=n_clusters, max_iter=max_iter, cosine=cosine)
        running = bool(running)
        if progress:
            log(f"Lloyd iteration {int(jnp.max(states.n_iter))}/{max_iter}, centroid shift "
                f"{float(jnp.min(states.shift)):.3g} (tolerance {float(tol):.3g})", force=not running)
        if not running:
            break
    res = _chunked_finish(states, x, x_sq, weights, tol)
    if scale:
        res = res._replace(centroids=jnp.ldexp(res.centroids, scale), inertia=jnp.ldexp(res.inertia, 2 * scale))
    return res


@jax.jit
def _unit_rows(x):
    # Each row first to a peak in [0.5, 1) by a power of two, so that |x|^2 neither overflows nor
    # underflows; the scaling is exact, so the unit rows are those of x itself.
    _, row_exp = jnp.frexp(jnp.max(jnp.abs(x), axis=1))
    return _normalize(jnp.ldexp(x, -row_exp[:, None]))


def _sum_over_blocks(f, x, valid):
    """`sum_i valid_i * f(x_i)` `[dim]` over the points, block by block (no full-size temporary)."""
    block = lambda total, xb, vb: (total + jnp.sum(f(xb) * vb[:, None], axis=0), None)
    return _scan_blocks(block, jnp.zeros(x.shape[1], x.dtype), x, valid)[0]


@jax.jit
def _mean_feature_variance(x, weights):
    """Mean over features of the variance of the points with positive weight."""
    valid = (weights > 0).astype(x.dtype)
    count = jnp.sum(valid)
    mean = _sum_over_blocks(lambda v: v, x, valid) / count
    return jnp.mean(_sum_over_blocks(lambda v: (v - mean) ** 2, x, valid) / count)


def _device_input(x: np.ndarray, w: np.ndarray, tol: float, cosine: bool):
    """`kmeans`'s input on the device: `(x, absolute tolerance, exponent)`, with one copy of `x`.

    Under cosine the rows are made unit vectors. Under euclidean the whole array is scaled by a
    power of two (exact) when its peak lies beyond 2^+-40 (the centroids are scaled back by
    `2^exponent`), so that squared norms neither overflow (|x| ~ 1e20) nor underflow (|x| ~ 1e-30)
    in float32. The tolerance is scikit-learn's: `tol` times the mean per-feature variance of the
    weighted-in points (unit rows under cosine).
    """
    # `jnp.asarray` stages a second host copy on CPU; `device_put` may alias, or copies once (the
    # fit never writes to it, and returns nothing that refers to it).
    to_device = lambda a: jax.device_put(a, may_alias=True)
    scale = 0
    if cosine:
        xd = _unit_rows(to_device(x))
    else:
        valid = w > 0
        rows = lambda a, i: a[i:i + ASSIGN_BLOCK]  # in blocks: no full-size temporary
        peak = max(float(np.max(np.abs(rows(x, i)[rows(valid, i)]), initial=0.0))
                   for i in range(0, x.shape[0], ASSIGN_BLOCK))
        if peak > 2.0**40 or 0 < peak < 2.0**-40:
            _, scale = np.frexp(peak)
        xd = to_device(np.ldexp(x, -scale).astype(np.float32) if scale else x)
    abs_tol = np.float32(tol * float(_mean_feature_variance(xd, to_device(w))))
    return xd, abs_tol, int(scale)


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
    progress: bool = False,
    init_sample: int | None = None,
) -> KMeansResult:
    """Weighted k-means with k-means++ seeding and `n_init` restarts.

    Memory stays linear in the number of points (the assignment runs in blocks of ASSIGN_BLOCK
    points, the update is a scatter-add); the fit returns to Python every second or two, so
    Ctrl-C stops it there and `progress` can report.

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
      progress: progress lines on stderr (seeding, then Lloyd iterations), at most one every 2 s.
      init_sample: seed with k-means++ on this many points drawn uniformly at random (among those
        with positive weight) instead of on all of them; Lloyd iterations still use every point.
        Seeding reads all points once per centroid, so at 1M points it dominates a fit; a sample
        of tens of thousands cuts it in proportion (as scikit-learn's `MiniBatchKMeans` does with
        `init_size`). None (default): all points, as scikit-learn's `KMeans`.

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
    x = validation.float_array(x, "x", ndim=2, copy=False)  # only read, then copied to the device
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
    if metric == "cosine":
        zero = np.flatnonzero(~np.any(x != 0, axis=1) & (w > 0))  # zero-weight rows are padding
        if zero.size:
            raise ValueError(f"x has {zero.size} rows that are all zero (first: row {int(zero[0])}, all-zero), "
                             "which have no direction under metric='cosine'")
    if init_sample is not None:
        init_sample = validation.positive_int(init_sample, "init_sample")
        if init_sample < n_clusters:
            raise ValueError(f"init_sample must be >= n_clusters ({n_clusters}), got {init_sample}")
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    return _kmeans_chunked(key, x, w, tol, n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, metric=metric,
                           progress=progress, init_sample=init_sample)


@functools.partial(jax.jit, static_argnames=("metric",))
def assign_kernel(x: jax.Array, centroids: jax.Array, *, metric: str = "euclidean") -> jax.Array:
    """Unchecked nearest-centroid labels `[n_points]` int32 for `x [n_points, dim]`."""
    if metric == "cosine":
        # Centroids are unit vectors, so the largest dot product is the smallest angle; scaling a
        # row of x does not change its argmax, so x needs no normalising.
        return reductions.argmin_leading(-(centroids @ x.T))[1]
    # |x|^2 is the same for every centroid of a row: drop it from the argmin.
    c_sq = jnp.sum(centroids * centroids, axis=-1)
    return reductions.argmin_leading(c_sq[:, None] - 2.0 * centroids @ x.T)[1]


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
