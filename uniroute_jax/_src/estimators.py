"""Estimators of a new LLM's per-cluster error vector from a few labels.

A new LLM labelled on `n_k` validation prompts of cluster `k`, with `e_k` errors among them, gets
`psi_k = (e_k + s_k * p_k) / (n_k + s_k)`: its cluster mean shrunk toward a prior guess `p_k`
with strength `s_k` (pseudo-labels). The estimators differ in the prior and how its strength is
chosen:

* `mean`: the paper's plain cluster mean (`s = 0`); an empty cluster gets the overall error.
* `shrinkage`: `error_vectors`' rule, a fixed pseudo-count `alpha` toward the overall error.
* `hierarchical`: a tree population -> LLM -> group of clusters -> cluster. Groups are a
  k-means of the centroids weighted by cluster mass. Each level is shrunk toward its parent with a
  strength chosen by empirical Bayes: the one that maximises the Beta-Binomial marginal likelihood
  of the already represented LLMs' counts (each cell against its parent computed without it).
* `prior`: a population prior learnt from the represented LLMs,
  `logit Psi[h, k] = a_h + b_k + u_k . v_h` (fitted with optax). A new LLM's `(a, v)` is its MAP
  estimate under a Gaussian fitted to the represented LLMs' factors, from its own labels; the
  prediction `p_k` is then the Beta prior of each cluster, with a strength fitted by empirical
  Bayes on leave-one-cluster-out predictions of the represented LLMs.

Every estimator works from one label upward, for empty clusters and for any `K`; each is a
jitted kernel for one LLM, vmapped over LLMs. All the fitted numbers of every method live in one
`EstimatorParams` pytree, so the fit also vmaps (over trials in the label-efficiency study).

    est = fit_estimator("prior", pool.counts, pool.error_sums, cluster_masses=masses)
    psi = est.estimate(new_counts, new_error_sums)          # [n_new, K]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import betaln
from jax.typing import ArrayLike

from uniroute_jax._src import validation
from uniroute_jax._src.error_vectors import DEFAULT_ALPHA
from uniroute_jax._src.kmeans import kmeans_kernel

METHODS = ("mean", "shrinkage", "hierarchical", "prior")
DEFAULT_METHOD = "prior"
"""Estimator used by default: the one that won the label-efficiency study on most datasets
(benchmarks/results/label_efficiency/)."""

# Candidate strengths (pseudo-labels) of the empirical-Bayes searches, log-spaced.
STRENGTH_GRID = np.geomspace(0.1, 3000.0, 72).astype(np.float32)
_EPS = 1e-3  # priors are kept in [_EPS, 1 - _EPS] so Beta parameters stay positive


class EstimatorParams(NamedTuple):
    """Fitted numbers of every estimator (a pytree; unused fields of a method are ignored).

    `K` clusters, `G` groups, `r` factors (the first column of `factors` is all ones: the LLM's
    intercept).
    """

    alpha: jax.Array  # [] pseudo-count of `shrinkage`
    population_error: jax.Array  # [] mean overall error of the represented LLMs
    groups: jax.Array  # [K] int32 group of each cluster (`hierarchical`)
    strengths: jax.Array  # [3] LLM|population, group|LLM, cluster|group strengths (`hierarchical`)
    factors: jax.Array  # [K, r + 1] cluster loadings `(1, u_k)` (`prior`)
    offsets: jax.Array  # [K] cluster offsets `b_k` (`prior`)
    v_mean: jax.Array  # [r + 1] prior mean of an LLM's `(a, v)` (`prior`)
    v_precision: jax.Array  # [r + 1, r + 1] prior precision of `(a, v)` (`prior`)
    kappa: jax.Array  # [] strength of the population prediction (`prior`)


class Estimate(NamedTuple):
    """Output of the kernels, one row per LLM: `psi = (e + s p) / (n + s)`."""

    psi: jax.Array  # [..., K] estimated error per cluster, in [0, 1]
    prior: jax.Array  # [..., K] prior guess `p` each cluster is shrunk toward
    strength: jax.Array  # [..., K] its weight `s` in pseudo-labels (0 for `mean`)


# ------------------------------------------------------------------------------- kernels


def _overall(counts, error_sums, fallback):
    n = jnp.sum(counts)
    return jnp.where(n > 0, jnp.sum(error_sums) / jnp.where(n > 0, n, 1.0), fallback)


def _shrink(counts, error_sums, prior, strength):
    denom = counts + strength
    psi = jnp.where(denom > 0, (error_sums + strength * prior) / jnp.where(denom > 0, denom, 1.0), prior)
    return Estimate(jnp.clip(psi, 0.0, 1.0), prior, jnp.broadcast_to(strength, psi.shape))


def _mean_one(params, counts, error_sums):
    overall = _overall(counts, error_sums, params.population_error)
    return _shrink(counts, error_sums, jnp.full_like(counts, overall), jnp.zeros_like(counts))


def _shrinkage_one(params, counts, error_sums):
    # The pseudo-count rule of `error_vectors_kernel`, written on counts: same numbers.
    overall = _overall(counts, error_sums, params.population_error)
    return _shrink(counts, error_sums, jnp.full_like(counts, overall), jnp.full_like(counts, params.alpha))


def _hierarchical_parents(params, counts, error_sums):
    """Group-level estimate of each cluster's parent, `[K]`, and the LLM's shrunk root `[]`."""
    t_root, t_group, _ = params.strengths[0], params.strengths[1], params.strengths[2]
    root = (jnp.sum(error_sums) + t_root * params.population_error) / (jnp.sum(counts) + t_root)
    n_groups = params.groups.shape[0]  # groups are ids in [0, K)
    seg = functools.partial(jax.ops.segment_sum, segment_ids=params.groups, num_segments=n_groups)
    group = (seg(error_sums) + t_group * root) / (seg(counts) + t_group)
    return group[params.groups], root


def _hierarchical_one(params, counts, error_sums):
    parent, _ = _hierarchical_parents(params, counts, error_sums)
    return _shrink(counts, error_sums, parent, jnp.full_like(counts, params.strengths[2]))


def _log_posterior(params, counts, error_sums, v):
    z = params.factors @ v + params.offsets
    d = v - params.v_mean
    return (jnp.sum(error_sums * jax.nn.log_sigmoid(z) + (counts - error_sums) * jax.nn.log_sigmoid(-z))
            - 0.5 * d @ params.v_precision @ d)


_STEP_SCALES = (1.0, 0.5, 0.25, 0.1, 0.0)


def _logistic_map(params, counts, error_sums, n_steps: int = 30):
    """MAP `(a, v)` of one LLM under the Gaussian prior: Newton steps with a step-size search over
    `_STEP_SCALES` (a plain Newton step can overshoot far from the optimum; the posterior is
    strictly concave, so the ascent converges)."""
    f = params.factors
    scales = jnp.asarray(_STEP_SCALES)

    def step(_, v):
        m = jax.nn.sigmoid(f @ v + params.offsets)
        grad = f.T @ (error_sums - counts * m) - params.v_precision @ (v - params.v_mean)
        hess = (f * (counts * m * (1 - m))[:, None]).T @ f + params.v_precision
        delta = jnp.linalg.solve(hess, grad)
        cand = v[None, :] + scales[:, None] * delta[None, :]
        value = jax.vmap(lambda c: _log_posterior(params, counts, error_sums, c))(cand)
        return cand[jnp.argmax(value)]

    return jax.lax.fori_loop(0, n_steps, step, params.v_mean)


def _prior_prediction(params, counts, error_sums):
    v = _logistic_map(params, counts, error_sums)
    return jnp.clip(jax.nn.sigmoid(params.factors @ v + params.offsets), _EPS, 1 - _EPS)


def _prior_one(params, counts, error_sums):
    pred = _prior_prediction(params, counts, error_sums)
    return _shrink(counts, error_sums, pred, jnp.full_like(counts, params.kappa))


_ONE = {"mean": _mean_one, "shrinkage": _shrinkage_one, "hierarchical": _hierarchical_one, "prior": _prior_one}


@functools.partial(jax.jit, static_argnames=("method",))
def estimate_kernel(params: EstimatorParams, counts: jax.Array, error_sums: jax.Array, *, method: str) -> Estimate:
    """Unchecked: estimates of `[n_models, K]` counts (one row per LLM), a vmap of one LLM's kernel.

    Args:
      params: fitted `EstimatorParams`.
      counts: [n_models, K] labels per cluster (hard assignment; zero for an empty cluster).
      error_sums: [n_models, K] errors among them.
      method: one of `METHODS` (static).
    """
    return jax.vmap(_ONE[method], in_axes=(None, 0, 0))(params, counts, error_sums)


# -------------------------------------------------------------------- empirical Bayes fit


def _beta_binomial_loglik(errors, counts, prior, strength):
    """log P(errors | counts) under Beta(s p, s (1 - p)), without the binomial coefficient (which
    does not depend on `s` or `p`)."""
    a, b = strength * prior, strength * (1 - prior)
    return betaln(errors + a, counts - errors + b) - betaln(a, b)


def _best_strength(errors, counts, prior, weight):
    """The grid strength that maximises the summed Beta-Binomial log-likelihood of `weight`ed cells."""
    prior = jnp.clip(prior, _EPS, 1 - _EPS)
    grid = jnp.asarray(STRENGTH_GRID)
    ll = jax.vmap(lambda s: jnp.sum(weight * _beta_binomial_loglik(errors, counts, prior, s)))(grid)
    return grid[jnp.argmax(ll)]


def _fit_hierarchy(counts, errors, model_mask, groups, population_error):
    """Strengths of the three levels, each against its parent computed without the cell itself."""
    w = model_mask.astype(counts.dtype)
    n_h, e_h = counts.sum(1), errors.sum(1)  # [R]
    n_all, e_all = jnp.sum(w * n_h), jnp.sum(w * e_h)
    loo_pop = (e_all - w * e_h) / jnp.maximum(n_all - w * n_h, 1e-6)
    t_root = _best_strength(e_h, n_h, loo_pop, w)
    root = (e_h + t_root * population_error) / (n_h + t_root)  # [R]
    K = counts.shape[1]
    seg = jax.vmap(lambda x: jax.ops.segment_sum(x, groups, num_segments=K))
    n_g, e_g = seg(counts), seg(errors)  # [R, K] (by group id)
    loo_root = (e_h[:, None] - e_g + t_root * population_error) / (n_h[:, None] - n_g + t_root)
    t_group = _best_strength(e_g, n_g, loo_root, w[:, None] * (n_g > 0))
    n_par, e_par = n_g[:, groups] - counts, e_g[:, groups] - errors
    loo_group = (e_par + t_group * root[:, None]) / (n_par + t_group)
    t_cluster = _best_strength(errors, counts, loo_group, w[:, None] * (counts > 0))
    return jnp.stack([t_root, t_group, t_cluster])


def _fit_low_rank(key, counts, errors, model_mask, *, rank: int, n_steps: int, ridge: float):
    """Maximum-penalised-likelihood `logit Psi[h, k] = a_h + b_k + u_k . v_h` on the represented LLMs."""
    R, K = counts.shape
    w = model_mask.astype(counts.dtype)[:, None]
    total = jnp.maximum(jnp.sum(w * counts), 1.0)
    rate = (jnp.sum(w * errors) + 0.5) / (total + 1.0)
    k_u, k_v = jax.random.split(key)
    params = {"u": 0.1 * jax.random.normal(k_u, (K, rank)), "v": 0.1 * jax.random.normal(k_v, (R, rank)),
              "a": jnp.zeros(R), "b": jnp.full(K, jnp.log(rate / (1 - rate)))}

    def loss(p):
        z = p["a"][:, None] + p["b"][None, :] + p["v"] @ p["u"].T
        nll = -jnp.sum(w * (errors * jax.nn.log_sigmoid(z) + (counts - errors) * jax.nn.log_sigmoid(-z)))
        # A unit-variance Gaussian prior on every factor, in units of labels; a weak one on the
        # intercepts fixes the a + b shift.
        pen = 0.5 * ridge * (jnp.sum(w * p["v"] ** 2) + jnp.sum(p["u"] ** 2)) + 0.5e-3 * jnp.sum(w[:, 0] * p["a"] ** 2)
        return (nll + pen) / total

    opt = optax.adam(0.05)

    def step(carry, _):
        p, state = carry
        g = jax.grad(loss)(p)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=n_steps)
    return p


def _fit_prior(key, counts, errors, model_mask, factor_counts, factor_errors, *, rank: int, n_steps: int,
               ridge: float):
    """Population prior: factors, offsets, Gaussian over LLMs' `(a, v)` and the strength `kappa`.

    The factors are fitted on `factor_counts` (all the labels of the represented LLMs), `kappa` on
    `counts` (their labels on the prompts a new LLM is labelled on, so that its leave-one-cluster-out
    predictions are as uncertain as a new LLM's)."""
    p = _fit_low_rank(key, factor_counts, factor_errors, model_mask, rank=rank, n_steps=n_steps, ridge=ridge)
    K = counts.shape[1]
    factors = jnp.concatenate([jnp.ones((K, 1)), p["u"]], axis=1)  # [K, r + 1]
    av = jnp.concatenate([p["a"][:, None], p["v"]], axis=1)  # [R, r + 1]
    w = model_mask.astype(counts.dtype)
    n_ref = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(w[:, None] * av, 0) / n_ref
    centred = (av - mean) * w[:, None]
    # Ridge keeps the precision finite with few represented LLMs (one LLM: a broad prior).
    cov = centred.T @ centred / n_ref + 0.1 * jnp.eye(rank + 1)
    partial = EstimatorParams(jnp.zeros(()), jnp.zeros(()), jnp.zeros(K, jnp.int32), jnp.zeros(3), factors,
                              p["b"], mean, jnp.linalg.inv(cov), jnp.zeros(()))
    # Leave-one-cluster-out predictions of every represented LLM: exactly what a new LLM gets for a
    # cluster from its labels elsewhere.
    drop = 1.0 - jnp.eye(K)

    def loo(c, e):
        return jax.vmap(lambda keep: _prior_prediction(partial, c * keep, e * keep))(drop).diagonal()

    pred = jax.vmap(loo)(counts, errors)  # [R, K]
    kappa = _best_strength(errors, counts, pred, w[:, None] * (counts > 0))
    return partial._replace(kappa=kappa)


@functools.partial(jax.jit, static_argnames=("n_groups", "rank", "n_steps"))
def fit_kernel(key: jax.Array, counts: jax.Array, error_sums: jax.Array, model_mask: jax.Array,
               centroids: jax.Array, cluster_masses: jax.Array, alpha: jax.Array, extra_counts: jax.Array | None = None,
               extra_error_sums: jax.Array | None = None, *, n_groups: int, rank: int = 2,
               n_steps: int = 1500) -> EstimatorParams:
    """Unchecked fit of every estimator from the represented LLMs (padded rows masked out).

    Args:
      key: PRNG key (k-means of the centroids, factor initialisation).
      counts: [R, K] validation labels per cluster of the represented LLMs.
      error_sums: [R, K] errors among them.
      model_mask: [R] bool, False for padding rows.
      centroids: [K, dim] cluster centroids (grouped by k-means for `hierarchical`).
      cluster_masses: [K] share of prompts per cluster (k-means weights).
      alpha: [] pseudo-count of `shrinkage`.
      extra_counts, extra_error_sums: optional [R, K] further labels of the represented LLMs on other
        prompts (e.g. training prompts); they enter the low-rank factors only, not the strengths.
      n_groups: number of coarse groups G <= K (static).
      rank: number of free factors r (static).
      n_steps: Adam steps of the low-rank fit (static).
    """
    k_groups, k_prior = jax.random.split(key)
    w = model_mask.astype(counts.dtype)
    overall = counts.sum(1)
    overall = jnp.where(overall > 0, error_sums.sum(1) / jnp.maximum(overall, 1e-6), 0.5)
    population_error = jnp.clip(jnp.sum(w * overall) / jnp.maximum(jnp.sum(w), 1.0), _EPS, 1 - _EPS)
    masses = jnp.maximum(cluster_masses, 0.0)
    masses = jnp.where(jnp.sum(masses) > 0, masses, jnp.ones_like(masses))
    km = kmeans_kernel(k_groups, centroids, masses, jnp.asarray(0.0, centroids.dtype), n_clusters=n_groups,
                       n_init=3, max_iter=100, metric="euclidean")
    groups = km.labels.astype(jnp.int32)
    strengths = _fit_hierarchy(counts, error_sums, model_mask, groups, population_error)
    fc, fe = counts, error_sums
    if extra_counts is not None:
        fc, fe = counts + extra_counts, error_sums + extra_error_sums
    prior = _fit_prior(k_prior, counts, error_sums, model_mask, fc, fe, rank=rank, n_steps=n_steps, ridge=1.0)
    return prior._replace(alpha=jnp.asarray(alpha, counts.dtype), population_error=population_error,
                          groups=groups, strengths=strengths)


def default_n_groups(n_clusters: int) -> int:
    """Coarse groups of the hierarchy: about sqrt(K), at least 1."""
    return max(1, min(n_clusters, round(math.sqrt(n_clusters))))


# ------------------------------------------------------------------------------ public API


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A fitted estimator: `estimate(counts, error_sums)` gives a new LLM's `psi`."""

    method: str
    params: EstimatorParams

    @property
    def n_clusters(self) -> int:
        return int(self.params.offsets.shape[0])

    def _check(self, counts: ArrayLike, error_sums: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        n = np.asarray(counts)
        n = validation.float_array(n[None] if n.ndim == 1 else n, "counts", shape=(None, self.n_clusters))
        validation.nonnegative(n, "counts")
        e = np.asarray(error_sums)
        e = validation.float_array(e[None] if e.ndim == 1 else e, "error_sums", shape=n.shape)
        validation.nonnegative(e, "error_sums")
        if np.any(e > n + 1e-4):
            raise ValueError("error_sums must not exceed counts")
        return n, e

    def estimate_full(self, counts: ArrayLike, error_sums: ArrayLike) -> Estimate:
        """`Estimate(psi, prior, strength)`, each `[n_models, K]` (a 1-D input is one LLM)."""
        n, e = self._check(counts, error_sums)
        return estimate_kernel(self.params, jnp.asarray(n), jnp.asarray(e), method=self.method)

    def estimate(self, counts: ArrayLike, error_sums: ArrayLike) -> np.ndarray:
        """Per-cluster error estimates `psi [n_models, K]` of LLMs with these labels.

        Args:
          counts: [n_models, K] (or [K]) labels per cluster, >= 0; zero clusters are fine.
          error_sums: same shape, errors among those labels (<= counts).
        """
        return np.asarray(self.estimate_full(counts, error_sums).psi)

    def intervals(self, counts: ArrayLike, error_sums: ArrayLike, *, level: float = 0.95):
        """Central Beta intervals `Beta(e + s p + 1/2, n - e + s (1 - p) + 1/2)` of every estimate
        (`onboarding.ErrorIntervals`, each field `[n_models, K]`)."""
        from uniroute_jax._src.onboarding import ErrorIntervals, _beta_quantile

        level = validation.nonnegative_float(level, "level")
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        n, e = self._check(counts, error_sums)
        est = self.estimate_full(n, e)
        a = jnp.asarray(e) + est.strength * est.prior + 0.5
        b = jnp.asarray(n - e) + est.strength * (1 - est.prior) + 0.5
        tail = jnp.asarray((1 - level) / 2, jnp.float32)
        return ErrorIntervals(est.psi, _beta_quantile(a, b, tail), _beta_quantile(a, b, 1 - tail), a, b)


def fit_estimator(method: str, reference_counts: ArrayLike, reference_error_sums: ArrayLike, *,
                  centroids: ArrayLike | None = None, cluster_masses: ArrayLike | None = None,
                  alpha: float = DEFAULT_ALPHA, rank: int = 2, n_groups: int | None = None,
                  seed: int = 0, extra_counts: ArrayLike | None = None,
                  extra_error_sums: ArrayLike | None = None) -> Estimator:
    """Fits an estimator of new LLMs' error vectors from the LLMs already represented.

    Args:
      method: one of `METHODS` ("mean", "shrinkage", "hierarchical", "prior").
      reference_counts: [R, K] validation labels per cluster of the represented LLMs (`Pool.counts`);
        R may be 0 for "mean" and "shrinkage".
      reference_error_sums: [R, K] errors among them (`Pool.error_sums`).
      centroids: [K, dim] cluster centroids; the hierarchy groups them (default: one group per
        cluster-mass rank, i.e. a grouping by mass alone).
      cluster_masses: [K] share of prompts in each cluster, >= 0 (default: the reference labels' shares).
      alpha: pseudo-count of "shrinkage", >= 0.
      rank: free factors of the population prior, >= 1 (capped at R - 1).
      n_groups: coarse groups of the hierarchy (default `default_n_groups(K)`).
      seed: seed of the grouping and factor initialisation.
      extra_counts, extra_error_sums: optional [R, K] further labels of the represented LLMs on
        other prompts than a new LLM's (e.g. their training prompts); both or neither. They enter
        the population prior's factors only; the strengths stay fitted on `reference_counts`, the
        prompts a new LLM is labelled on.

    Returns:
      An `Estimator`.

    Raises:
      ValueError / TypeError naming the argument.
    """
    method = validation.choice(method, "method", METHODS)
    n = validation.nonnegative(validation.float_array(reference_counts, "reference_counts", ndim=2), "reference_counts")
    R, K = n.shape
    if K == 0:
        raise ValueError("reference_counts must have at least one cluster column")
    e = validation.nonnegative(validation.float_array(reference_error_sums, "reference_error_sums", shape=(R, K)),
                               "reference_error_sums")
    if np.any(e > n + 1e-4):
        raise ValueError("reference_error_sums must not exceed reference_counts")
    if (extra_counts is None) != (extra_error_sums is None):
        raise ValueError("extra_counts and extra_error_sums go together: pass both or neither")
    extra = ()
    if extra_counts is not None:
        xn = validation.nonnegative(validation.float_array(extra_counts, "extra_counts", shape=(R, K)), "extra_counts")
        xe = validation.nonnegative(validation.float_array(extra_error_sums, "extra_error_sums", shape=(R, K)),
                                    "extra_error_sums")
        if np.any(xe > xn + 1e-4):
            raise ValueError("extra_error_sums must not exceed extra_counts")
        extra = (jnp.asarray(xn), jnp.asarray(xe))
    if method in ("hierarchical", "prior") and (R == 0 or n.sum() == 0):
        raise ValueError(f"method {method!r} learns from represented LLMs: reference_counts holds no label")
    if cluster_masses is None:
        masses = n.sum(0) + 1e-3
    else:
        masses = validation.nonnegative(validation.float_array(cluster_masses, "cluster_masses", shape=(K,)),
                                        "cluster_masses")
        if masses.sum() <= 0:
            raise ValueError("cluster_masses must have a positive entry")
    if centroids is None:
        cents = np.argsort(np.argsort(-masses)).astype(np.float32)[:, None]
    else:
        cents = validation.float_array(centroids, "centroids", shape=(K, None))
    alpha = validation.nonnegative_float(alpha, "alpha")
    rank = validation.positive_int(rank, "rank")
    rank = max(1, min(rank, R - 1))
    n_groups = default_n_groups(K) if n_groups is None else validation.positive_int(n_groups, "n_groups")
    if n_groups > K:
        raise ValueError(f"n_groups must be <= the {K} clusters, got {n_groups}")
    seed = validation.positive_int(seed, "seed", minimum=0)
    if R == 0:  # mean / shrinkage need nothing from the population; keep the shapes valid
        n, e, R = np.zeros((1, K), np.float32), np.zeros((1, K), np.float32), 1
    params = fit_kernel(jax.random.key(seed), jnp.asarray(n), jnp.asarray(e), jnp.ones(R, bool), jnp.asarray(cents),
                        jnp.asarray(masses), jnp.asarray(alpha, jnp.float32), *extra, n_groups=n_groups, rank=rank)
    return Estimator(method, params)


def labels_to_counts(assignments: ArrayLike, quality: ArrayLike, *, n_clusters: int,
                     label_mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(counts, error_sums)`, each `[n_models, K]`, from hard cluster labels of validation prompts.

    Args:
      assignments: [n_val] cluster of each validation prompt.
      quality: [n_val, n_models] quality in [0, 1]; NaN where not labelled.
      n_clusters: K.
      label_mask: optional [n_val, n_models] bool (default: not NaN).
    """
    n_clusters = validation.positive_int(n_clusters, "n_clusters")
    q = validation.float_array(quality, "quality", ndim=2, allow_nan=True)
    mask = ~np.isnan(q) if label_mask is None else validation.bool_array(label_mask, "label_mask", shape=q.shape)
    validation.unit_interval(q, "quality", where=mask)
    a = validation.int_array(assignments, "assignments", shape=(q.shape[0],), high=n_clusters)
    onehot = np.eye(n_clusters, dtype=np.float64)[a]  # [n_val, K]
    err = np.where(mask, 1.0 - np.where(mask, q, 0.0), 0.0)
    return (onehot.T @ mask).T.astype(np.float32), (onehot.T @ err).T.astype(np.float32)


# ------------------------------------------------------------------- onboarding one LLM


def labels_to_halve(widths: ArrayLike, effective_counts: ArrayLike, masses: ArrayLike) -> int:
    """More labels, spread by cluster mass, that halve the mass-weighted mean interval width.

    A Beta interval's width shrinks like `1 / sqrt(effective labels)`; cluster `k` (effective
    count `c_k = n_k + s_k + 1`) receives `N w_k` of `N` new labels, so its width becomes
    `width_k sqrt(c_k / (c_k + N w_k))`. Returns the smallest such `N` (doubling, then bisection).
    """
    w_ = np.asarray(widths, np.float64).ravel()
    c = np.maximum(np.asarray(effective_counts, np.float64).ravel(), 1e-9)
    m = np.asarray(masses, np.float64).ravel()
    m = m / m.sum()
    target = 0.5 * np.sum(m * w_)
    mean_width = lambda n: np.sum(m * w_ * np.sqrt(c / (c + n * m)))
    hi = 1
    while mean_width(hi) > target and hi < 1 << 40:
        hi *= 2
    lo = hi // 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if mean_width(mid) > target else (lo, mid)
    return int(hi)


def represent_new(pool, new, method: str = DEFAULT_METHOD, *, level: float = 0.95, seed: int = 0):
    """Re-estimates freshly represented LLMs with an estimator fitted on the pool's LLMs.

    Args:
      pool: the `Pool` of LLMs already represented (the estimator's reference; may be empty).
      new: a `Pool` of the new LLMs from `router.represent` (its counts and error sums are used).
      method: one of `METHODS`; "hierarchical" and "prior" fall back to "shrinkage" while the pool
        holds fewer than two LLMs (there is no population to learn from).
      level: probability of the reported intervals.
      seed: seed of the fit.

    Returns:
      `(pool_of_new, lines)`: the new LLMs with the estimator's `psi`, and a human-readable report:
      per-cluster intervals and one line saying how many more labels would tighten them.
    """
    method = validation.choice(method, "method", METHODS)
    used = method
    if method in ("hierarchical", "prior") and (len(pool) < 2 or float(np.sum(pool.counts)) == 0):
        used = "shrinkage"
    if used in ("mean", "shrinkage"):
        ref_n, ref_e = np.zeros((0, new.counts.shape[1])), np.zeros((0, new.counts.shape[1]))
    else:
        ref_n, ref_e = pool.counts, pool.error_sums
    masses = np.asarray(pool.counts).sum(0) + np.asarray(new.counts).sum(0) + 1e-3
    est = fit_estimator(used, ref_n, ref_e, cluster_masses=masses, seed=seed)
    iv = est.intervals(new.counts, new.error_sums, level=level)
    psi = np.asarray(iv.mean, np.float64)
    out = dataclasses.replace(new, psi=psi)  # same counts, names, costs and router fingerprint
    note = "" if used == method else f" ('{method}' needs at least two LLMs in the pool)"
    lines = []
    for i, name in enumerate(new.names):
        n_i = np.asarray(new.counts[i])
        lines.append(f"{name}: estimator '{used}'{note}, {int(n_i.sum())} labels; per-cluster error "
                     f"[{level:.0%} interval]:")
        lo, hi = np.asarray(iv.lower[i]), np.asarray(iv.upper[i])
        lines += [f"  cluster {k}: {psi[i, k]:.3f} [{lo[k]:.3f}, {hi[k]:.3f}] from {int(n_i[k])} labels"
                  for k in range(psi.shape[1])]
        eff = np.asarray(iv.a[i] + iv.b[i])
        more = labels_to_halve(hi - lo, eff, masses)
        lines.append(f"  labelling about {more} more prompts (spread by cluster mass; `uniroute select-prompts`) "
                     f"would halve the mean interval width ({np.sum(masses * (hi - lo)) / masses.sum():.3f} now)")
    return out, lines
