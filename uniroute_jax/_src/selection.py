"""Which validation prompts to label for a new LLM.

A new LLM is represented by its labels on a few candidate prompts; which prompts they are matters
when there are few. Three strategies, each choosing `n` of the candidates (by their cluster):

* `random`: a uniform sample without replacement.
* `stratified`: clusters get labels in proportion to their mass (the `j`-th prompt of cluster `k`
  has priority `(j + 1/2) / w_k`, a divisor apportionment that moves on when a cluster runs out).
* `informative`: greedy, one label at a time, to the cluster whose next label most reduces the
  expected uncertainty of routing decisions under the population prior (`estimators`' "prior"):
  a cluster's error is uncertain through the LLM's few latent factors (which every label informs,
  a Laplace approximation at the prior mean) and through its own deviation (strength `kappa`); it
  matters for routing in proportion to its mass and to how close the predicted error is to the
  represented LLMs' errors there (where a decision can flip).

Prompts within a cluster are taken in a random order in every strategy.

    idx = select_prompts(router.assign(candidates), 20, strategy="informative",
                         estimator=fit_estimator("prior", pool.counts, pool.error_sums), reference_psi=pool.psi)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation
from uniroute_jax._src.estimators import Estimator, EstimatorParams
from uniroute_jax._src.small_linalg import spd_inv

STRATEGIES = ("random", "stratified", "informative")


def _within_cluster_rank(clusters: jax.Array, u: jax.Array, valid: jax.Array) -> jax.Array:
    """Position of each candidate in a random order of its own cluster, `[n_cand]` int."""
    same = (clusters[:, None] == clusters[None, :]) & valid[None, :]
    return jnp.sum(same & (u[None, :] < u[:, None]), axis=1)


def _first_n(priority: jax.Array, n: jax.Array) -> jax.Array:
    """Mask of the `n` lowest priorities (ties by index)."""
    order = jnp.argsort(priority, stable=True)
    ranks = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    return ranks < n


def informative_counts(params: EstimatorParams, reference_psi: jax.Array, reference_mask: jax.Array,
                       masses: jax.Array, available: jax.Array, n: jax.Array, *, n_max: int) -> jax.Array:
    """Greedy labels per cluster `[K]` (sum `min(n, available)`) under the population prior.

    Args:
      params: a fitted `EstimatorParams` (its "prior" fields are used).
      reference_psi: [R, K] error vectors of the represented LLMs (the decisions a new LLM can flip).
      reference_mask: [R] bool, False for padding rows.
      masses: [K] cluster shares of the prompts routed.
      available: [K] candidates per cluster.
      n: [] labels to place (<= n_max).
      n_max: loop length (static).
    """
    f = params.factors  # [K, r + 1]
    m = jax.nn.sigmoid(f @ params.v_mean + params.offsets)
    g = m * (1 - m)
    own = g / (params.kappa + 1.0)  # a cluster's own deviation from the factor prediction
    cov0 = spd_inv(params.v_precision)
    a0 = f @ cov0 @ f.T  # [K, K] prior covariance of the logits
    var0 = g * g * jnp.diag(a0) + own
    # Decision weight: a cluster matters where the new LLM's predicted error is near a represented
    # LLM's (a few prior standard deviations away the decision is already settled).
    z = (m[None, :] - reference_psi) ** 2 / (2 * var0[None, :])
    w_ref = reference_mask.astype(m.dtype)[:, None]
    near = jnp.sum(w_ref * jnp.exp(-z), 0) / jnp.maximum(jnp.sum(w_ref), 1.0)
    weight = masses * (near + 1e-3)

    def risk(diag_a, counts):
        prior_var = g * g * diag_a + own
        return weight * prior_var / (1.0 + counts * prior_var / g)  # posterior variance per cluster

    def step(i, carry):
        counts, a = carry
        diag_a = jnp.diag(a)
        # Sherman-Morrison: one more label in cluster k shrinks every logit variance s_j by
        # g_k A_jk^2 / (1 + g_k A_kk).
        new_diag = diag_a[None, :] - g[:, None] * a ** 2 / (1.0 + g * diag_a)[:, None]  # [k, j]
        new_counts = counts[None, :] + jnp.eye(counts.shape[0])
        gain = jnp.sum(risk(diag_a, counts)) - jax.vmap(risk)(new_diag, new_counts).sum(1)
        gain = jnp.where(counts < available, gain, -jnp.inf)
        k = jnp.argmax(gain)
        go = (i < n) & (counts[k] < available[k])
        col = a[:, k]
        a_new = a - g[k] * jnp.outer(col, col) / (1.0 + g[k] * a[k, k])
        return jnp.where(go, counts.at[k].add(1.0), counts), jnp.where(go, a_new, a)

    counts, _ = jax.lax.fori_loop(0, n_max, step, (jnp.zeros_like(m), a0))
    return counts


@functools.partial(jax.jit, static_argnames=("strategy", "n_max"))
def selection_kernel(key: jax.Array, clusters: jax.Array, valid: jax.Array, n: jax.Array, masses: jax.Array,
                     params: EstimatorParams, reference_psi: jax.Array, reference_mask: jax.Array, *,
                     strategy: str, n_max: int) -> jax.Array:
    """Unchecked: mask `[n_cand]` of the `min(n, #valid)` candidates to label.

    Args:
      key: PRNG key (random order of the candidates).
      clusters: [n_cand] int cluster of each candidate.
      valid: [n_cand] bool, False for padding candidates.
      n: [] int labels to choose (data: one compile serves every budget).
      masses: [K] cluster shares (`stratified`, `informative`).
      params, reference_psi, reference_mask: the population prior and the represented LLMs
        (`informative` only; any arrays of the right shapes otherwise).
      strategy: one of `STRATEGIES` (static).
      n_max: largest `n` (static; the greedy loop length of `informative`).
    """
    u = jax.random.uniform(key, clusters.shape)
    n = jnp.minimum(n, jnp.sum(valid))
    if strategy == "random":
        return _first_n(jnp.where(valid, u, jnp.inf), n)
    K = masses.shape[0]
    rank = _within_cluster_rank(clusters, u, valid)
    if strategy == "stratified":
        w = masses[clusters]
        priority = jnp.where(w > 0, (rank + 0.5) / jnp.where(w > 0, w, 1.0), 1e30 + rank)
        return _first_n(jnp.where(valid, priority, jnp.inf), n)
    available = jax.ops.segment_sum(valid.astype(jnp.float32), clusters, num_segments=K)
    counts = informative_counts(params, reference_psi, reference_mask, masses, available, n, n_max=n_max)
    return valid & (rank < counts[clusters])


def select_prompts(candidate_clusters: ArrayLike, n: int, *, strategy: str = "stratified",
                   n_clusters: int | None = None, cluster_masses: ArrayLike | None = None,
                   estimator: Estimator | None = None, reference_psi: ArrayLike | None = None,
                   seed: int = 0) -> np.ndarray:
    """Indices of the `n` candidate prompts a new LLM should be labelled on.

    Args:
      candidate_clusters: [n_cand] cluster of each candidate prompt (`router.assign(embeddings)`).
      n: prompts to choose, 1 <= n <= n_cand.
      strategy: "random", "stratified" (default; by cluster mass) or "informative".
      n_clusters: K (default: the estimator's, else max cluster + 1).
      cluster_masses: [K] share of traffic per cluster (default: the candidates' shares).
      estimator: a fitted "prior" `Estimator` (required by "informative": it carries the population prior).
      reference_psi: [R, K] error vectors of the LLMs already represented (`Pool.psi`; "informative").
      seed: seed of the random order.

    Returns:
      [n] sorted int indices into the candidates.

    Raises:
      ValueError / TypeError naming the argument.
    """
    strategy = validation.choice(strategy, "strategy", STRATEGIES)
    if estimator is not None and not isinstance(estimator, Estimator):
        raise TypeError(f"estimator must be an Estimator (fit_estimator), got {type(estimator).__name__}")
    if n_clusters is None:
        n_clusters = estimator.n_clusters if estimator is not None else int(np.max(candidate_clusters, initial=-1)) + 1
    K = validation.positive_int(n_clusters, "n_clusters")
    c = validation.int_array(np.asarray(candidate_clusters), "candidate_clusters", shape=(None,), high=K)
    if c.size == 0:
        raise ValueError("candidate_clusters holds no prompt")
    n = validation.positive_int(n, "n")
    if n > c.size:
        raise ValueError(f"n must be <= the {c.size} candidate prompts, got {n}")
    seed = validation.positive_int(seed, "seed", minimum=0)
    if cluster_masses is None:
        masses = np.bincount(c, minlength=K).astype(np.float32) / c.size
    else:
        masses = validation.nonnegative(validation.float_array(cluster_masses, "cluster_masses", shape=(K,)),
                                        "cluster_masses")
        if masses.sum() <= 0:
            raise ValueError("cluster_masses must have a positive entry")
    if strategy == "informative":
        if estimator is None or estimator.method != "prior":
            raise ValueError("estimator must be a fitted 'prior' Estimator for strategy='informative'")
        if estimator.n_clusters != K:
            raise ValueError(f"estimator has {estimator.n_clusters} clusters but n_clusters is {K}")
        if reference_psi is None:
            raise ValueError("reference_psi ([R, K] Pool.psi) is required for strategy='informative'")
        ref = validation.unit_interval(validation.float_array(reference_psi, "reference_psi", shape=(None, K)),
                                       "reference_psi")
        params = estimator.params
    else:
        ref = np.zeros((1, K), np.float32)
        params = estimator.params if estimator is not None and estimator.n_clusters == K else _dummy_params(K)
    mask = selection_kernel(jax.random.key(seed), jnp.asarray(c), jnp.ones(c.size, bool), jnp.asarray(n),
                            jnp.asarray(masses), params, jnp.asarray(ref), jnp.ones(ref.shape[0], bool),
                            strategy=strategy, n_max=n)
    return np.flatnonzero(np.asarray(mask))


def _dummy_params(K: int) -> EstimatorParams:
    z = jnp.zeros(())
    return EstimatorParams(z, z, jnp.zeros(K, jnp.int32), jnp.zeros(3), jnp.ones((K, 1)), jnp.zeros(K),
                           jnp.zeros(1), jnp.eye(1), z)
