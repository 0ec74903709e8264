"""How sure are we of a new LLM's error vector, and how many validation prompts does it need?

Each per-cluster error `Psi_k(h)` is estimated from `n_k` validation labels. Its uncertainty is a
Beta posterior: the shrinkage prior of `error_vectors` (strength `alpha`, centred on the LLM's
overall error) plus Jeffreys' half-counts, so the interval exists even for an empty cluster.
The sample-size helper inverts Hoeffding's inequality with a union bound over clusters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc
from jax.typing import ArrayLike

from uniroute_jax._src import validation


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
