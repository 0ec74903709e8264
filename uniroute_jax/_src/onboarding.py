"""How sure are we of a new LLM's error vector, and how many validation prompts does it need?

Each per-cluster error `Psi_k(h)` is estimated from `n_k` validation labels. Its uncertainty is a
Beta posterior: the shrinkage prior of `error_vectors` (strength `alpha`, centred on the LLM's
overall error) plus Jeffreys' half-counts, so the interval exists even for an empty cluster.
The sample-size helper inverts Hoeffding's inequality with a union bound over clusters.
`routing_gain` asks the question that matters for a whole pool: is its routing, decided on its
estimates, better than ZeroRouter's under what those estimates do not know?
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc
from jax.typing import ArrayLike

from uniroute_jax._src import metrics, validation
from uniroute_jax._src.curves import exact_curve_kernel
from uniroute_jax._src.routing import RoutingUnits


class ErrorIntervals(NamedTuple):
    """Posterior uncertainty of per-cluster error rates."""

    mean: jax.Array  # [n_models, n_clusters] posterior mean
    lower: jax.Array  # [n_models, n_clusters] lower end of the central interval
    upper: jax.Array  # [n_models, n_clusters] upper end
    a: jax.Array  # [n_models, n_clusters] Beta shape parameters
    b: jax.Array  # [n_models, n_clusters]


@jax.jit
def _beta_quantile(a: jax.Array, b: jax.Array, p: jax.Array) -> jax.Array:
    """Quantile of Beta(a, b) by bisection on the regularised incomplete beta (60 halvings)."""

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = betainc(a, b, mid) < p
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, body, (jnp.zeros_like(a), jnp.ones_like(a)))
    return 0.5 * (lo + hi)


def error_intervals(counts: ArrayLike, error_sums: ArrayLike, *, alpha: float = 1.0,
                    level: float = 0.95) -> ErrorIntervals:
    """Central Beta-posterior intervals of every per-cluster error rate.

    Posterior `Beta(e + alpha * o + 1/2, n - e + alpha * (1 - o) + 1/2)` for `n` labels with `e`
    errors in the cluster and overall error `o` of the model.

    Args:
      counts: [n_models, n_clusters] validation labels per cluster (`Pool.counts`).
      error_sums: [n_models, n_clusters] errors among them (`Pool.error_sums`).
      alpha: the shrinkage pseudo-count used for `Psi`.
      level: interval probability in (0, 1).

    Returns:
      `ErrorIntervals`.
    """
    n = validation.nonnegative(validation.float_array(counts, "counts", ndim=2, dtype=np.float64), "counts")
    e = validation.nonnegative(validation.float_array(error_sums, "error_sums", shape=n.shape, dtype=np.float64),
                               "error_sums")
    if np.any(e > n + 1e-6):
        raise ValueError("error_sums must not exceed counts")
    alpha = validation.nonnegative_float(alpha, "alpha")
    level = validation.nonnegative_float(level, "level")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    overall = e.sum(1, keepdims=True) / np.maximum(n.sum(1, keepdims=True), 1e-12)
    a = jnp.asarray(e + alpha * overall + 0.5, jnp.float32)
    b = jnp.asarray(n - e + alpha * (1 - overall) + 0.5, jnp.float32)
    tail = (1 - level) / 2
    lower = _beta_quantile(a, b, jnp.asarray(tail, jnp.float32))
    upper = _beta_quantile(a, b, jnp.asarray(1 - tail, jnp.float32))
    return ErrorIntervals(a / (a + b), lower, upper, a, b)


class ValidationSize(NamedTuple):
    """Answer of `validation_prompts_needed`."""

    per_cluster: int  # labels each cluster needs
    total: int  # validation prompts to label so the rarest cluster gets them (in expectation)


def validation_prompts_needed(eps: float, delta: float, n_clusters: int,
                              cluster_weights: ArrayLike | None = None) -> ValidationSize:
    """Validation prompts a new LLM needs for every `|Psi_hat_k - Psi_k| <= eps` w.p. `1 - delta`.

    Hoeffding for each cluster's mean of 0/1 errors, `P(|mean - p| > eps) <= 2 exp(-2 n eps^2)`,
    with a union bound over the `n_clusters` clusters: `n_k >= log(2 K / delta) / (2 eps^2)`. With
    cluster weights `w_k` (share of prompts in each cluster), drawing `N` prompts gives the rarest
    cluster `N * min w_k` labels in expectation, so `N = ceil(n_k / min w_k)`. It is distribution-
    free and therefore conservative: an LLM whose errors are near 0 or 1 needs far fewer.

    Args:
      eps: tolerance on each per-cluster error, in (0, 1).
      delta: failure probability, in (0, 1).
      n_clusters: number of clusters K.
      cluster_weights: optional [n_clusters] shares (default uniform).

    Returns:
      `ValidationSize(per_cluster, total)`.
    """
    eps = validation.nonnegative_float(eps, "eps")
    delta = validation.nonnegative_float(delta, "delta")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    k = validation.positive_int(n_clusters, "n_clusters")
    if cluster_weights is None:
        w_min = 1.0 / k
    else:
        w = validation.nonnegative(validation.float_array(cluster_weights, "cluster_weights", shape=(k,),
                                                          dtype=np.float64), "cluster_weights")
        if w.sum() <= 0:
            raise ValueError("cluster_weights must have a positive entry")
        w_min = (w / w.sum()).min()
        if w_min == 0:
            raise ValueError("cluster_weights has an empty cluster: it would never receive a label")
    per = math.ceil(math.log(2 * k / delta) / (2 * eps * eps))
    return ValidationSize(per, math.ceil(per / w_min))


class RoutingGain(NamedTuple):
    """Answer of `routing_gain`: Area of the pool's routing minus ZeroRouter's, over the posterior."""

    mean: float  # posterior mean of the gain
    lower: float  # lower end of the central interval
    upper: float  # upper end
    labels_per_llm: int | None  # more labels per LLM (spread by cluster mass) for `lower > 0`; None: none do


def _gain_one(theta, psi, costs, masses, model_mask):
    """Area gain of routing on `psi [M, K]` over ZeroRouter when the true errors are `theta [M, K]`.

    Units are the clusters, weighted by traffic share; ZeroRouter decides on the mass-weighted
    overall errors. Both curves are normalised by the dearest LLM (by 1 when every LLM is free).
    `model_mask [M]` is False for padding.
    """
    pool = model_mask[None, :]
    dearest = jnp.max(jnp.where(model_mask, costs, 0.0))
    norm = jnp.where(dearest > 0, dearest, 1.0)
    quality = masses[:, None] * (1.0 - theta.T)  # [K, M]
    cost = masses[:, None] * costs[None, :]

    def area(estimates, units):
        curve = exact_curve_kernel(estimates, units, costs, pool)
        return metrics.area(curve.mean_cost[0], curve.mean_quality[0], curve.valid[0], norm)

    routed = area(psi.T, RoutingUnits(masses, quality, cost))
    zero = area((masses @ psi.T)[None, :], RoutingUnits(jnp.ones(1), quality.sum(0, keepdims=True),
                                                          cost.sum(0, keepdims=True)))
    return routed - zero


@functools.partial(jax.jit, static_argnames=("n_draws",))
def gain_draws_kernel(key: jax.Array, a: jax.Array, b: jax.Array, psi: jax.Array, costs: jax.Array,
                      masses: jax.Array, model_mask: jax.Array, extra: jax.Array, *, n_draws: int) -> jax.Array:
    """Unchecked: `[n_draws]` gains (`_gain_one`) with errors drawn from `Beta(a, b)` (`[M, K]` each)
    after `extra` more labels per LLM, spread by `masses`, that agree with the posterior means
    (the posterior narrows, its mean stays; one key for every `extra`)."""
    mean = a / (a + b)
    add = extra * masses[None, :]
    theta = jax.random.beta(key, a + add * mean, b + add * (1.0 - mean), (n_draws,) + a.shape)
    return jax.vmap(lambda t: _gain_one(t, psi, costs, masses, model_mask))(theta)


def routing_gain(a: ArrayLike, b: ArrayLike, psi: ArrayLike, costs: ArrayLike, masses: ArrayLike, *,
                 level: float = 0.95, n_draws: int = 256, seed: int = 0) -> RoutingGain:
    """How much better than ZeroRouter the pool routes, and how sure that is.

    The pool routes on its estimates `psi`; ZeroRouter sends every prompt to one LLM per budget.
    Each LLM's true error in each cluster is drawn from its Beta posterior `(a, b)`, and the Area
    of both routers' cost-quality curves is computed on the clusters, weighted by `masses`. When
    the interval covers zero the estimates cannot be told from ZeroRouter's; `labels_per_llm` is
    then the fewest more labels per LLM that would move the lower end above zero if they agreed
    with the current estimates (doubling, then bisection; None when the mean gain is not positive).

    Args:
      a, b: [n_models, n_clusters] Beta posterior of every per-cluster error (`ErrorIntervals.a/.b`).
      psi: [n_models, n_clusters] the estimates the pool routes on.
      costs: [n_models] cost per query, >= 0.
      masses: [n_clusters] traffic share of each cluster, >= 0 with a positive entry.
      level: interval probability in (0, 1).
      n_draws: posterior draws.
      seed: seed of the draws.

    Returns:
      `RoutingGain`.
    """
    a = validation.float_array(a, "a", ndim=2)
    b = validation.float_array(b, "b", shape=a.shape)
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("a and b must be positive Beta parameters")
    psi = validation.unit_interval(validation.float_array(psi, "psi", shape=a.shape), "psi")
    costs = validation.nonnegative(validation.float_array(costs, "costs", shape=(a.shape[0],)), "costs")
    m = validation.nonnegative(validation.float_array(masses, "masses", shape=(a.shape[1],)), "masses")
    if m.sum() <= 0:
        raise ValueError("masses must have a positive entry")
    level = validation.nonnegative_float(level, "level")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n_draws = validation.positive_int(n_draws, "n_draws")
    # Models padded to a power of two (masked out): pools growing one LLM at a time compile a few shapes.
    M, rows = a.shape[0], max(2, 1 << max(0, a.shape[0] - 1).bit_length())
    pad = lambda x, fill: np.concatenate([x, np.full((rows - M,) + x.shape[1:], fill, np.float32)])
    args = (jax.random.key(seed), *(jnp.asarray(x, jnp.float32) for x in (pad(a, 1.0), pad(b, 1.0), pad(psi, 0.5),
                                                                          pad(costs, 0.0), m / m.sum())),
            jnp.asarray(np.arange(rows) < M))
    tail = (1 - level) / 2

    def interval(extra):
        g = np.asarray(gain_draws_kernel(*args, jnp.asarray(extra, jnp.float32), n_draws=n_draws), np.float64)
        return float(g.mean()), float(np.quantile(g, tail)), float(np.quantile(g, 1 - tail))

    mean, lower, upper = interval(0.0)
    more = None
    if lower <= 0 < mean:
        hi = 1
        while interval(hi)[1] <= 0 and hi < 1 << 20:
            hi *= 2
        if interval(hi)[1] > 0:
            lo = hi // 2
            while lo + 1 < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if interval(mid)[1] <= 0 else (lo, mid)
            more = int(hi)
    return RoutingGain(mean, lower, upper, more)

